// Backward, recomputing the probabilities from q, k and the forward's logsumexp (FlashAttention-2):
//
//   D_i   = sum_c dO_ic O_ic                       (= sum_j P_ij dP_ij)
//   P_ij  = exp(scale * q_i . k_j - lse_i)         (0 where masked; lse = +inf rows give 0)
//   dV_j += sum_i P_ij dO_i
//   dP_ij = dO_i . v_j
//   dS_ij = P_ij (dP_ij - D_i)
//   dQ_i  = scale * sum_j dS_ij k_j
//   dK_j += scale * sum_i dS_ij q_i
//
// with the sums over i running over every query head that shares the KV head (GQA/MQA), on
// 64 x 64 (query tile, key tile) pairs. The scale is folded into dS once. Every function here
// fills or sums into tiles that its caller's task owns alone; which task owns what is
// cpu_backward.cc's business.
#include "server/backends/cpu/backward_tiles.h"

#include <algorithm>

#include "server/backends/cpu/tile_gemm.h"
#include "server/backends/cpu/tile_io.h"
#include "server/backends/cpu/vector_math.h"

namespace attnd::cpu {
namespace {

// Loads q, dO, lse and D of query rows [q0, q0 + rows) of (b, h).
template <int W>
ATTND_ALWAYS_INLINE void LoadQueryTile(const BackwardInputs& in, int b, int h, int q0, int rows,
                                       const BackwardScratch& s) {
  const BackwardArgs& a = *in.args;
  const AttentionParams& p = in.p;
  const int n_d = RoundUp(p.head_dim, W);
  const int64_t row0 = p.shape->cu_seqlens_q[b] + q0;
  LoadRows(p.dtype, ElementAt(a.q, p.dtype, p.QOffset(row0, h)), p.q_stride, rows, p.head_dim, n_d,
           s.q, s.ld);
  LoadRows(p.dtype, ElementAt(a.grad_out, p.dtype, p.QOffset(row0, h)), p.q_stride, rows,
           p.head_dim, n_d, s.dout, s.ld);
  for (int r = 0; r < rows; ++r) {
    s.lse2[r] = a.lse[p.shape->LseIndex(b, h, q0 + r)] * kLog2e;
    s.delta[r] = in.delta[int64_t{h} * p.shape->total_q + row0 + r];
  }
}

// Loads K^T, V^T and (when dQ is wanted) K of key rows [k0, k0 + cols) of (b, hk).
template <int W>
ATTND_ALWAYS_INLINE void LoadKeyTile(const BackwardInputs& in, int b, int hk, int k0, int cols,
                                     bool with_rows, const BackwardScratch& s) {
  const BackwardArgs& a = *in.args;
  const AttentionParams& p = in.p;
  const int n_k = RoundUp(cols, W);
  const int64_t off = p.KvOffset(p.shape->cu_seqlens_k[b] + k0, hk);
  LoadRowsTransposed(p.dtype, ElementAt(a.k, p.dtype, off), p.kv_stride, cols, p.head_dim, n_k, s.kt,
                     kBlockK, s.row);
  LoadRowsTransposed(p.dtype, ElementAt(a.v, p.dtype, off), p.kv_stride, cols, p.head_dim, n_k, s.vt,
                     kBlockK, s.row);
  if (with_rows) {
    LoadRows(p.dtype, ElementAt(a.k, p.dtype, off), p.kv_stride, cols, p.head_dim,
             RoundUp(p.head_dim, W), s.k, s.ld);
  }
}

// P and scale * dS of one (query tile, key tile) pair, into s.s and s.dp. Both schedules call
// exactly this, which is what makes their results identical.
template <int R, int W>
ATTND_ALWAYS_INLINE void ProbabilityAndScoreGrad(const AttentionParams& p, const SequenceMask& mask,
                                                 int q0, int rows, int k0, int cols,
                                                 const BackwardScratch& s) {
  const int n_k = RoundUp(cols, W);
  Gemm<R, W, false>(rows, n_k, p.head_dim, s.q, s.ld, 1, s.kt, kBlockK, s.s, kBlockK);   // S
  Gemm<R, W, false>(rows, n_k, p.head_dim, s.dout, s.ld, 1, s.vt, kBlockK, s.dp, kBlockK);  // dP
  const float score_scale = p.scale * kLog2e;
  const float scale = p.scale;
  for (int r = 0; r < rows; ++r) {
    float* __restrict prow = s.s + r * kBlockK;
    float* __restrict dsrow = s.dp + r * kBlockK;
    const int valid = std::clamp(mask.KeyEnd(q0 + r) - k0, 0, cols);
    const float lse2 = s.lse2[r];
    const float delta = s.delta[r];
    for (int j = 0; j < valid; ++j) {
      const float pj = Exp2(prow[j] * score_scale - lse2);
      prow[j] = pj;
      dsrow[j] = pj * (dsrow[j] - delta) * scale;
    }
    for (int j = valid; j < cols; ++j) {
      prow[j] = 0.f;
      dsrow[j] = 0.f;
    }
  }
}

// Writes rows [0, rows) of a float tile to a q- or kv-shaped gradient starting at `offset`.
ATTND_ALWAYS_INLINE void StoreTile(DType dt, const float* tile, int ld, int rows, int cols,
                                   void* dst, int64_t offset, int64_t stride) {
  for (int r = 0; r < rows; ++r) StoreRow(dt, tile + r * ld, cols, ElementAt(dst, dt, offset + r * stride));
}

// dK and dV of one key tile, summed over every query tile of every head sharing KV head hk. With
// dq_acc (the task's [group][seqlen_q][ld] float buffer) also adds each pair's dS K into dQ.
template <int R, int W>
ATTND_ALWAYS_INLINE void KeyTileGradients(const BackwardInputs& in, const KeyTile& t, float* dq_acc,
                                          const BackwardScratch& s) {
  const AttentionParams& p = in.p;
  const AttentionShape& shape = *p.shape;
  const int n_d = RoundUp(p.head_dim, W);
  const SequenceMask mask{shape.seqlen_q(t.b), shape.seqlen_k(t.b), p.causal};
  LoadKeyTile<W>(in, t.b, t.hk, t.k0, t.cols, dq_acc != nullptr, s);
  for (int j = 0; j < t.cols; ++j) {
    for (int c = 0; c < n_d; ++c) {
      s.dk[j * s.ld + c] = 0.f;
      s.dv[j * s.ld + c] = 0.f;
    }
  }
  // Query tiles before the one holding the first row that sees key k0 see none of this tile.
  const int q_start = mask.FirstQueryRow(t.k0) / kBlockQ * kBlockQ;
  for (int g = 0; g < p.group; ++g) {
    const int h = t.hk * p.group + g;
    for (int q0 = q_start; q0 < mask.seqlen_q; q0 += kBlockQ) {
      const int rows = std::min(kBlockQ, mask.seqlen_q - q0);
      LoadQueryTile<W>(in, t.b, h, q0, rows, s);
      ProbabilityAndScoreGrad<R, W>(p, mask, q0, rows, t.k0, t.cols, s);
      // dV += P^T dO and dK += dS^T Q: A is read transposed in place (a_row 1, a_col kBlockK).
      Gemm<R, W, true>(t.cols, n_d, rows, s.s, 1, kBlockK, s.dout, s.ld, s.dv, s.ld);
      Gemm<R, W, true>(t.cols, n_d, rows, s.dp, 1, kBlockK, s.q, s.ld, s.dk, s.ld);
      if (dq_acc != nullptr) {  // dQ += dS K
        float* dq = dq_acc + (int64_t{g} * mask.seqlen_q + q0) * s.ld;
        Gemm<R, W, true>(rows, n_d, t.cols, s.dp, kBlockK, 1, s.k, s.ld, dq, s.ld);
      }
    }
  }
  const int64_t off = p.KvOffset(shape.cu_seqlens_k[t.b] + t.k0, t.hk);
  StoreTile(p.dtype, s.dk, s.ld, t.cols, p.head_dim, in.args->grad_k, off, p.kv_stride);
  StoreTile(p.dtype, s.dv, s.ld, t.cols, p.head_dim, in.args->grad_v, off, p.kv_stride);
}

// Per-KV-head task: every key tile of (b, hk), then the group's dQ from dq_acc.
template <int R, int W>
ATTND_ALWAYS_INLINE void KvHeadGradients(const BackwardInputs& in, int b, int hk, float* dq_acc,
                                         const BackwardScratch& s) {
  const AttentionParams& p = in.p;
  const AttentionShape& shape = *p.shape;
  const int seqlen_q = shape.seqlen_q(b), seqlen_k = shape.seqlen_k(b);
  const int64_t acc_size = int64_t{p.group} * seqlen_q * s.ld;
  for (int64_t i = 0; i < acc_size; ++i) dq_acc[i] = 0.f;
  for (int k0 = 0; k0 < seqlen_k; k0 += kBlockK) {
    KeyTileGradients<R, W>(in, KeyTile{b, hk, k0, std::min(kBlockK, seqlen_k - k0)}, dq_acc, s);
  }
  for (int g = 0; g < p.group; ++g) {
    const int h = hk * p.group + g;
    StoreTile(p.dtype, dq_acc + int64_t{g} * seqlen_q * s.ld, s.ld, seqlen_q, p.head_dim,
              in.args->grad_q, p.QOffset(shape.cu_seqlens_q[b], h), p.q_stride);
  }
}

// Pass-2 task of the split schedule: dQ of one query tile over the key tiles it sees.
template <int R, int W>
ATTND_ALWAYS_INLINE void QueryTileGradient(const BackwardInputs& in, const QueryTile& t,
                                           const BackwardScratch& s) {
  const AttentionParams& p = in.p;
  const AttentionShape& shape = *p.shape;
  const int n_d = RoundUp(p.head_dim, W);
  const int hk = t.h / p.group;
  const SequenceMask mask{shape.seqlen_q(t.b), shape.seqlen_k(t.b), p.causal};
  LoadQueryTile<W>(in, t.b, t.h, t.q0, t.rows, s);
  for (int r = 0; r < t.rows; ++r) {
    for (int c = 0; c < n_d; ++c) s.dq[r * s.ld + c] = 0.f;
  }
  const int key_end = mask.KeyEnd(t.q0 + t.rows - 1);
  for (int k0 = 0; k0 < key_end; k0 += kBlockK) {
    const int cols = std::min(kBlockK, mask.seqlen_k - k0);
    LoadKeyTile<W>(in, t.b, hk, k0, cols, /*with_rows=*/true, s);
    ProbabilityAndScoreGrad<R, W>(p, mask, t.q0, t.rows, k0, cols, s);
    Gemm<R, W, true>(t.rows, n_d, cols, s.dp, kBlockK, 1, s.k, s.ld, s.dq, s.ld);
  }
  StoreTile(p.dtype, s.dq, s.ld, t.rows, p.head_dim, in.args->grad_q,
            p.QOffset(shape.cu_seqlens_q[t.b] + t.q0, t.h), p.q_stride);
}

// The per-instruction-set entry points: R rows x W floats of C per register block.

#define ATTND_BACKWARD_KERNELS(SUFFIX, TARGET, R, W)                                              \
  TARGET void KvHead##SUFFIX(const BackwardInputs& in, int b, int hk, float* dq_acc,             \
                             const BackwardScratch& s) {                                         \
    KvHeadGradients<R, W>(in, b, hk, dq_acc, s);                                                 \
  }                                                                                               \
  TARGET void KeyTile##SUFFIX(const BackwardInputs& in, const KeyTile& t, const BackwardScratch& s) { \
    KeyTileGradients<R, W>(in, t, nullptr, s);                                                   \
  }                                                                                               \
  TARGET void QueryTile##SUFFIX(const BackwardInputs& in, const QueryTile& t,                    \
                                const BackwardScratch& s) {                                      \
    QueryTileGradient<R, W>(in, t, s);                                                           \
  }

ATTND_BACKWARD_KERNELS(Baseline, , 4, 8)
#if ATTND_CPU_HAVE_X86_VARIANTS
ATTND_BACKWARD_KERNELS(Avx2, ATTND_TARGET_AVX2, 4, 16)
ATTND_BACKWARD_KERNELS(Avx512, ATTND_TARGET_AVX512, 8, 32)
#endif
#undef ATTND_BACKWARD_KERNELS

}  // namespace

BackwardWorkspace::BackwardWorkspace(int ld)
    : arena({int64_t{kBlockQ} * ld, int64_t{kBlockQ} * ld, int64_t{ld} * kBlockK, int64_t{ld} * kBlockK,
             int64_t{kBlockK} * ld, int64_t{kBlockQ} * kBlockK, int64_t{kBlockQ} * kBlockK,
             int64_t{kBlockK} * ld, int64_t{kBlockK} * ld, int64_t{kBlockQ} * ld, kBlockQ, kBlockQ, ld}) {
  tiles.ld = ld;
  tiles.q = arena.Take(int64_t{kBlockQ} * ld);
  tiles.dout = arena.Take(int64_t{kBlockQ} * ld);
  tiles.kt = arena.Take(int64_t{ld} * kBlockK);
  tiles.vt = arena.Take(int64_t{ld} * kBlockK);
  tiles.k = arena.Take(int64_t{kBlockK} * ld);
  tiles.s = arena.Take(int64_t{kBlockQ} * kBlockK);
  tiles.dp = arena.Take(int64_t{kBlockQ} * kBlockK);
  tiles.dk = arena.Take(int64_t{kBlockK} * ld);
  tiles.dv = arena.Take(int64_t{kBlockK} * ld);
  tiles.dq = arena.Take(int64_t{kBlockQ} * ld);
  tiles.lse2 = arena.Take(kBlockQ);
  tiles.delta = arena.Take(kBlockQ);
  tiles.row = arena.Take(ld);
}

BackwardKernels SelectBackwardKernels(CpuIsa isa) {
#if ATTND_CPU_HAVE_X86_VARIANTS
  if (isa == CpuIsa::kAvx512) return {KvHeadAvx512, KeyTileAvx512, QueryTileAvx512};
  if (isa == CpuIsa::kAvx2) return {KvHeadAvx2, KeyTileAvx2, QueryTileAvx2};
#endif
  (void)isa;
  return {KvHeadBaseline, KeyTileBaseline, QueryTileBaseline};
}

}  // namespace attnd::cpu
