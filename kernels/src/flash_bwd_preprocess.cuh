// The backward pre-pass: D = rowsum(dO o O) per (query row, head), and the forward's lse moved
// into log2 units, both into the padded [heads_q][rows] layout the main kernel loads tile by tile
// (flash_bwd_args.cuh, kLsePad).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace attnd::kernels::bwd {

struct BwdPreprocessArgs {
  const void* out;   // element type TIn (16-bit, or FP32 on the FP32 path)
  const void* dout;
  int64_t out_row_stride, out_head_stride;
  int64_t do_row_stride, do_head_stride;
  const float* lse;  // the forward's, natural log
  bool lse_packed;
  int max_seqlen_q;
  int64_t total_q;
  const int32_t* cu_seqlens_q;
  int batch;
  int heads_q;
  int head_dim;
  float* lse_log2;   // outputs, [heads_q][lse_head_stride]
  float* dsum;
  int64_t lse_head_stride;
  const float* fp32_factors;  // D is multiplied by fp32_factors[kFactorDsum] when not null
};

// TIn: __nv_bfloat16, __half or float.
template <typename TIn>
cudaError_t RunBwdPreprocess(const BwdPreprocessArgs& args, cudaStream_t stream);

}  // namespace attnd::kernels::bwd
