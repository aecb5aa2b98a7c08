// FlashAttention forward for Hopper (sm_90a): TMA loads, wgmma, warp specialisation.
//
// The math is the online softmax of flash_fwd_kernel.cuh (per query row, over key tiles S):
//   m' = max(m, max_j S_j),  l' = l exp(c(m - m')) + sum_j exp(c(S_j - m')),
//   O' = O exp(c(m - m')) + exp(c(S - m')) V,      out = O / l,  lse = c m + log l,
// with c = softmax_scale, exp2 and c log2(e) folded into one FFMA, and m moved lazily (only when a
// row's maximum grows by more than 2^8 in exp2 units), so O is rarely rescaled.
//
// One CTA per (batch, head, 128 query rows); 3 warpgroups (flash_fwd_hopper_tile.cuh):
//   producer (warpgroup 0, one thread): TMA Q once, then K[n], V[n] for n = last .. 0 into a ring
//     of kStages slots: wait empty[slot] -> expect_tx + copy -> the copy completes full[slot].
//   consumers (warpgroups 1, 2; 64 query rows each), per key tile i (n = n_last - i):
//       S = Q K[n]^T       wgmma m64 n=kBlockN k16, Q and K from shared memory (K-major)
//       O += P V[n+1]      wgmma m64 n=d k16, P from registers (the S accumulators of the
//                          previous tile rounded to 16 bits), V from shared memory (N-major)
//     both issued back to back, then
//       wait for S; release K slot; mask (diagonal and ragged tiles only); online softmax
//       wait for O (kOverlap: only now, so the softmax above ran under the P V product);
//       release V slot; rescale O if m moved; P = 16-bit S
//     and a last O += P V[0].
//   kPingPong: the two consumers take turns issuing their GEMMs (named barriers 1 and 2), so one
//     warpgroup's softmax runs while the other's GEMMs keep the tensor cores busy.
//   Epilogue: O / l rounded to 16 bits, staged in the warpgroup's own Q rows, 16-byte stores;
//     lse from the lanes that own each row.
//
// Tails and varlen: the tensor maps span the whole packed tensors, so a tile that runs past its
// sequence reads the next sequence's rows (or zeros past the tensor's end). Those keys are masked
// to -inf (P = 0 exactly, and every loaded value is finite), those query rows are never stored.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/fast_math.cuh"
#include "common/numeric.cuh"
#include "common/warp_reduce.cuh"
#include "hopper/async_copy.cuh"
#include "hopper/flash_fwd_hopper_tile.cuh"
#include "hopper/warpgroup.cuh"
#include "hopper/wgmma_ops.cuh"

namespace attnd::kernels::detail::hopper {

// Barrier ids: 1, 2 = "consumer 0 / 1 may issue" (ping-pong); 3, 4 = consumer-local epilogue.
inline constexpr int kIssueBarrier = 1;
inline constexpr int kEpilogueBarrier = 3;

template <typename T, typename Tile, bool kCausal>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    flash_fwd_hopper_kernel(const __grid_constant__ HopperFwdArgs args) {
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kHeadDim = Tile::kHeadDim;
  constexpr int kStages = Tile::kStages;
  constexpr float kInf = INFINITY;
  const FwdKernelArgs& a = args.base;

  // ---- which tile: the order of the mma.sync kernel (heavy causal blocks first) ----
  const int m_blocks = (a.max_seqlen_q + kBlockM - 1) / kBlockM;
  int m_block, bh;
  if constexpr (kCausal) {
    const int num_bh = gridDim.x / m_blocks;
    m_block = m_blocks - 1 - blockIdx.x / num_bh;
    bh = blockIdx.x - (blockIdx.x / num_bh) * num_bh;
  } else {
    bh = blockIdx.x / m_blocks;
    m_block = blockIdx.x - bh * m_blocks;
  }
  const int b = bh / a.heads_q;
  const int h = bh - b * a.heads_q;
  const int q_start = a.cu_seqlens_q[b];
  const int seqlen_q = a.cu_seqlens_q[b + 1] - q_start;
  if (m_block * kBlockM >= seqlen_q) return;
  const int k_start = a.cu_seqlens_k[b];
  const int seqlen_k = a.cu_seqlens_k[b + 1] - k_start;
  const int diag = seqlen_k - seqlen_q;  // causal: row i sees keys j <= i + diag
  const int rows_valid = seqlen_q - m_block * kBlockM;

  int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
  int n_mask = seqlen_k / kBlockN;  // tiles n >= n_mask need the mask
  if constexpr (kCausal) {
    const int last_col_end = (m_block + 1) * kBlockM + diag;
    n_blocks = min(n_blocks, last_col_end <= 0 ? 0 : (last_col_end + kBlockN - 1) / kBlockN);
    const int first_col_end = m_block * kBlockM + diag + 1;
    n_mask = min(n_mask, first_col_end <= 0 ? 0 : first_col_end / kBlockN);
  }

  const int64_t q_row0 = int64_t{q_start} + int64_t{m_block} * kBlockM;
  T* out = static_cast<T*>(a.out) + q_row0 * a.out_row_stride + h * a.out_head_stride;
  auto lse_index = [&](int row) -> int64_t {
    const int i = m_block * kBlockM + row;
    return a.lse_packed ? int64_t{h} * a.total_q + q_start + i : (int64_t{b} * a.heads_q + h) * a.max_seqlen_q + i;
  };

  if (n_blocks <= 0) {  // no row of this block sees a key: out = 0, lse = +inf
    constexpr int kVec = 8;
    for (int idx = threadIdx.x; idx < kBlockM * (kHeadDim / kVec); idx += Tile::kThreads) {
      const int r = idx / (kHeadDim / kVec), c = idx % (kHeadDim / kVec);
      if (r < rows_valid) *reinterpret_cast<uint4*>(out + r * a.out_row_stride + c * kVec) = make_uint4(0, 0, 0, 0);
    }
    for (int r = threadIdx.x; r < kBlockM && r < rows_valid; r += Tile::kThreads) a.lse[lse_index(r)] = kInf;
    return;
  }

  // ---- shared memory and barriers ----
  extern __shared__ uint8_t smem_raw[];
  const uint32_t smem = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  const uint32_t smem_q = smem + Tile::kQOffset;
  auto smem_k = [&](int s) { return smem + Tile::kKOffset + s * Tile::kKVBytes; };
  auto smem_v = [&](int s) { return smem + Tile::kVOffset + s * Tile::kKVBytes; };
  const uint32_t bar = smem + Tile::kBarOffset;
  const uint32_t q_full = bar;
  auto k_full = [&](int s) { return bar + 8 * (1 + s); };
  auto k_empty = [&](int s) { return bar + 8 * (1 + kStages + s); };
  auto v_full = [&](int s) { return bar + 8 * (1 + 2 * kStages + s); };
  auto v_empty = [&](int s) { return bar + 8 * (1 + 3 * kStages + s); };
  constexpr uint32_t kConsumerWarps = 4 * Tile::kConsumers;  // each releases a slot once

  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(k_empty(s), kConsumerWarps);
      mbar_init(v_empty(s), kConsumerWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // ---- producer ----
    warpgroup_reg_dealloc<Tile::kProducerRegs>();
    if (threadIdx.x != 0) return;
    const int kv_head = h / a.heads_per_kv;
    mbar_arrive_expect_tx(q_full, Tile::kQBytes);
#pragma unroll
    for (int cb = 0; cb < Tile::kColBlocks; ++cb)
      tma_load_3d(smem_q + cb * kBlockM * 128, &args.tma_q, q_full, cb * 64, h, static_cast<int>(q_row0));
    for (int i = 0; i < n_blocks; ++i) {
      const int n = n_blocks - 1 - i, s = i % kStages;
      const uint32_t parity = ((i / kStages) & 1) ^ 1;
      const int row = k_start + n * kBlockN;
      mbar_wait(k_empty(s), parity);
      mbar_arrive_expect_tx(k_full(s), Tile::kKVBytes);
#pragma unroll
      for (int cb = 0; cb < Tile::kColBlocks; ++cb)
        tma_load_3d(smem_k(s) + cb * kBlockN * 128, &args.tma_k, k_full(s), cb * 64, kv_head, row);
      mbar_wait(v_empty(s), parity);
      mbar_arrive_expect_tx(v_full(s), Tile::kKVBytes);
#pragma unroll
      for (int cb = 0; cb < Tile::kColBlocks; ++cb)
        tma_load_3d(smem_v(s) + cb * kBlockN * 128, &args.tma_v, v_full(s), cb * 64, kv_head, row);
    }
    return;
  }

  // ---- consumers ----
  warpgroup_reg_alloc<Tile::kConsumerRegs>();
  const int consumer = warpgroup - 1;
  const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;  // accumulator layout: rows g, g + 8 of the warp's 16; cols 8j + 2t, +1
  const int row0 = consumer * 64 + warp * 16 + g;  // this thread's first row within the CTA tile

  const uint64_t desc_q = smem_desc(smem_q + consumer * 64 * 128, 16, 1024);
  auto desc_k = [&](int s) { return smem_desc(smem_k(s), 16, 1024); };
  auto desc_v = [&](int s) { return smem_desc(smem_v(s), kBlockN * 128, 1024); };

  float scale_log2 = a.scale_log2;
  float acc_o[kHeadDim / 2];
  float acc_s[kBlockN / 2];
  uint32_t frag_p[kBlockN / 16][4];
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) acc_o[i] = 0.f;
  float row_max[2] = {-kInf, -kInf}, row_sum[2] = {0.f, 0.f};

  auto issue_qk = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      // k-slice kk: column block kk / 4, 32 bytes per slice inside its 128-byte rows.
      wgmma_ss<kBlockN, T>(acc_s, desc_advance(desc_q, (kk / 4) * kBlockM * 128 + (kk % 4) * 32),
                           desc_advance(desc_k(s), (kk / 4) * kBlockN * 128 + (kk % 4) * 32), kk > 0);
    }
  };
  auto issue_pv = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
      wgmma_rs_tb<kHeadDim, T>(acc_o, frag_p[kk], desc_advance(desc_v(s), kk * 16 * 128));
  };
  auto release = [&](uint32_t empty_bar) {
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_bar);
  };
  // Ping-pong turns: wait for mine, then hand the turn to the other consumer.
  auto turn_wait = [&] {
    if constexpr (Tile::kPingPong) named_barrier_sync(kIssueBarrier + consumer, 256);
  };
  auto turn_pass = [&] {
    if constexpr (Tile::kPingPong) named_barrier_arrive(kIssueBarrier + (1 - consumer), 256);
  };

  // Column j of tile n is masked for row r when j >= seqlen_k or (causal) j > r + diag.
  auto apply_mask = [&](int n) {
    const int col0 = n * kBlockN + 2 * t;
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      int limit = seqlen_k;
      if constexpr (kCausal) limit = min(limit, m_block * kBlockM + row0 + 8 * rh + diag + 1);
      const int rel = limit - col0;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (j * 8 + e >= rel) acc_s[4 * j + 2 * rh + e] = -kInf;
    }
  };

  // Online softmax of acc_s in place (P = exp2(c S - c m), FP32). Returns whether m moved (then
  // correction[] holds the factors O still has to be multiplied by).
  float correction[2] = {1.f, 1.f};
  auto softmax = [&]() -> bool {
    constexpr float kStaleLog2 = 8.f;
    float tile_max[2];
    bool move = false;
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float part[4] = {-kInf, -kInf, -kInf, -kInf};
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
        part[j % 4] = fmaxf(part[j % 4], fmaxf(acc_s[4 * j + 2 * rh], acc_s[4 * j + 2 * rh + 1]));
      tile_max[rh] = quad_max(fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3])));
      move |= (tile_max[rh] - row_max[rh]) * scale_log2 > kStaleLog2;  // NaN (-inf - -inf) is false
    }
    const bool moved = __any_sync(0xffffffffu, move);
    if (moved) {
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const float mx = fmaxf(row_max[rh], tile_max[rh]);
        correction[rh] = mx == -kInf ? 1.f : fast_exp2((row_max[rh] - mx) * scale_log2);
        row_max[rh] = mx;
        row_sum[rh] *= correction[rh];
      }
    }
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      const float max_scaled = row_max[rh] == -kInf ? 0.f : row_max[rh] * scale_log2;
      float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float p = fast_exp2(fmaf(acc_s[4 * j + 2 * rh + e], scale_log2, -max_scaled));
          acc_s[4 * j + 2 * rh + e] = p;
          part[j % 4] += p;
        }
      row_sum[rh] += (part[0] + part[1]) + (part[2] + part[3]);
    }
    return moved;
  };
  auto rescale_o = [&] {
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[4 * j + e] *= correction[e / 2];
  };
  auto convert_p = [&] {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) frag_p[kk][r] = pack2<T>(acc_s[8 * kk + 2 * r], acc_s[8 * kk + 2 * r + 1]);
  };

  if (Tile::kPingPong && consumer == 1) named_barrier_arrive(kIssueBarrier, 256);  // consumer 0 goes first
  mbar_wait(q_full, 0);

  // Tile 0 (the last key tile): S only; O is still zero, so nothing to rescale.
  turn_wait();
  mbar_wait(k_full(0), 0);
  wgmma_fence();
  issue_qk(0);
  wgmma_commit();
  turn_pass();
  wgmma_wait<0>();
  fence_registers(acc_s);
  release(k_empty(0));
  if (n_blocks - 1 >= n_mask) apply_mask(n_blocks - 1);
  softmax();
  convert_p();

  // Tiles 1 .. n_blocks-1: S of this tile and O += P V of the previous one, issued together.
  for (int i = 1; i < n_blocks; ++i) {
    const int n = n_blocks - 1 - i, s = i % kStages, sp = (i - 1) % kStages;
    turn_wait();
    mbar_wait(k_full(s), (i / kStages) & 1);
    fence_registers(acc_o);
    wgmma_fence();
    issue_qk(s);
    wgmma_commit();
    mbar_wait(v_full(sp), ((i - 1) / kStages) & 1);
    wgmma_fence();  // a new basic block after the wait: ptxas wants the fence again
    issue_pv(sp);
    wgmma_commit();
    turn_pass();
    if constexpr (Tile::kOverlap) {
      wgmma_wait<1>();  // S landed; O += P V still running under the softmax below
    } else {
      wgmma_wait<0>();
    }
    fence_registers(acc_s);
    release(k_empty(s));
    if constexpr (!Tile::kOverlap) release(v_empty(sp));
    if (n >= n_mask) apply_mask(n);
    const bool moved = softmax();
    if constexpr (Tile::kOverlap) {
      wgmma_wait<0>();
      release(v_empty(sp));
    }
    fence_registers(acc_o);
    if (moved) rescale_o();
    convert_p();
  }

  // The last O += P V.
  {
    const int sp = (n_blocks - 1) % kStages;
    turn_wait();
    mbar_wait(v_full(sp), ((n_blocks - 1) / kStages) & 1);
    fence_registers(acc_o);
    wgmma_fence();
    issue_pv(sp);
    wgmma_commit();
    if (consumer == 0) turn_pass();  // consumer 1's last pass would have no taker
    wgmma_wait<0>();
    fence_registers(acc_o);
    release(v_empty(sp));
  }

  // ---- epilogue ----
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const float sum = quad_sum(row_sum[rh]);
    const bool any = sum > 0.f;
    const float inv = any ? 1.f / sum : 0.f;
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      acc_o[4 * j + 2 * rh] *= inv;
      acc_o[4 * j + 2 * rh + 1] *= inv;
    }
    const int row = row0 + 8 * rh;
    if (t == 0 && row < rows_valid) a.lse[lse_index(row)] = any ? (row_max[rh] * scale_log2 + fast_log2(sum)) * kLn2 : kInf;
  }
  // Stage O in this warpgroup's own Q rows (same swizzled layout; every wgmma reading them has
  // completed), then write whole 16-byte chunks, consecutive threads along a row.
  auto stage_offset = [&](int row, int chunk) {  // row within the CTA tile, 16-byte chunk of the row
    return uint32_t((chunk / 8) * kBlockM * 128 + row * 128 + (((chunk % 8) ^ (row % 8)) << 4));
  };
  uint8_t* smem_generic = smem_raw + (smem - static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)));
#pragma unroll
  for (int rh = 0; rh < 2; ++rh)
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j)
      *reinterpret_cast<uint32_t*>(smem_generic + Tile::kQOffset + stage_offset(row0 + 8 * rh, j) + 4 * t) =
          pack2<T>(acc_o[4 * j + 2 * rh], acc_o[4 * j + 2 * rh + 1]);
  named_barrier_sync(kEpilogueBarrier + consumer, 128);
  constexpr int kChunks = kHeadDim / 8;
#pragma unroll
  for (int it = 0; it < 64 * kChunks / 128; ++it) {
    const int idx = it * 128 + tid;
    const int row = consumer * 64 + idx / kChunks, c = idx % kChunks;
    if (row < rows_valid)
      *reinterpret_cast<uint4*>(out + row * a.out_row_stride + c * 8) =
          *reinterpret_cast<const uint4*>(smem_generic + Tile::kQOffset + stage_offset(row, c));
  }
}

}  // namespace attnd::kernels::detail::hopper
