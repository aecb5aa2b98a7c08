// The public backward entry: checks, the plan (grid, splits, workspace slices), the one place that
// maps (element type, head dim) to a kernel instantiation, and the launch sequence:
//   [FP32 path: statistics, scale factors, FP16 copies]
//   zero the dQ accumulators -> pre-pass (D, lse) -> main kernel -> dQ split sum
//   [dK, dV split sums when the GQA group was split or on the FP32 path]
#include "attnd/kernels/flash_bwd.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstdint>

#include "common/fast_math.cuh"
#include "flash_bwd_args.cuh"
#include "flash_bwd_fp32.cuh"
#include "flash_bwd_preprocess.cuh"
#include "flash_bwd_reduce.cuh"
#include "flash_bwd_tail.cuh"
#include "flash_bwd_tile.cuh"

namespace attnd::kernels {
namespace bwd {

// Defined in flash_bwd_hdim*.cu.
template <typename T, int kHeadDim>
cudaError_t run_flash_bwd(const BwdKernelArgs& args, dim3 grid, cudaStream_t stream);

namespace {

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }
bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Keys per CTA (the grid's key blocks; causal and non-causal tiles share it) and query rows per
// tile of the non-causal tile (the plan's measure of a unit's length).
struct TileRows {
  int block_n;
  int block_m;
};

template <int kHeadDim>
constexpr TileRows RowsOf() {
  return {DefaultBwdTile<kHeadDim, true>::type::kBlockN, DefaultBwdTile<kHeadDim, false>::type::kBlockM};
}

TileRows TileRowsOf(int head_dim) {
  switch (head_dim) {
    case 32: return RowsOf<32>();
    case 64: return RowsOf<64>();
    case 96: return RowsOf<96>();
    case 128: return RowsOf<128>();
    default: return RowsOf<256>();
  }
}

template <typename T>
cudaError_t DispatchHeadDim(int head_dim, const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  switch (head_dim) {
    case 32: return run_flash_bwd<T, 32>(args, grid, stream);
    case 64: return run_flash_bwd<T, 64>(args, grid, stream);
    case 96: return run_flash_bwd<T, 96>(args, grid, stream);
    case 128: return run_flash_bwd<T, 128>(args, grid, stream);
    case 256: return run_flash_bwd<T, 256>(args, grid, stream);
    default: return cudaErrorInvalidValue;
  }
}

// How one call is laid out over the GPU and the workspace.
struct Plan {
  int n_blocks = 0;         // key blocks of the longest sequence
  int head_splits = 1;      // CTAs per KV head (GQA group split when there are too few CTAs)
  int heads_per_split = 1;
  int dq_splits = 1;        // deterministic: dQ slices (= grid.x); else 1
  bool kv_partial = false;  // dK, dV through FP32 partial sums
  int unit_ys = 1;          // KV heads x head splits
  int64_t full_ctas = 0;    // atomic mode: CTAs that own a whole unit (flash_bwd_args.cuh)
  int64_t tail_units = 0;   // units split into tail_pieces CTAs each (flash_bwd_tail.cuh)
  int tail_pieces = 1;
  dim3 grid;
  int64_t lse_rows = 0;     // per-head stride of the lse/D arrays
  size_t off_factors = 0, off_stats = 0, off_lse = 0, off_dsum = 0, off_dq = 0, off_dk = 0, off_dv = 0;
  size_t off_tail_arrivals = 0, off_tail_partial = 0;  // the arrivals are zeroed with dQ (just before it)
  size_t off_q16 = 0, off_k16 = 0, off_v16 = 0, off_do16 = 0;
  size_t bytes = 0;
};

int MultiprocessorCount() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) return 132;
  return sms;
}

Plan MakePlan(const FlashBwdParams& p, int sms) {
  Plan plan;
  const int block_n = TileRowsOf(p.head_dim).block_n;
  plan.n_blocks = (p.max_seqlen_k + block_n - 1) / block_n;
  const int group = p.heads_q / p.heads_kv;
  // One CTA per SM (8 warps, ~160 KB of shared memory). With fewer (key block, KV head, sequence)
  // CTAs than SMs, a GQA group is split over several CTAs whose dK/dV partials are added later.
  const int64_t base_ctas = int64_t{plan.n_blocks} * p.batch * p.heads_kv;
  if (group > 1 && base_ctas > 0 && base_ctas < sms) {
    const int want = static_cast<int>(std::min<int64_t>(group, (sms + base_ctas - 1) / base_ctas));
    plan.heads_per_split = (group + want - 1) / want;
    plan.head_splits = (group + plan.heads_per_split - 1) / plan.heads_per_split;
  } else {
    plan.heads_per_split = group;
    plan.head_splits = 1;
  }
  plan.kv_partial = plan.head_splits > 1 || p.dtype == ElementType::kFP32;
  if (p.deterministic) {
    // As many dQ slices as fit one wave of CTAs (one CTA per SM); each CTA walks key blocks x,
    // x + splits, ... A partial second wave doubles the time: rounding up (9 slices x 16 heads =
    // 144 CTAs on 132 SMs) measured 2.3x slower than the atomic mode at N = 16k.
    const int64_t others = int64_t{p.batch} * p.heads_kv * plan.head_splits;
    const int64_t want = others > 0 ? sms / others : 1;
    plan.dq_splits = static_cast<int>(std::clamp<int64_t>(want, 1, std::min(16, std::max(plan.n_blocks, 1))));
    plan.grid = dim3(plan.n_blocks > 0 ? plan.dq_splits : 0, p.heads_kv * plan.head_splits, p.batch);
  } else {
    // One CTA per unit; the last partial wave split finely when the units cost the same (any
    // non-causal problem) or when there are fewer units than SMs (flash_bwd_tail.cuh).
    const int64_t units = int64_t{plan.n_blocks} * p.heads_kv * plan.head_splits * p.batch;
    const int64_t tail = units < sms ? units : units % sms;
    const int block_m = TileRowsOf(p.head_dim).block_m;
    const int64_t items = int64_t{(p.max_seqlen_q + block_m - 1) / block_m} * plan.heads_per_split;
    if (!p.causal || units < sms) plan.tail_pieces = ChooseTailPieces(tail, items, sms);
    plan.tail_units = plan.tail_pieces > 1 ? tail : 0;
    plan.full_ctas = units - plan.tail_units;
    plan.grid = dim3(static_cast<unsigned>(plan.full_ctas + plan.tail_units * plan.tail_pieces));
  }
  plan.unit_ys = p.heads_kv * plan.head_splits;

  plan.lse_rows = p.total_q + int64_t{kLsePad} * p.batch;
  const size_t q_elems = size_t(p.total_q) * p.heads_q * p.head_dim;
  const size_t kv_elems = size_t(p.total_k) * p.heads_kv * p.head_dim;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off += AlignUp(bytes);
    return at;
  };
  plan.off_factors = take(kFactorCount * sizeof(float));
  plan.off_stats = take(kStatCount * sizeof(float));
  plan.off_lse = take(size_t(plan.lse_rows) * p.heads_q * sizeof(float));
  plan.off_dsum = take(size_t(plan.lse_rows) * p.heads_q * sizeof(float));
  plan.off_tail_arrivals = take(size_t(plan.tail_units) * sizeof(int));
  plan.off_dq = take(size_t(plan.dq_splits) * q_elems * sizeof(float));
  plan.off_tail_partial =
      take(size_t(plan.tail_units) * plan.tail_pieces * 2 * size_t(block_n) * p.head_dim * sizeof(float));
  if (plan.kv_partial) {
    plan.off_dk = take(size_t(plan.head_splits) * kv_elems * sizeof(float));
    plan.off_dv = take(size_t(plan.head_splits) * kv_elems * sizeof(float));
  }
  if (p.dtype == ElementType::kFP32) {
    plan.off_q16 = take(q_elems * sizeof(__half));
    plan.off_k16 = take(kv_elems * sizeof(__half));
    plan.off_v16 = take(kv_elems * sizeof(__half));
    plan.off_do16 = take(q_elems * sizeof(__half));
  }
  plan.bytes = off;
  return plan;
}

template <typename OutT>
cudaError_t SumSplits(const float* src, int splits, int64_t rows, int heads, int head_dim, void* dst,
                      int64_t row_stride, int64_t head_stride, float scale, const float* factor, cudaStream_t stream) {
  SplitSumArgs a{};
  a.src = src;
  a.splits = splits;
  a.split_stride = rows * heads * head_dim;
  a.rows = rows;
  a.heads = heads;
  a.head_dim = head_dim;
  a.dst = dst;
  a.dst_row_stride = row_stride;
  a.dst_head_stride = head_stride;
  a.scale = scale;
  a.factor = factor;
  return RunSplitSum<OutT>(a, stream);
}

// Everything after the FP32 path's preparation. T: the main kernel's 16-bit type; TIn: the type
// of out and grad_out as given (the pre-pass reads them); OutT: the gradients' type.
template <typename T, typename TIn, typename OutT>
cudaError_t Run(const FlashBwdParams& p, const Plan& plan, uint8_t* ws, BwdKernelArgs args, cudaStream_t stream) {
  const float* factors = p.dtype == ElementType::kFP32 ? reinterpret_cast<const float*>(ws + plan.off_factors) : nullptr;
  float* dq_accum = reinterpret_cast<float*>(ws + plan.off_dq);
  const size_t q_elems = size_t(p.total_q) * p.heads_q * p.head_dim;
  // The tail arrival counters sit right before the dQ accumulators: one memset for both.
  cudaError_t err = cudaMemsetAsync(ws + plan.off_tail_arrivals, 0,
                                    plan.off_dq - plan.off_tail_arrivals + plan.dq_splits * q_elems * sizeof(float),
                                    stream);
  if (err != cudaSuccess) return err;

  BwdPreprocessArgs pre{};
  pre.out = p.out;
  pre.dout = p.grad_out;
  pre.out_row_stride = p.out_row_stride;
  pre.out_head_stride = p.out_head_stride;
  pre.do_row_stride = p.grad_out_row_stride;
  pre.do_head_stride = p.grad_out_head_stride;
  pre.lse = p.lse;
  pre.lse_packed = p.lse_packed;
  pre.max_seqlen_q = p.max_seqlen_q;
  pre.total_q = p.total_q;
  pre.cu_seqlens_q = p.cu_seqlens_q;
  pre.batch = p.batch;
  pre.heads_q = p.heads_q;
  pre.head_dim = p.head_dim;
  pre.lse_log2 = reinterpret_cast<float*>(ws + plan.off_lse);
  pre.dsum = reinterpret_cast<float*>(ws + plan.off_dsum);
  pre.lse_head_stride = plan.lse_rows;
  pre.fp32_factors = factors;
  if ((err = RunBwdPreprocess<TIn>(pre, stream)) != cudaSuccess) return err;

  args.lse_log2 = pre.lse_log2;
  args.dsum = pre.dsum;
  args.lse_head_stride = plan.lse_rows;
  args.dq_accum = dq_accum;
  args.dq_split_stride = static_cast<int64_t>(q_elems);
  args.kv_partial = plan.kv_partial;
  args.dk_partial = plan.kv_partial ? reinterpret_cast<float*>(ws + plan.off_dk) : nullptr;
  args.dv_partial = plan.kv_partial ? reinterpret_cast<float*>(ws + plan.off_dv) : nullptr;
  args.kv_split_stride = p.total_k * p.heads_kv * p.head_dim;
  args.head_splits = plan.head_splits;
  args.heads_per_split = plan.heads_per_split;
  args.unit_blocks = plan.n_blocks;
  args.unit_ys = plan.unit_ys;
  args.full_ctas = static_cast<int>(plan.full_ctas);
  args.tail_pieces = plan.tail_pieces;
  args.tail_partial = reinterpret_cast<float*>(ws + plan.off_tail_partial);
  args.tail_arrivals = reinterpret_cast<int*>(ws + plan.off_tail_arrivals);
  args.fp32_factors = factors;
  if ((err = DispatchHeadDim<T>(p.head_dim, args, plan.grid, stream)) != cudaSuccess) return err;

  if ((err = SumSplits<OutT>(dq_accum, plan.dq_splits, p.total_q, p.heads_q, p.head_dim, p.grad_q,
                             p.grad_q_row_stride, p.grad_q_head_stride, p.softmax_scale,
                             factors != nullptr ? factors + kFactorDq : nullptr, stream)) != cudaSuccess)
    return err;
  if (plan.kv_partial) {
    if ((err = SumSplits<OutT>(args.dk_partial, plan.head_splits, p.total_k, p.heads_kv, p.head_dim, p.grad_k,
                               p.grad_k_row_stride, p.grad_k_head_stride, 1.f, nullptr, stream)) != cudaSuccess)
      return err;
    if ((err = SumSplits<OutT>(args.dv_partial, plan.head_splits, p.total_k, p.heads_kv, p.head_dim, p.grad_v,
                               p.grad_v_row_stride, p.grad_v_head_stride, 1.f, nullptr, stream)) != cudaSuccess)
      return err;
  }
  return cudaSuccess;
}

BwdKernelArgs MakeArgs(const FlashBwdParams& p) {
  BwdKernelArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.dout = p.grad_out;
  a.q_row_stride = p.q_row_stride;
  a.q_head_stride = p.q_head_stride;
  a.k_row_stride = p.k_row_stride;
  a.k_head_stride = p.k_head_stride;
  a.v_row_stride = p.v_row_stride;
  a.v_head_stride = p.v_head_stride;
  a.do_row_stride = p.grad_out_row_stride;
  a.do_head_stride = p.grad_out_head_stride;
  a.cu_seqlens_q = p.cu_seqlens_q;
  a.cu_seqlens_k = p.cu_seqlens_k;
  a.dk = p.grad_k;
  a.dv = p.grad_v;
  a.dk_row_stride = p.grad_k_row_stride;
  a.dk_head_stride = p.grad_k_head_stride;
  a.dv_row_stride = p.grad_v_row_stride;
  a.dv_head_stride = p.grad_v_head_stride;
  a.heads_q = p.heads_q;
  a.heads_kv = p.heads_kv;
  a.heads_per_kv = p.heads_q / p.heads_kv;
  a.causal = p.causal;
  a.deterministic = p.deterministic;
  a.scale_log2 = p.softmax_scale * detail::kLog2e;
  a.dk_scale = p.softmax_scale;
  a.dv_scale = 1.f;
  return a;
}

}  // namespace
}  // namespace bwd

void SetContiguousStrides(FlashBwdParams& p) {
  const int64_t q_row = int64_t{p.heads_q} * p.head_dim, kv_row = int64_t{p.heads_kv} * p.head_dim;
  p.q_head_stride = p.out_head_stride = p.grad_out_head_stride = p.grad_q_head_stride = p.head_dim;
  p.k_head_stride = p.v_head_stride = p.grad_k_head_stride = p.grad_v_head_stride = p.head_dim;
  p.q_row_stride = p.out_row_stride = p.grad_out_row_stride = p.grad_q_row_stride = q_row;
  p.k_row_stride = p.v_row_stride = p.grad_k_row_stride = p.grad_v_row_stride = kv_row;
}

namespace bwd {
namespace {
// The sizes and strides the plan and the kernels rely on (no pointers).
cudaError_t CheckShape(const FlashBwdParams& p) {
  const bool dim_ok = p.head_dim == 32 || p.head_dim == 64 || p.head_dim == 96 || p.head_dim == 128 || p.head_dim == 256;
  if (!dim_ok || p.batch < 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0) return cudaErrorInvalidValue;
  if (p.max_seqlen_q < 0 || p.max_seqlen_k < 0 || p.total_q < 0 || p.total_k < 0) return cudaErrorInvalidValue;
  if (p.batch > 65535 || int64_t{p.heads_q} > 65535) return cudaErrorInvalidValue;
  // The atomic mode's 1-D grid: every (key block, query head, sequence) at most once.
  const int block_n = TileRowsOf(p.head_dim).block_n;
  if (int64_t{(p.max_seqlen_k + block_n - 1) / block_n} * p.heads_q * p.batch > INT32_MAX) return cudaErrorInvalidValue;
  if (!std::isfinite(p.softmax_scale) || p.softmax_scale == 0.f) return cudaErrorInvalidValue;
  // 16-byte vectors everywhere: 8 elements of 16 bits, 4 of FP32.
  const int64_t vec = p.dtype == ElementType::kFP32 ? 4 : 8;
  for (int64_t s : {p.q_row_stride, p.q_head_stride, p.k_row_stride, p.k_head_stride, p.v_row_stride,
                    p.v_head_stride, p.out_row_stride, p.out_head_stride, p.grad_out_row_stride,
                    p.grad_out_head_stride, p.grad_q_row_stride, p.grad_q_head_stride, p.grad_k_row_stride,
                    p.grad_k_head_stride, p.grad_v_row_stride, p.grad_v_head_stride})
    if (s % vec != 0) return cudaErrorInvalidValue;
  return cudaSuccess;
}
}  // namespace
}  // namespace bwd

cudaError_t FlashBwdCheck(const FlashBwdParams& p) {
  using bwd::Aligned16;
  const cudaError_t err = bwd::CheckShape(p);
  if (err != cudaSuccess) return err;
  if (p.batch > 0) {
    if (p.cu_seqlens_q == nullptr || p.cu_seqlens_k == nullptr) return cudaErrorInvalidValue;
    if (p.total_q > 0 && (!Aligned16(p.q) || !Aligned16(p.out) || !Aligned16(p.grad_out) ||
                          !Aligned16(p.grad_q) || p.lse == nullptr))
      return cudaErrorInvalidValue;
    if (p.total_k > 0 && (!Aligned16(p.k) || !Aligned16(p.v) || !Aligned16(p.grad_k) || !Aligned16(p.grad_v)))
      return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

size_t FlashBwdWorkspaceBytes(const FlashBwdParams& p) {
  if (bwd::CheckShape(p) != cudaSuccess) return 0;
  return bwd::MakePlan(p, bwd::MultiprocessorCount()).bytes;
}

cudaError_t FlashBwd(const FlashBwdParams& p, void* workspace, cudaStream_t stream) {
  using namespace bwd;
  cudaError_t err = FlashBwdCheck(p);
  if (err != cudaSuccess) return err;
  if (p.batch == 0 || (p.total_q == 0 && p.total_k == 0)) return cudaSuccess;
  const Plan plan = MakePlan(p, MultiprocessorCount());
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % kAlign != 0) return cudaErrorInvalidValue;
  auto* ws = static_cast<uint8_t*>(workspace);
  BwdKernelArgs args = MakeArgs(p);
  switch (p.dtype) {
    case ElementType::kBF16: return Run<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16>(p, plan, ws, args, stream);
    case ElementType::kFP16: return Run<__half, __half, __half>(p, plan, ws, args, stream);
    case ElementType::kFP32: break;
  }
  // FP32: scaled FP16 copies of q, k, v, grad_out (contiguous) and the factors, then the FP16
  // kernel; the pre-pass reads the FP32 out and grad_out.
  BwdFp32Job job{};
  auto* q16 = reinterpret_cast<__half*>(ws + plan.off_q16);
  auto* k16 = reinterpret_cast<__half*>(ws + plan.off_k16);
  auto* v16 = reinterpret_cast<__half*>(ws + plan.off_v16);
  auto* do16 = reinterpret_cast<__half*>(ws + plan.off_do16);
  job.tensor[0] = {static_cast<const float*>(p.q), q16, p.total_q, p.heads_q, p.q_row_stride, p.q_head_stride};
  job.tensor[1] = {static_cast<const float*>(p.k), k16, p.total_k, p.heads_kv, p.k_row_stride, p.k_head_stride};
  job.tensor[2] = {static_cast<const float*>(p.v), v16, p.total_k, p.heads_kv, p.v_row_stride, p.v_head_stride};
  job.tensor[3] = {static_cast<const float*>(p.grad_out), do16, p.total_q, p.heads_q, p.grad_out_row_stride,
                   p.grad_out_head_stride};
  job.head_dim = p.head_dim;
  job.stats = reinterpret_cast<float*>(ws + plan.off_stats);
  job.factors = reinterpret_cast<float*>(ws + plan.off_factors);
  if ((err = PrepareBwdFp32(job, stream)) != cudaSuccess) return err;
  args.q = q16;
  args.k = k16;
  args.v = v16;
  args.dout = do16;
  args.q_head_stride = args.k_head_stride = args.v_head_stride = args.do_head_stride = p.head_dim;
  args.q_row_stride = args.do_row_stride = int64_t{p.heads_q} * p.head_dim;
  args.k_row_stride = args.v_row_stride = int64_t{p.heads_kv} * p.head_dim;
  return Run<__half, float, float>(p, plan, ws, args, stream);
}

}  // namespace attnd::kernels
