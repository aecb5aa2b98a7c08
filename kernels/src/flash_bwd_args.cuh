// What the backward kernels read at launch: FlashBwdParams resolved by the plan (flash_bwd.cu) into
// typed-agnostic pointers, workspace slices and scale factors.
#pragma once

#include <cstdint>

namespace attnd::kernels::bwd {

// Rows of padding after every sequence in the pre-pass's lse/D arrays: sequence b starts at row
// cu_seqlens_q[b] + kLsePad * b and rows seqlen_q .. roundup(seqlen_q, kLsePad) hold lse = +inf,
// D = 0. The main kernel then loads whole tiles of them with no bounds checks, and a query row
// past the sequence end gets P = 0 (no contribution to dK, dV).
inline constexpr int kLsePad = 128;

// The FP32 path's scale factors, computed on the device (flash_bwd_fp32.cu) and read by the
// kernels; each multiplies the corresponding 16-bit-path constant. Absent (nullptr) otherwise.
enum Fp32Factor {
  kFactorScaleLog2 = 0,  // 1 / (c_q c_k): q and k were multiplied by c_q, c_k
  kFactorDsAlpha,        // s_ds / (c_do c_v): turns dP of the scaled copies into s_ds * dP
  kFactorDk,             // 1 / (s_ds c_q)
  kFactorDv,             // 1 / c_do
  kFactorDq,             // 1 / (s_ds c_k)
  kFactorDsum,           // s_ds (D is computed from the FP32 out and grad_out)
  kFactorConvQ,          // c_q, c_k, c_v, c_do: the conversion multipliers
  kFactorConvK,
  kFactorConvV,
  kFactorConvDo,
  kFactorCount
};

struct BwdKernelArgs {
  // 16-bit inputs of the main kernel (the FP32 path's FP16 copies there).
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  int64_t q_row_stride, q_head_stride;
  int64_t k_row_stride, k_head_stride;
  int64_t v_row_stride, v_head_stride;
  int64_t do_row_stride, do_head_stride;
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;

  // Pre-pass outputs, [heads_q][lse_head_stride] with the kLsePad layout above.
  const float* lse_log2;  // lse * log2(e)
  const float* dsum;      // D = rowsum(dO o O) (times s_ds on the FP32 path)
  int64_t lse_head_stride;

  // dQ accumulators: FP32 [dq_splits][total_q][heads_q][head_dim], contiguous. dq_splits == 1
  // (atomics) unless deterministic, where CTA x owns slice x.
  float* dq_accum;
  int64_t dq_split_stride;

  // dK, dV: written in the element type straight from the kernel when !kv_partial; otherwise FP32
  // partial sums [head_splits][total_k][heads_kv][head_dim] that a reduction pass adds up.
  void* dk;
  void* dv;
  int64_t dk_row_stride, dk_head_stride;
  int64_t dv_row_stride, dv_head_stride;
  float* dk_partial;
  float* dv_partial;
  int64_t kv_split_stride;
  bool kv_partial;

  int heads_q;
  int heads_kv;
  int heads_per_kv;     // heads_q / heads_kv
  int head_splits;      // CTAs sharing one KV head's query heads
  int heads_per_split;  // query heads per such CTA (the last may have fewer)

  // Work of the default (atomic) mode, a 1-D grid over units: a unit is one key block of one KV
  // head [group slice] of one sequence, numbered n_block + unit_blocks * (y + unit_ys * b) with
  // y = kv_head * head_splits + head_split. CTAs 0 .. full_ctas - 1 own unit blockIdx.x with all
  // its query tiles. The units after those (the last partial wave) are each split over
  // tail_pieces CTAs, one contiguous slice of its query tiles each (flash_bwd_tail.cuh):
  // CTA full_ctas + t * tail_pieces + p does slice p of unit full_ctas + t. The deterministic mode
  // ignores these (its grid is (dq_splits, heads_kv * head_splits, batch)).
  int unit_blocks;
  int unit_ys;
  int full_ctas;
  int tail_pieces;      // 1: no unit is split
  float* tail_partial;  // [tail units][tail_pieces][2][kBlockN * head_dim] FP32 partial dK, dV
  int* tail_arrivals;   // [tail units], zero on entry: pieces of the unit done so far

  bool causal;
  bool deterministic;

  float scale_log2;  // softmax_scale * log2(e)
  float dk_scale;    // softmax_scale
  float dv_scale;    // 1
  const float* fp32_factors;  // Fp32Factor array, or nullptr
};

}  // namespace attnd::kernels::bwd
