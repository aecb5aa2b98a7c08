// The FP32 path's preparation (see flash_fwd.h): max|x| of q, k and v, then FP16 copies scaled by
// the power of two of fp32_scale.cuh. Both steps take the three tensors in one launch
// (blockIdx.y = tensor) and run on the caller's stream; nothing waits on the host.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace attnd::kernels::detail {

struct Fp32Tensor {
  const float* src;    // [rows, heads, head_dim] with the strides below (elements)
  __half* dst;         // contiguous [rows, heads, head_dim]
  int64_t rows;
  int heads;
  int64_t row_stride, head_stride;
};

struct Fp32ToFp16Job {
  Fp32Tensor tensor[3];  // q, k, v
  int head_dim;
  float* amax;           // 3 floats of device memory; receives max|q|, max|k|, max|v|
};

// Zeroes job.amax, computes the three maxima, writes the three scaled FP16 copies.
cudaError_t ConvertFp32ToFp16(const Fp32ToFp16Job& job, cudaStream_t stream);

}  // namespace attnd::kernels::detail
