// CUDA runtime errors as absl::Status, naming what failed. Out of memory is RESOURCE_EXHAUSTED
// (the caller may retry later), an invalid value INVALID_ARGUMENT, anything else INTERNAL.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnd {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat("cuda backend: ", what, ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // out of memory is not sticky: clear it for the next call
    return absl::ResourceExhaustedError(msg);
  }
  if (err == cudaErrorInvalidValue) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

#define ATTND_RETURN_IF_CUDA(expr, what)                                      \
  do {                                                                        \
    if (absl::Status st_ = ::attnd::CudaStatus((expr), (what)); !st_.ok()) return st_; \
  } while (0)

}  // namespace attnd
