// DeviceCall: one call's trip through a GPU, the same for forward and backward:
//   1. a lane (stream + events) of the GPU; waiting for one counts as queue time, and a call
//      whose deadline passed (or that was cancelled) meanwhile stops here, uncomputed;
//   2. one device allocation from the DeviceMemoryPool for every tensor that is not already on
//      the device, plus the kernels' workspace (RESOURCE_EXHAUSTED naming the call if it does
//      not fit under the cap); a full batch's worth for the batcher's calls (Reserve), so they
//      all reuse one block per lane (engine/device_call_layout.h);
//   3. H2D copies (StagedTransfers: page-locked memory by DMA directly, cu_seqlens through the
//      lane's pinned room, pageable memory staged), the kernels, D2H copies, all queued on the
//      lane's stream, with timed events between the stages; the memory goes back to the pool,
//      stream-ordered, as soon as the last copy is queued;
//   4. the host drains the outputs chunk by chunk, then fills CallTimings.
// A call whose tensors are device-resident (TensorPlacement::kDevice) copies only cu_seqlens.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "server/backends/cuda/device_memory_pool.h"
#include "server/backends/cuda/pinned_host_pool.h"
#include "server/backends/cuda/stream_lanes.h"
#include "server/core/attention_problem.h"

namespace attnd {

// Bytes one GPU's calls moved between host and device, by route (engine::TransferPlan): what
// CollectStats reports, so a test or an operator sees whether page-locked memory was staged.
struct TransferCounters {
  std::atomic<int64_t> direct_bytes{0};    // DMA straight from/to page-locked host memory
  std::atomic<int64_t> staged_bytes{0};    // through a staging block (a host copy each way)
  std::atomic<int64_t> pageable_bytes{0};  // the driver's pageable path (no staging to be had)
};

// What one GPU's calls share.
struct DeviceContext {
  int device = 0;
  DeviceMemoryPool* memory = nullptr;
  PinnedHostPool* pinned = nullptr;
  StreamLanes* lanes = nullptr;
  TransferCounters* transfers = nullptr;  // optional
};

class DeviceCall {
 public:
  DeviceCall(const DeviceContext& context, const TensorPlacement& placement)
      : context_(context),
        resident_(placement.space == MemorySpace::kDevice),
        host_page_locked_(placement.space == MemorySpace::kHost && placement.host_page_locked) {}

  // Tensors, in the order the kernels want them; each returns its index for device(). Inputs are
  // read by the kernels, outputs written. `host_only`: a small host array copied for every call,
  // resident or not (cu_seqlens).
  int Input(const void* data, size_t bytes, bool host_only = false);
  int Output(void* data, size_t bytes);
  void Workspace(size_t bytes) { workspace_bytes_ = bytes; }
  // The bytes this call's allocation would take with the caller's reserve_rows (see
  // engine/device_call_layout.h): asked for instead of its own when larger and within bounds.
  void Reserve(size_t bytes) { reserved_bytes_ = bytes; }

  // Runs the call; `launch` queues the kernels on the stream, reading device(i) and workspace().
  // `purpose` names the call in a RESOURCE_EXHAUSTED message.
  absl::Status Run(const CallControl& control, const std::string& purpose, CallTimings* timings,
                   absl::FunctionRef<cudaError_t(cudaStream_t)> launch);

  void* device(int tensor) const { return tensors_[tensor].device; }
  void* workspace() const { return workspace_; }

 private:
  struct Tensor {
    const void* host_in = nullptr;  // input: where it comes from (host) ...
    void* host_out = nullptr;       // output: where it goes (host)
    size_t bytes = 0;
    bool copied = false;            // lives on the host: gets device memory and a copy
    bool host_only = false;         // a small host array (cu_seqlens): through the lane's metadata
    size_t offset = 0;              // in the call's allocation, when copied
    void* device = nullptr;
  };
  absl::Status Execute(StreamLane& lane, const std::string& purpose, CallTimings* timings,
                       absl::FunctionRef<cudaError_t(cudaStream_t)> launch);

  const DeviceContext context_;
  const bool resident_;
  const bool host_page_locked_;
  std::vector<Tensor> tensors_;
  size_t workspace_bytes_ = 0;
  size_t reserved_bytes_ = 0;
  void* workspace_ = nullptr;
};

}  // namespace attnd
