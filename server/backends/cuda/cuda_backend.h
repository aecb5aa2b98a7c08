// The CUDA backend: runs the hand-written FlashAttention kernels of kernels/ on one GPU, through
// the engine's pieces for that GPU: a DeviceMemoryPool (capped, stream-ordered reuse), --streams
// lanes (StreamLanes) so copies of one call overlap the kernels of another, and page-locked
// staging from a PinnedHostPool shared by every GPU of the process.
// Only this header is visible to the rest of the daemon; no CUDA type crosses it.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend.h"

namespace attnd {

class PinnedHostPool;

struct CudaBackendOptions {
  int device = 0;
  bool deterministic = false;   // force deterministic backward for every request
  int streams = 2;              // calls computed on the GPU at once, each on its own stream
  // Cap of the device memory pool; <= 0: memory_fraction of the GPU's total memory.
  int64_t memory_cap_bytes = 0;
  double memory_fraction = 0.9;
  // Page-locked staging shared by the backends of one process; null: this backend makes its own
  // with pinned_cap_bytes.
  std::shared_ptr<PinnedHostPool> pinned;
  int64_t pinned_cap_bytes = int64_t{8} << 30;
};

// Number of CUDA devices this process can use (0 when there is no driver or no GPU).
int VisibleCudaDevices();

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

// One backend per device in `devices`, sharing one pinned pool (options.device is ignored).
absl::StatusOr<std::vector<std::unique_ptr<Backend>>> CreateCudaBackends(const std::vector<int>& devices,
                                                                         const CudaBackendOptions& options);

}  // namespace attnd
