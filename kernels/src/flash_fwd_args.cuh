// What the forward kernel reads at launch: FlashFwdParams resolved for the device (typed
// pointers aside), with the softmax scale already in log2 units and its sign moved into q.
#pragma once

#include <cstdint>

namespace attnd::kernels::detail {

struct FwdKernelArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  // FP32 path only (else nullptr): max|q|, max|k|, max|v| of the FP32 inputs, from which the
  // kernel recomputes the power-of-two scales the FP16 copies were made with (fp32_scale.cuh).
  const float* fp32_amax;

  int64_t q_row_stride, q_head_stride;
  int64_t k_row_stride, k_head_stride;
  int64_t v_row_stride, v_head_stride;
  int64_t out_row_stride, out_head_stride;

  int heads_q;
  int heads_per_kv;  // heads_q / heads_kv
  int max_seqlen_q;
  int64_t total_q;
  bool lse_packed;

  float scale_log2;  // |softmax_scale| * log2(e)
  bool negate_q;     // softmax_scale < 0: q is negated in shared memory, the scale made positive
};

}  // namespace attnd::kernels::detail
