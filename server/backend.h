// Backend: the narrow interface under the gRPC front end (and, later, the batcher). A backend
// computes attention on host buffers that the caller has already validated; it knows nothing of
// gRPC or protobuf. Implementations are thread-safe: the daemon calls them from many threads.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/attention_problem.h"

namespace attnd {

struct BackendStats;  // server/backend_stats.h

// Host memory a backend lends for a call's tensors (Backend::AllocateHostBuffer). A front end or
// the batcher that decodes/gathers a request's tensors straight into it, and points the call's
// args at it, saves the backend a staging copy: for CUDA it is page-locked memory, so H2D and D2H
// run by DMA, asynchronously, at PCIe speed. The memory goes back to the backend's pool when the
// last copy of `keep` is gone; it must outlive every call that reads or writes it.
struct HostBuffer {
  void* data = nullptr;
  size_t size = 0;
  std::shared_ptr<void> keep;
};

// Plain heap memory, 64-byte aligned: what a backend without a faster kind lends.
inline absl::StatusOr<HostBuffer> AllocatePlainHostBuffer(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) return absl::ResourceExhaustedError("out of host memory for a host buffer");
  return HostBuffer{p, bytes, std::shared_ptr<void>(p, [](void* q) { std::free(q); })};
}

struct DeviceDescription {
  int index = 0;
  std::string name;
  int64_t total_memory_bytes = 0;
  int multiprocessors = 0;
  std::string compute_capability;  // e.g. "9.0"
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;  // "cpu", "cuda"
  virtual std::vector<DeviceDescription> Devices() const { return {}; }
  // Head dims this backend runs; empty means every head_dim from 1 to kMaxHeadDim.
  virtual std::vector<int> SupportedHeadDims() const { return {}; }

  // INVALID_ARGUMENT naming the field when this backend cannot run a shape the protocol allows
  // (e.g. a head_dim it has no kernel for). Called by the front end before any work.
  virtual absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const = 0;

  virtual absl::Status Forward(const ForwardArgs& args) = 0;
  virtual absl::Status Backward(const BackwardArgs& args) = 0;

  // Host memory this backend moves to and from its device fastest (see HostBuffer); plain heap
  // memory by default. Thread-safe; RESOURCE_EXHAUSTED when none can be had.
  virtual absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) { return AllocatePlainHostBuffer(bytes); }

  // Adds what this backend (and whatever it wraps) measured to `stats`: engine stages, batcher
  // counters, per-device memory pools. Cumulative since start; cheap enough for every scrape.
  virtual void CollectStats(BackendStats& stats) const { (void)stats; }
};

inline constexpr int kMaxHeadDim = 256;

}  // namespace attnd
