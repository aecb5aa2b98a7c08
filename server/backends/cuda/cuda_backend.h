// The CUDA backend: runs the hand-written FlashAttention kernels of kernels/ on one GPU.
// Only this header is visible to the rest of the daemon; no CUDA type crosses it.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "server/backend.h"

namespace attnd {

struct CudaBackendOptions {
  int device = 0;
  bool deterministic = false;  // force deterministic backward for every request
};

// Number of CUDA devices this process can use (0 when there is no driver or no GPU).
int VisibleCudaDevices();

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace attnd
