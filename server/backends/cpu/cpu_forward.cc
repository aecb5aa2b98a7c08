// Forward: one task per (sequence b, query head h, tile of up to 128 query rows).
//
// Online softmax (FlashAttention): for each query row keep the running max m, the running sum
// l = sum_j exp(s_j - m) and the unnormalised output o = sum_j exp(s_j - m) v_j. Walking the key
// tiles in order, with s the row's scores in that tile (log2 units, so exp is exp2):
//
//   m'  = max(m, max_j s_j)
//   p_j = 2^(s_j - m')
//   l   = l * 2^(m - m') + sum_j p_j
//   o   = o * 2^(m - m') + sum_j p_j v_j
//
// and at the end out = o / l, lse = (m + log2 l) * ln 2. Only a 128 x 64 tile of scores ever
// exists, so memory is O(tile) per thread whatever the sequence length. A row that sees no key
// (causal with seqlen_q > seqlen_k, or an empty key sequence) gets out = 0 and lse = +inf.
#include "server/backends/cpu/cpu_forward.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "server/backends/cpu/attention_tiles.h"
#include "server/backends/cpu/tile_gemm.h"
#include "server/backends/cpu/tile_io.h"
#include "server/backends/cpu/vector_math.h"

namespace attnd::cpu {
namespace {

struct QueryTile {
  int b = 0;
  int h = 0;
  int q0 = 0;    // first row within the sequence
  int rows = 0;
};

// One thread's tiles; ld is the row length of the head_dim-wide tiles.
struct ForwardScratch {
  int ld = 0;
  float* q = nullptr;     // [kForwardBlockQ][ld]
  float* kt = nullptr;    // [head_dim][kBlockK]  K^T
  float* v = nullptr;     // [kBlockK][ld]
  float* s = nullptr;     // [kForwardBlockQ][kBlockK]  scores, then probabilities
  float* o = nullptr;     // [kForwardBlockQ][ld]       unnormalised output
  float* m = nullptr;     // [kForwardBlockQ]
  float* l = nullptr;     // [kForwardBlockQ]
  float* row = nullptr;   // [ld] conversion buffer
};

template <int R, int W>
ATTND_ALWAYS_INLINE void ForwardQueryTile(const ForwardArgs& args, const AttentionParams& p,
                                          const QueryTile& t, const ForwardScratch& s) {
  const AttentionShape& shape = *p.shape;
  const DType dt = p.dtype;
  const int d = p.head_dim;
  const int n_d = RoundUp(d, W);
  const int hk = t.h / p.group;
  const SequenceMask mask{shape.seqlen_q(t.b), shape.seqlen_k(t.b), p.causal};
  const int64_t q_row0 = shape.cu_seqlens_q[t.b] + t.q0;
  const int64_t k_row0 = shape.cu_seqlens_k[t.b];
  const float score_scale = p.scale * kLog2e;

  LoadRows(dt, ElementAt(args.q, dt, p.QOffset(q_row0, t.h)), p.q_stride, t.rows, d, n_d, s.q, s.ld);
  for (int r = 0; r < t.rows; ++r) {
    s.m[r] = -kInf;
    s.l[r] = 0.f;
    for (int c = 0; c < n_d; ++c) s.o[r * s.ld + c] = 0.f;
  }

  const int key_end = mask.KeyEnd(t.q0 + t.rows - 1);
  for (int k0 = 0; k0 < key_end; k0 += kBlockK) {
    const int cols = std::min(kBlockK, key_end - k0);
    const int n_k = RoundUp(cols, W);
    LoadRowsTransposed(dt, ElementAt(args.k, dt, p.KvOffset(k_row0 + k0, hk)), p.kv_stride, cols, d,
                       n_k, s.kt, kBlockK, s.row);
    LoadRows(dt, ElementAt(args.v, dt, p.KvOffset(k_row0 + k0, hk)), p.kv_stride, cols, d, n_d, s.v,
             s.ld);

    // S = Q K^T
    Gemm<R, W, false>(t.rows, n_k, d, s.q, s.ld, 1, s.kt, kBlockK, s.s, kBlockK);

    // Online softmax, row by row; masked and padded entries of P become 0.
    for (int r = 0; r < t.rows; ++r) {
      float* __restrict srow = s.s + r * kBlockK;
      const int valid = std::clamp(mask.KeyEnd(t.q0 + r) - k0, 0, cols);
      if (valid == 0) {
        for (int j = 0; j < cols; ++j) srow[j] = 0.f;
        continue;
      }
      for (int j = 0; j < valid; ++j) srow[j] *= score_scale;
      const float m_old = s.m[r];
      const float m_new = std::max(m_old, RowMax(srow, valid));
      const float alpha = Exp2(m_old - m_new);  // 0 while the row had no key yet (m_old = -inf)
      for (int j = 0; j < valid; ++j) srow[j] = Exp2(srow[j] - m_new);
      for (int j = valid; j < cols; ++j) srow[j] = 0.f;
      s.l[r] = s.l[r] * alpha + RowSum(srow, valid);
      s.m[r] = m_new;
      if (alpha != 1.f) {
        float* __restrict orow = s.o + r * s.ld;
        for (int c = 0; c < n_d; ++c) orow[c] *= alpha;
      }
    }

    // O += P V
    Gemm<R, W, true>(t.rows, n_d, cols, s.s, kBlockK, 1, s.v, s.ld, s.o, s.ld);
  }

  for (int r = 0; r < t.rows; ++r) {
    float* __restrict orow = s.o + r * s.ld;
    const float l = s.l[r];
    float lse = kInf;
    if (l == 0.f) {  // the row saw no key (l >= 1 otherwise: its max term is 2^0)
      for (int c = 0; c < d; ++c) orow[c] = 0.f;
    } else {         // NaN inputs propagate to out and lse rather than pass for a masked row
      const float inv_l = 1.f / l;
      for (int c = 0; c < d; ++c) orow[c] *= inv_l;
      lse = (s.m[r] + std::log2(l)) * kLn2;
    }
    StoreRow(dt, orow, d, ElementAt(args.out, dt, p.QOffset(q_row0 + r, t.h)));
    args.lse[shape.LseIndex(t.b, t.h, t.q0 + r)] = lse;
  }
}

using ForwardTileFn = void (*)(const ForwardArgs&, const AttentionParams&, const QueryTile&,
                               const ForwardScratch&);

// One instantiation per instruction set: R rows x W floats of C per register block.
void ForwardTileBaseline(const ForwardArgs& a, const AttentionParams& p, const QueryTile& t,
                         const ForwardScratch& s) {
  ForwardQueryTile<4, 8>(a, p, t, s);
}
#if ATTND_CPU_HAVE_X86_VARIANTS
ATTND_TARGET_AVX2 void ForwardTileAvx2(const ForwardArgs& a, const AttentionParams& p,
                                       const QueryTile& t, const ForwardScratch& s) {
  ForwardQueryTile<4, 16>(a, p, t, s);
}
ATTND_TARGET_AVX512 void ForwardTileAvx512(const ForwardArgs& a, const AttentionParams& p,
                                           const QueryTile& t, const ForwardScratch& s) {
  ForwardQueryTile<8, 32>(a, p, t, s);
}
#endif

ForwardTileFn SelectForwardTile(CpuIsa isa) {
#if ATTND_CPU_HAVE_X86_VARIANTS
  if (isa == CpuIsa::kAvx512) return ForwardTileAvx512;
  if (isa == CpuIsa::kAvx2) return ForwardTileAvx2;
#endif
  (void)isa;
  return ForwardTileBaseline;
}

// Every (sequence, query head, query tile), the most expensive first.
std::vector<QueryTile> ForwardTasks(const AttentionParams& p) {
  const AttentionShape& shape = *p.shape;
  std::vector<QueryTile> tasks;
  std::vector<double> cost;
  for (int b = 0; b < shape.batch; ++b) {
    const SequenceMask mask{shape.seqlen_q(b), shape.seqlen_k(b), p.causal};
    for (int q0 = 0; q0 < mask.seqlen_q; q0 += kForwardBlockQ) {
      const int rows = std::min(kForwardBlockQ, mask.seqlen_q - q0);
      for (int h = 0; h < p.heads_q; ++h) {
        tasks.push_back({b, h, q0, rows});
        cost.push_back(double(rows) * (mask.KeyEnd(q0 + rows - 1) + kBlockK));
      }
    }
  }
  std::vector<QueryTile> sorted;
  sorted.reserve(tasks.size());
  for (int64_t i : LongestFirst(cost)) sorted.push_back(tasks[size_t(i)]);
  return sorted;
}

}  // namespace

void RunForward(const ForwardArgs& args, CpuIsa isa, ThreadPool& pool) {
  const AttentionParams params = AttentionParams::From(*args.shape, args.dtype, args.options);
  const std::vector<QueryTile> tasks = ForwardTasks(params);
  const ForwardTileFn tile_fn = SelectForwardTile(isa);
  const int ld = RoundUp(params.head_dim, 32);  // the widest W, so every variant fits
  pool.Run(static_cast<int64_t>(tasks.size()), [&](TaskCursor& cursor) {
    TileScratch arena({int64_t{kForwardBlockQ} * ld, int64_t{ld} * kBlockK, int64_t{kBlockK} * ld,
                       int64_t{kForwardBlockQ} * kBlockK, int64_t{kForwardBlockQ} * ld, kForwardBlockQ,
                       kForwardBlockQ, ld});
    ForwardScratch s;
    s.ld = ld;
    s.q = arena.Take(int64_t{kForwardBlockQ} * ld);
    s.kt = arena.Take(int64_t{ld} * kBlockK);
    s.v = arena.Take(int64_t{kBlockK} * ld);
    s.s = arena.Take(int64_t{kForwardBlockQ} * kBlockK);
    s.o = arena.Take(int64_t{kForwardBlockQ} * ld);
    s.m = arena.Take(kForwardBlockQ);
    s.l = arena.Take(kForwardBlockQ);
    s.row = arena.Take(ld);
    int64_t i;
    while (cursor.Next(i)) tile_fn(args, params, tasks[static_cast<size_t>(i)], s);
  });
}

}  // namespace attnd::cpu
