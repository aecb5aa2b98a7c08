// FlashAttention-2 backward on NVIDIA GPUs (sm_80+, tuned for sm_90), hand-written with mma.sync.
//
// Given the forward's q, k, v, out and logsumexp (flash_fwd.h, same packed layout and lse layout)
// and grad_out = dL/d(out), computes grad_q, grad_k, grad_v without ever storing an N x N matrix:
//
//   S  = scale * Q K^T          P  = exp(S - lse)          (recomputed tile by tile)
//   dV = P^T dO                 dP = dO V^T
//   D  = rowsum(dO o O)         dS = P o (dP - D)          (D = rowsum(P o dP), cheaper from O)
//   dQ = scale * dS K           dK = scale * dS^T Q
//
// Layout: q/out/grad_out/grad_q [total_q, heads_q, head_dim], k/v/grad_k/grad_v [total_k, heads_kv,
// head_dim], sequence b spanning rows cu_seqlens_q[b]..cu_seqlens_q[b+1] (resp. _k); strides in
// elements. Causal masking is aligned bottom-right (query i sees key j iff j <= i + seqlen_k -
// seqlen_q). A query row that saw no key has lse = +inf in the forward's output, so P = 0 for it
// and its gradients are zero. GQA/MQA: grad_k/grad_v of KV head g are summed over the query heads
// h with h / (heads_q / heads_kv) == g.
//
// Determinism: dK and dV are always deterministic (each is accumulated in one CTA's registers,
// and when the query heads of a group are split over several CTAs the partial sums are added in a
// fixed order). dQ needs a sum over KV tiles computed by different CTAs: by default with FP32
// atomics into a workspace (fast, but the summation order varies, so the last bits may differ run
// to run); with `deterministic`, each CTA owns one slice of the workspace (it walks a fixed set of
// KV tiles in order and updates its slice with plain loads and stores), and a final pass adds the
// slices in a fixed order: identical bits run to run, at the cost of more workspace (at most as
// many FP32 copies of dQ as fit one wave of CTAs, <= 16) and some speed (measured on an H100:
// 0.67-0.85x of the default mode, bench/NOTES_BWD.md).
//
// Element types: BF16 and FP16 run directly (FP32 accumulation; P and dS rounded to the input type
// before their products). FP32 inputs take a conversion path: q, k, v and grad_out are converted
// to FP16 with per-tensor power-of-two scales chosen on the device (max |x| <= 2^14), D is computed
// from the FP32 out and grad_out, dS is scaled by a power of two derived from max ||dO_i|| *
// max ||V_j|| (which bounds |dS|) so that it cannot overflow FP16, and all scales are undone in FP32
// before the gradients are written as FP32. Precision is therefore FP16's (11 significant bits):
// relative L2 error of the gradients measured at 4-6e-4 on unit-variance inputs and 2.6e-3 with
// logits of magnitude ~7 (|q|, |k| ~ 300), tested within 5e-3 (bf16: ~3e-3; fp16: ~4e-4).
//
// Work split: one CTA per (key block, KV head, sequence) unit; the units of the last partial wave
// of CTAs (or all of them when there are fewer than SMs; causal problems with full waves excepted)
// are split over several CTAs by query tiles, whose FP32 partial dK, dV the last one to finish
// adds in a fixed order (so dK, dV stay deterministic).
//
// Head dims 32, 64, 96, 128 and 256 (64 and 128 tuned). Any sequence lengths, including empty
// sequences inside a packed batch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "attnd/kernels/flash_fwd.h"  // ElementType

namespace attnd::kernels {

struct FlashBwdParams {
  ElementType dtype = ElementType::kBF16;  // of q, k, v, out, grad_out and the gradients

  // Device pointers. Inputs:
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const void* grad_out = nullptr;
  const float* lse = nullptr;  // the forward's logsumexp (natural log), layout per lse_packed
  const int32_t* cu_seqlens_q = nullptr;  // device, batch + 1 entries
  const int32_t* cu_seqlens_k = nullptr;
  // Outputs (every element is written):
  void* grad_q = nullptr;
  void* grad_k = nullptr;
  void* grad_v = nullptr;

  // Strides in elements: a row is one token, a head is one head_dim vector inside a row.
  int64_t q_row_stride = 0, q_head_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0;
  int64_t out_row_stride = 0, out_head_stride = 0;
  int64_t grad_out_row_stride = 0, grad_out_head_stride = 0;
  int64_t grad_q_row_stride = 0, grad_q_head_stride = 0;
  int64_t grad_k_row_stride = 0, grad_k_head_stride = 0;
  int64_t grad_v_row_stride = 0, grad_v_head_stride = 0;

  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;      // divides heads_q
  int head_dim = 0;      // 32, 64, 96, 128 or 256
  int max_seqlen_q = 0;  // longest query sequence (also the dense lse row length)
  int max_seqlen_k = 0;
  int64_t total_q = 0;   // rows of q (= cu_seqlens_q[batch])
  int64_t total_k = 0;   // rows of k (= cu_seqlens_k[batch])

  // false: lse is dense [batch, heads_q, max_seqlen_q]; true: packed [heads_q, total_q].
  // Matches AttentionShape::LseIndex and FlashFwdParams::lse_packed.
  bool lse_packed = false;

  bool causal = false;
  float softmax_scale = 0.f;  // the forward's scale (any finite non-zero value)
  bool deterministic = false; // no floating-point atomics: identical bits run to run
};

// Fills the strides of contiguous packed tensors: q/out/grad_out/grad_q [*, heads_q, head_dim],
// k/v/grad_k/grad_v [*, heads_kv, head_dim].
void SetContiguousStrides(FlashBwdParams& p);

// Checks sizes/pointers the kernels rely on. cudaErrorInvalidValue when one is off.
cudaError_t FlashBwdCheck(const FlashBwdParams& p);

// Bytes of device workspace the backward needs for `p` on the current device (FP32 dQ
// accumulators, the pre-pass's D and scaled lse, split partial sums, FP32-path copies). Depends
// only on the sizes (pointers may be unset) and on the device's multiprocessor count: query it on
// the device that will run FlashBwd. 0 when the sizes are invalid.
size_t FlashBwdWorkspaceBytes(const FlashBwdParams& p);

// Launches the backward pass on `stream` (asynchronous). `workspace` must hold
// FlashBwdWorkspaceBytes(p) bytes, 256-byte aligned (cudaMalloc memory is); its contents on entry
// do not matter. Returns the first CUDA error of the check or the launches.
cudaError_t FlashBwd(const FlashBwdParams& p, void* workspace, cudaStream_t stream);

}  // namespace attnd::kernels
