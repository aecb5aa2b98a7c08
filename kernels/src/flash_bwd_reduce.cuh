// The backward's final pass: adds FP32 partial sums in a fixed order, scales them and writes the
// gradient in its element type. Used for dQ (the FP32 accumulators, one slice per deterministic
// split) and for dK, dV when the query heads of a GQA group were split over several CTAs (or on
// the FP32 path, which always goes through FP32 partials).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace attnd::kernels::bwd {

struct SplitSumArgs {
  const float* src;     // [splits][rows][heads][head_dim], contiguous
  int splits;
  int64_t split_stride;  // elements between slices
  int64_t rows;
  int heads;
  int head_dim;
  void* dst;            // OutT [rows][heads][head_dim] with the strides below (elements)
  int64_t dst_row_stride, dst_head_stride;
  float scale;
  const float* factor;  // multiplies scale when not null (a device scalar)
};

// OutT: __nv_bfloat16, __half or float.
template <typename OutT>
cudaError_t RunSplitSum(const SplitSumArgs& args, cudaStream_t stream);

}  // namespace attnd::kernels::bwd
