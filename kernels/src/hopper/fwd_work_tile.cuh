// The persistent Hopper forward kernel's unit of work: one (batch, head, block of kBlockM query
// rows), numbered 0 .. num_tiles-1 and handed to the CTAs in zigzag rounds (round r gives tile
// r * grid + blockIdx.x, or r * grid + grid - 1 - blockIdx.x when r is odd). Both roles of a CTA
// decode the same numbers, so the producer and the consumers agree on which tiles exist and how
// many key tiles each has.
#pragma once

#include <cstdint>

#include "flash_fwd_args.cuh"

namespace attnd::kernels::detail::hopper {

struct FwdWorkTile {
  int b, h, m_block;
  int q_start, seqlen_q;  // this sequence's rows in the packed q / out
  int k_start, seqlen_k;
  int rows_valid;  // query rows of this block inside the sequence (<= 0: nothing to do)
  int n_blocks;    // key tiles to visit (0: no row sees a key: out = 0, lse = +inf)
  int n_mask;      // key tiles n >= n_mask need the mask (ragged end, causal diagonal)
};

// Order: non-causal, the query blocks of one head are neighbours (CTAs running together share K/V
// in L2). Causal: groups of `group_heads` heads (enough tiles for two rounds of the grid), inside
// a group the blocks nearest the end of the sequences (most key tiles) first: the CTAs running
// together still share the K/V of a few heads, and the zigzag hand-out (fwd kernel) pairs heavy
// and light blocks like longest-job-first. (The K/V of 132 different heads, as a plain
// heavy-first order over all heads gives, would stream from DRAM at ~5 TB/s.)
template <int kBlockM, int kBlockN, bool kCausal>
__device__ __forceinline__ FwdWorkTile decode_work_tile(const FwdKernelArgs& a, int tile, int m_blocks, int num_bh,
                                                        int group_heads) {
  FwdWorkTile w;
  int bh;
  if constexpr (kCausal) {
    const int per_group = group_heads * m_blocks;
    const int group = tile / per_group;
    const int r = tile - group * per_group;
    const int heads_here = min(group_heads, num_bh - group * group_heads);
    w.m_block = m_blocks - 1 - r / heads_here;
    bh = group * group_heads + r % heads_here;
  } else {
    bh = tile / m_blocks;
    w.m_block = tile - bh * m_blocks;
  }
  w.b = bh / a.heads_q;
  w.h = bh - w.b * a.heads_q;
  w.q_start = a.cu_seqlens_q[w.b];
  w.seqlen_q = a.cu_seqlens_q[w.b + 1] - w.q_start;
  w.k_start = a.cu_seqlens_k[w.b];
  w.seqlen_k = a.cu_seqlens_k[w.b + 1] - w.k_start;
  w.rows_valid = w.seqlen_q - w.m_block * kBlockM;
  const int diag = w.seqlen_k - w.seqlen_q;  // causal: row i sees keys j <= i + diag
  w.n_blocks = (w.seqlen_k + kBlockN - 1) / kBlockN;
  w.n_mask = w.seqlen_k / kBlockN;
  if constexpr (kCausal) {
    const int last_col_end = (w.m_block + 1) * kBlockM + diag;  // one past the last row's last key
    w.n_blocks = min(w.n_blocks, last_col_end <= 0 ? 0 : (last_col_end + kBlockN - 1) / kBlockN);
    const int first_col_end = w.m_block * kBlockM + diag + 1;  // the first row's
    w.n_mask = min(w.n_mask, first_col_end <= 0 ? 0 : first_col_end / kBlockN);
  }
  return w;
}

}  // namespace attnd::kernels::detail::hopper
