// FlashAttention forward on NVIDIA GPUs: a FlashAttention-2 kernel with mma.sync (sm_80+), and on
// sm_90 a Hopper kernel with wgmma, TMA and warp specialisation (see FwdKernel below).
//
// Layout (the packed layout of server/core/attention_problem.h): q [total_q, heads_q, head_dim],
// k/v [total_k, heads_kv, head_dim], out like q; sequence b spans rows cu_seqlens_q[b] ..
// cu_seqlens_q[b+1] (resp. _k). A dense batch is cu_seqlens = {0, S, 2S, ...}. Strides are in
// elements, so heads or rows may be padded. GQA/MQA: query head h reads KV head
// h / (heads_q / heads_kv).
//
// out = softmax(scale * q k^T [+ causal mask]) v, and lse = logsumexp (natural log) of each query
// row's scaled scores, always FP32. Causal masking is aligned bottom-right: query i of a sequence
// sees key j iff j <= i + seqlen_k - seqlen_q. A query row that sees no key (causal with
// seqlen_q > seqlen_k, or an empty key sequence) gets out = 0 and lse = +inf.
//
// Element types: BF16 and FP16 run directly (FP32 accumulation and softmax; P is rounded to the
// input type before the P*V product). FP32 inputs take a conversion path inside FlashFwd: q, k and
// v are copied to FP16 in the workspace, each multiplied by the power of two that brings its
// max|x| into [2^14, 2^15) (chosen on the device: no overflow, no host synchronisation), the FP16
// kernel runs with those exact scales folded into the softmax scale and the epilogue, and out is
// written in FP32 straight from the FP32 accumulators. Precision is therefore FP16's (inputs and P
// rounded to 11 significant bits): relative L2 error of out around 5e-4 (tested within 2e-3);
// each score moves by about 4e-4 of the scores' spread, so lse is within 1e-3 absolute while the
// scaled scores have a standard deviation up to ~1 (the usual 1/sqrt(d) scaling of unit-variance
// inputs) and within 2e-3 * that deviation beyond (tested so). Not FP32 attention, not TF32.
//
// Head dims 32, 64, 96, 128 and 256 (64 and 128 tuned). Any sequence lengths; the batch may mix
// lengths, including empty sequences. No CUDA type other than cudaStream_t/cudaError_t is needed.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace attnd::kernels {

enum class ElementType { kBF16, kFP16, kFP32 };

// Which forward kernel runs. kAuto: the Hopper kernel (wgmma, TMA, warp specialisation; sm_90
// devices, BF16/FP16, head dim 64 or 128, positive softmax scale) where it applies, the mma.sync
// kernel otherwise; the environment variable ATTND_FWD_KERNEL=mma_sync makes kAuto always pick
// the mma.sync kernel. kMmaSync / kHopper force one (FlashFwd returns cudaErrorNotSupported when
// the Hopper kernel cannot run this problem on this device); the tests use them to cover both.
enum class FwdKernel { kAuto, kMmaSync, kHopper };

struct FlashFwdParams {
  ElementType dtype = ElementType::kBF16;  // of q, k, v and out

  // Device pointers.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;                 // see lse_packed
  const int32_t* cu_seqlens_q = nullptr;  // device, batch + 1 entries
  const int32_t* cu_seqlens_k = nullptr;

  // Strides in elements: a row is one token, a head is one head_dim vector inside a row.
  int64_t q_row_stride = 0, q_head_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0;
  int64_t out_row_stride = 0, out_head_stride = 0;

  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;      // divides heads_q
  int head_dim = 0;      // 32, 64, 96, 128 or 256
  int max_seqlen_q = 0;  // longest query sequence (sizes the grid; also the dense lse row length)
  int max_seqlen_k = 0;
  int64_t total_q = 0;   // rows of q (= cu_seqlens_q[batch])
  int64_t total_k = 0;   // rows of k and v (= cu_seqlens_k[batch])

  // false: lse is dense [batch, heads_q, max_seqlen_q]; true: packed [heads_q, total_q]
  // (element h * total_q + cu_seqlens_q[b] + i). Matches AttentionShape::LseIndex.
  bool lse_packed = false;

  bool causal = false;
  float softmax_scale = 0.f;  // any finite non-zero value (negative works too)

  FwdKernel kernel = FwdKernel::kAuto;
};

// Fills the strides of contiguous packed tensors: q/out [*, heads_q, head_dim], k/v [*, heads_kv,
// head_dim].
void SetContiguousStrides(FlashFwdParams& p);

// Checks sizes/pointers the kernels rely on (head_dim supported, heads_kv divides heads_q, strides
// multiples of 8 elements, 16-byte aligned pointers). cudaErrorInvalidValue when one is off.
cudaError_t FlashFwdCheck(const FlashFwdParams& p);

// Bytes of device workspace FlashFwd uses for p on the current device: the FP16 copies of q/k/v
// plus a few scale words for FP32; 256 (a tile counter) when the Hopper kernel runs; else 0.
size_t FlashFwdWorkspaceBytes(const FlashFwdParams& p);

// The kernel FlashFwd would run for p on the current device: kMmaSync or kHopper (kAuto resolved),
// or kAuto when p forces kHopper and the Hopper kernel cannot run it.
FwdKernel FlashFwdSelectKernel(const FlashFwdParams& p);

// Launches the forward pass on `stream` (asynchronous). `workspace` must hold
// FlashFwdWorkspaceBytes(p) bytes (256-byte aligned; cudaMalloc memory is) for FP32; for BF16/FP16
// it may be nullptr (the Hopper kernel then hands out its tiles statically, a little less evenly
// on causal problems). Returns the first CUDA error of the check or the launches.
cudaError_t FlashFwd(const FlashFwdParams& p, void* workspace, cudaStream_t stream);

}  // namespace attnd::kernels
