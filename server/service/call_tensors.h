// CallTensors: where the tensors of one Forward/Backward call come from and go to, whatever the
// transport: bytes that travelled in the message (gathered from the received slices into a buffer
// of the TensorAllocator: the one copy they cost), regions of registered shared memory (read and
// written in place, under a lease), or a resident handle's buffers.
//
// It also checks what only a whole call can: an output span may not overlap any other span of the
// call (the backend would overwrite inputs it still reads), and a host-only backend cannot take a
// device region.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/v1/attention.pb.h"
#include "server/service/inline_tensors.h"
#include "server/service/request_validation.h"
#include "server/transport/range_copier.h"
#include "server/transport/region_registry.h"
#include "server/transport/resident_store.h"
#include "server/transport/tensor_buffer.h"

namespace attnd {

// The transport machinery a call may use. `regions` and `resident` are null when off.
struct TransportContext {
  TensorAllocator* allocator = nullptr;
  RegionRegistry* regions = nullptr;
  ResidentStore* resident = nullptr;
  bool backend_takes_device_memory = false;
  // How bytes are gathered out of received slices and copied between host buffers (range_copier.h):
  // the server hands in the engine's ParallelCopy.
  RangeCopier copier = CopyRangesSerially;
};

// One output tensor: a buffer that is sent back, or a span of a region written in place.
struct OutputTarget {
  void* data = nullptr;
  TensorBufferPtr buffer;  // null when the output goes to a region
  bool in_region() const { return buffer == nullptr; }
};

class CallTensors {
 public:
  explicit CallTensors(const TransportContext& context) : context_(context) {}

  // The input tensor in outer field `field`. Inline bytes end in a buffer of their own (*buffer);
  // a region span is resolved and leased, and copied into a buffer only when `keep` (the
  // resident store keeps its own copy: the client may reuse its region once the call returns).
  absl::StatusOr<TensorBytes> Input(const v1::Tensor& tensor, InlineTensors& inline_tensors, int field,
                                    absl::string_view name, bool keep, TensorBufferPtr* buffer);
  // An output of `bytes` bytes: `region` when set (named `name` in errors), else a new buffer.
  absl::StatusOr<OutputTarget> Output(const v1::RegionSpan* region, absl::string_view name, int64_t bytes);
  // Tensors that reach the call in host memory by another way (a resident handle's buffers);
  // `page_locked` when that memory is (see HostPageLocked).
  void AddHostTensors(absl::string_view name, bool page_locked = false) { AddHost(name, page_locked); }
  // INVALID_ARGUMENT when an output span overlaps another span of the call. Call once all are known.
  absl::Status CheckOverlaps() const;
  // Where the call's tensors are: -1 when all in host memory, else the CUDA device holding every
  // one of them (CUDA IPC regions). A call that mixes host and device memory, or two devices, is
  // INVALID_ARGUMENT: a backend runs a call in one memory space. Call once all are known.
  absl::StatusOr<int> Device() const;
  // Whether every host tensor of the call is page-locked (regions registered with the GPU driver,
  // buffers lent by the backend's pinned pool): TensorPlacement::host_page_locked, so a GPU backend
  // copies them by DMA without staging and without asking the driver about each pointer.
  bool HostPageLocked() const { return !placements_.empty() && all_page_locked_; }

 private:
  struct Span {
    std::string name, region_id;
    uint64_t begin, end;
    bool output;
  };
  absl::StatusOr<ResolvedSpan> Resolve(const v1::RegionSpan& span, absl::string_view name, bool output);
  void AddHost(absl::string_view name, bool page_locked) {
    placements_.emplace_back(std::string(name), -1);
    all_page_locked_ = all_page_locked_ && page_locked;
  }

  const TransportContext& context_;
  std::vector<Span> spans_;
  std::vector<std::pair<std::string, int>> placements_;  // tensor -> device (-1: host)
  bool all_page_locked_ = true;                           // of the host tensors so far
  std::vector<std::shared_ptr<const void>> leases_;  // held until the call's tensors are dropped
};

}  // namespace attnd
