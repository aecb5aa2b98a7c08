// The backward's FP32 path (flash_bwd.h): FP16 copies of q, k, v and grad_out with power-of-two
// scales, and the factors (flash_bwd_args.cuh, Fp32Factor) that undo them, all computed on the
// device from one statistics pass, so that nothing waits on the host.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace attnd::kernels::bwd {

struct Fp32Source {
  const float* src;   // [rows, heads, head_dim] with the strides below (elements)
  __half* dst;        // contiguous [rows, heads, head_dim]
  int64_t rows;
  int heads;
  int64_t row_stride, head_stride;
};

enum Fp32Stat { kStatAmaxQ = 0, kStatAmaxK, kStatAmaxV, kStatAmaxDo, kStatNormV, kStatNormDo, kStatCount };

struct BwdFp32Job {
  Fp32Source tensor[4];  // q, k, v, grad_out (the order of kStatAmax*)
  int head_dim;
  float* stats;          // kStatCount floats of device memory
  float* factors;        // kFactorCount floats of device memory (output)
};

// Zeroes job.stats, computes max|x| of the four tensors and the largest head-vector norms of v and
// grad_out, derives the factors, writes the four scaled FP16 copies.
cudaError_t PrepareBwdFp32(const BwdFp32Job& job, cudaStream_t stream);

}  // namespace attnd::kernels::bwd
