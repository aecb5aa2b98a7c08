// FlashAttention-2 backward, main kernel: one CTA per unit = (block of kBlockN keys, KV head [,
// group slice], sequence), or per slice of a unit's query tiles in the last partial wave
// (flash_bwd_tail.cuh). The math, per query row i and key j (c = softmax_scale):
//
//   P_ij  = exp(c q_i.k_j - lse_i)                 recomputed from Q, K and the forward's lse
//   dV_j += sum_i P_ij dO_i
//   dP_ij = dO_i . v_j
//   dS_ij = P_ij (dP_ij - D_i),  D_i = dO_i . out_i  (the pre-pass; = sum_j P_ij dP_ij)
//   dK_j += c sum_i dS_ij q_i
//   dQ_i += c sum_j dS_ij k_j                      (summed over the CTAs of all key blocks)
//
// In log2 units P = exp2(S * c log2(e) - lse log2(e)): one FFMA + one MUFU per score, with lse
// pre-multiplied by log2(e) in the pre-pass. A row that saw no key in the forward has lse = +inf,
// so P = 0 and it contributes nothing; so do query rows past the sequence end (the pre-pass pads
// lse with +inf there). Masked scores (causal, keys past seqlen_k) get P = 0 explicitly.
//
// Tile loop: K, V of the CTA's key block stay in shared memory; dK, dV accumulate in registers
// (FP32) over every query tile of every query head the CTA covers (GQA: the heads of one KV head
// group, so the group sum needs no atomics). Per query tile (h, m):
//   wait Q, dO, lse, D of (h, m); barrier     (also: every warp is done with the previous tile)
//   cp.async Q, dO, lse, D of tile + kStages - 1 into its stage     (in flight meanwhile)
//   S = Q K^T, dP = dO V^T          ldmatrix (Q, dO, K, V) + mma.sync; one k-loop for both
//                                   (kFusedSdP) or two, P rounded to 16 bits between them
//   P = exp2(..), dS = P o (dP - D) masked only on diagonal/tail tiles (a second copy of the
//                                   code without the mask); P, dS -> smem (16 bit)
//   barrier
//   dV += P^T dO, dK += dS^T Q      ldmatrix.trans of P, dS, dO, Q + mma.sync
//   dQ  = dS K                      ldmatrix (dS) + ldmatrix.trans (K) + mma.sync
//   dQ -> FP32 workspace            red.global.add.v2 (default) or, kDeterministic, plain
//                                   loads (before the dQ mma) and stores into the CTA's own slice
// Epilogue: [a slice of a split unit: partial dK, dV to the workspace; the last slice to finish
// adds them] dK * c, dV -> global (16-bit), or FP32 partial sums when the group is split.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/cp_async.cuh"
#include "common/fast_math.cuh"
#include "common/ldmatrix.cuh"
#include "common/memory_ops.cuh"
#include "common/mma.cuh"
#include "common/numeric.cuh"
#include "flash_bwd_args.cuh"
#include "flash_bwd_smem.cuh"
#include "flash_bwd_tail.cuh"
#include "flash_bwd_tile.cuh"

namespace attnd::kernels::bwd {

using detail::cp_async_16;
using detail::cp_async_4;
using detail::cp_async_commit;
using detail::cp_async_wait;
using detail::fast_exp2;
using detail::ldmatrix_x4;
using detail::ldmatrix_x4_trans;
using detail::mma_m16n8k16;
using detail::pack2;
using detail::red_add_f32x2;
using detail::smem_addr;

// cp.async of kRows rows x head_dim of a [rows, head_dim] tile starting at `gmem` into the swizzled
// tile at shared byte address `smem_tile`; rows >= rows_valid are zero-filled.
template <typename Tile, int kRows, typename T>
__device__ __forceinline__ void bwd_load_rows(uint32_t smem_tile, const T* gmem, int64_t row_stride, int rows_valid,
                                              int tid) {
  using L = typename Tile::RowsD;
  constexpr int kChunks = Tile::kHeadDim / 8;
  constexpr int kTotal = kRows * kChunks;
  constexpr int kIters = (kTotal + Tile::kThreads - 1) / Tile::kThreads;
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const int idx = tid + i * Tile::kThreads;
    if (kTotal % Tile::kThreads == 0 || idx < kTotal) {
      const int r = idx / kChunks, c = idx % kChunks;
      const bool valid = r < rows_valid;
      cp_async_16(smem_tile + L::offset(r, c), valid ? gmem + r * row_stride + c * 8 : gmem, valid);
    }
  }
}

// acc = A B^T for this warp's kMi x 16 rows of A ([rows][d] tile at s_a) and kNi x 8 rows of B
// ([rows][d] tile at s_b), k = head_dim: the S = Q K^T and dP = dO V^T products.
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t x);
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t x) {
  return make_float2(__uint_as_float(x << 16), __uint_as_float(x & 0xffff0000u));
}
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t x) {
  __half2 h = *reinterpret_cast<__half2*>(&x);
  return __half22float2(h);
}

template <typename T, typename Tile, int kMi, int kNi>
__device__ __forceinline__ void warp_gemm_rows(float (&acc)[kMi][kNi][4], uint32_t s_a, uint32_t s_b, uint32_t off_a,
                                               uint32_t off_b) {
  constexpr int kRowD = Tile::RowsD::kRowBytes;
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int j = 0; j < kNi; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
#pragma unroll
  for (int ks = 0; ks < Tile::kHeadDim / 16; ++ks) {
    uint32_t a[kMi][4];
#pragma unroll
    for (int mi = 0; mi < kMi; ++mi) ldmatrix_x4(a[mi], s_a + chunk_step(off_a, 2 * ks) + mi * 16 * kRowD);
#pragma unroll
    for (int nb = 0; nb < kNi / 2; ++nb) {
      uint32_t bf[4];
      ldmatrix_x4(bf, s_b + chunk_step(off_b, 2 * ks) + nb * 16 * kRowD);
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
        mma_m16n8k16<T>(acc[mi][2 * nb], a[mi], b0);
        mma_m16n8k16<T>(acc[mi][2 * nb + 1], a[mi], b1);
      }
    }
  }
}

// Both S = Q K^T and dP = dO V^T in one k-loop: two independent accumulator sets, so that the
// tensor pipe always has an mma whose operands are ready.
template <typename T, typename Tile, int kMi, int kNi>
__device__ __forceinline__ void warp_gemm_rows2(float (&acc)[kMi][kNi][4], float (&acc2)[kMi][kNi][4], uint32_t s_a,
                                                uint32_t s_a2, uint32_t s_b, uint32_t s_b2, uint32_t off_a,
                                                uint32_t off_b) {
  constexpr int kRowD = Tile::RowsD::kRowBytes;
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int j = 0; j < kNi; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = acc2[i][j][e] = 0.f;
#pragma unroll
  for (int ks = 0; ks < Tile::kHeadDim / 16; ++ks) {
    uint32_t a[kMi][4], a2[kMi][4];
#pragma unroll
    for (int mi = 0; mi < kMi; ++mi) {
      ldmatrix_x4(a[mi], s_a + chunk_step(off_a, 2 * ks) + mi * 16 * kRowD);
      ldmatrix_x4(a2[mi], s_a2 + chunk_step(off_a, 2 * ks) + mi * 16 * kRowD);
    }
#pragma unroll
    for (int nb = 0; nb < kNi / 2; ++nb) {
      uint32_t bf[4], bf2[4];
      ldmatrix_x4(bf, s_b + chunk_step(off_b, 2 * ks) + nb * 16 * kRowD);
      ldmatrix_x4(bf2, s_b2 + chunk_step(off_b, 2 * ks) + nb * 16 * kRowD);
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
      const uint32_t c0[2] = {bf2[0], bf2[1]}, c1[2] = {bf2[2], bf2[3]};
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
        mma_m16n8k16<T>(acc[mi][2 * nb], a[mi], b0);
        mma_m16n8k16<T>(acc[mi][2 * nb + 1], a[mi], b1);
        mma_m16n8k16<T>(acc2[mi][2 * nb], a2[mi], c0);
        mma_m16n8k16<T>(acc2[mi][2 * nb + 1], a2[mi], c1);
      }
    }
  }
}

// Where the softmax of one warp's rows reads lse/D and where its mask ends. Row (mi, hh) of the
// warp is shared-memory row first + 16 mi + 8 hh of the stage's lse/D; its last visible key,
// relative to the lane's first column, is last_key (keys past seqlen_k), or for causal at most
// diag + that row index.
// The unit of an atomic-mode CTA and its slice of the unit's query tiles (flash_bwd_args.cuh).
struct TailPiece {
  int unit = 0;
  int piece = 0, pieces = 1;
  int tail_unit = 0;  // index among the split units
};
__device__ __forceinline__ TailPiece tail_piece(const BwdKernelArgs& args) {
  TailPiece t;
  t.unit = blockIdx.x;
  if (t.unit >= args.full_ctas) {
    t.pieces = args.tail_pieces;
    t.tail_unit = (t.unit - args.full_ctas) / t.pieces;
    t.piece = t.unit - args.full_ctas - t.tail_unit * t.pieces;
    t.unit = args.full_ctas + t.tail_unit;
  }
  return t;
}

struct SoftmaxRows {
  int first;
  int last_key;
  int diag;
  bool causal;
};

// P = exp2(S c log2e - lse log2e) of this warp's S accumulators (kMasked: 0 past the last visible
// key), rounded to 16 bits and stored to the P tile; kWithDs: also dS = P o (dP alpha - D) from
// the FP32 P into the dS tile; else the rounded P is kept in p16 for a later dS (what dV uses).
// (Storing P only after the dP products, so that this exp2 work could issue among their mma, was
// tried: at d = 64 the S and dP accumulators are then live together and 100+ bytes spill.)
template <typename T, typename Tile, bool kMasked, bool kWithDs>
__device__ __forceinline__ void bwd_softmax(const float (&acc_s)[Tile::kMiS][Tile::kNiS][4],
                                            const float (&acc_dp)[Tile::kMiS][Tile::kNiS][4],
                                            uint32_t (&p16)[Tile::kMiS][Tile::kNiS][2], uint8_t* smem,
                                            const float* s_lse, const float* s_dsum, uint32_t off_p_st,
                                            const SoftmaxRows& rows, float scale_log2, float ds_alpha) {
  constexpr int kRowN = Tile::RowsN::kRowBytes;
#pragma unroll
  for (int mi = 0; mi < Tile::kMiS; ++mi) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = rows.first + mi * 16 + hh * 8;
      const float lse = s_lse[r];
      const float dsum = kWithDs ? s_dsum[r] : 0.f;
      const int last = kMasked ? (rows.causal ? min(rows.last_key, rows.diag + r) : rows.last_key) : 0;
#pragma unroll
      for (int ni = 0; ni < Tile::kNiS; ++ni) {
        float p0 = fast_exp2(fmaf(acc_s[mi][ni][2 * hh], scale_log2, -lse));
        float p1 = fast_exp2(fmaf(acc_s[mi][ni][2 * hh + 1], scale_log2, -lse));
        if constexpr (kMasked) {
          if (ni * 8 > last) p0 = 0.f;
          if (ni * 8 + 1 > last) p1 = 0.f;
        }
        const uint32_t off = chunk_step(off_p_st, ni) + (mi * 16 + hh * 8) * kRowN;
        p16[mi][ni][hh] = pack2<T>(p0, p1);
        *reinterpret_cast<uint32_t*>(smem + Tile::kOffP + off) = p16[mi][ni][hh];
        if constexpr (kWithDs) {
          const float ds0 = p0 * fmaf(acc_dp[mi][ni][2 * hh], ds_alpha, -dsum);
          const float ds1 = p1 * fmaf(acc_dp[mi][ni][2 * hh + 1], ds_alpha, -dsum);
          *reinterpret_cast<uint32_t*>(smem + Tile::kOffDs + off) = pack2<T>(ds0, ds1);
        }
      }
    }
  }
}

template <typename T, typename Tile, bool kDeterministic>
__global__ void __launch_bounds__(Tile::kThreads, 1) flash_bwd_kernel(const __grid_constant__ BwdKernelArgs args) {
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kHeadDim = Tile::kHeadDim;
  constexpr int kRowD = Tile::RowsD::kRowBytes;  // bytes per row of Q, dO, K, V tiles
  constexpr int kRowN = Tile::RowsN::kRowBytes;  // bytes per row of P, dS tiles
  constexpr int kMiS = Tile::kMiS, kNiS = Tile::kNiS;
  constexpr int kMiKV = Tile::kMiKV, kNjKV = Tile::kNjKV;
  constexpr int kMiQ = Tile::kMiQ, kNjQ = Tile::kNjQ;

  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t s_base = smem_addr(smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates

  // Which unit this CTA works on (flash_bwd_args.cuh): key blocks n_first, n_first + n_stride, ..
  // of (y, b), and which slice (piece of pieces) of each block's query tiles.
  int n_first, n_stride, y, b;
  TailPiece slice{};
  if constexpr (kDeterministic) {
    n_first = blockIdx.x, n_stride = gridDim.x, y = blockIdx.y, b = blockIdx.z;
  } else {
    slice = tail_piece(args);
    const int unit = slice.unit;
    const int yb = unit / args.unit_blocks;
    n_first = unit - yb * args.unit_blocks, n_stride = args.unit_blocks;  // one key block
    b = yb / args.unit_ys, y = yb - b * args.unit_ys;
  }
  const int kv_head = y / args.head_splits;
  const int head_split = y - kv_head * args.head_splits;
  const int h_begin = kv_head * args.heads_per_kv + head_split * args.heads_per_split;
  const int h_end = min(h_begin + args.heads_per_split, (kv_head + 1) * args.heads_per_kv);

  const int q_start = args.cu_seqlens_q[b];
  const int seqlen_q = args.cu_seqlens_q[b + 1] - q_start;
  const int k_start = args.cu_seqlens_k[b];
  const int seqlen_k = args.cu_seqlens_k[b + 1] - k_start;
  const int diag = seqlen_k - seqlen_q;  // causal: query i sees key j iff j <= i + diag
  const int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
  const int64_t lse_start = q_start + int64_t{kLsePad} * b;

  float scale_log2 = args.scale_log2, ds_alpha = 1.f;
  if (args.fp32_factors != nullptr) {
    scale_log2 *= args.fp32_factors[kFactorScaleLog2];
    ds_alpha = args.fp32_factors[kFactorDsAlpha];
  }

  const T* q = static_cast<const T*>(args.q);
  const T* k = static_cast<const T*>(args.k);
  const T* v = static_cast<const T*>(args.v);
  const T* dout = static_cast<const T*>(args.dout);
  const int64_t dq_row_stride = int64_t{args.heads_q} * kHeadDim;
  float* dq_accum = args.dq_accum + (kDeterministic ? blockIdx.x * args.dq_split_stride : 0);

  // Shared-memory tiles (byte addresses in the shared window).
  const uint32_t s_k = s_base + Tile::kOffK, s_v = s_base + Tile::kOffV;
  const uint32_t s_p = s_base + Tile::kOffP, s_ds = s_base + Tile::kOffDs;
  const float* s_lse = reinterpret_cast<const float*>(smem + Tile::kOffLse);
  const float* s_dsum = reinterpret_cast<const float*>(smem + Tile::kOffDsum);

  // Lane parts of the ldmatrix addresses (flash_bwd_smem.cuh), one per operand role.
  // S, dP: A = Q/dO rows of this warp's m range, B = K/V rows of its n range.
  const int wm_s = warp % Tile::kWarpsMS, wn_s = warp / Tile::kWarpsMS;
  const uint32_t off_s_a = lane_offset(wm_s * Tile::kTileMS + (lane & 15), lane >> 4, kRowD);
  const uint32_t off_s_b = lane_offset(wn_s * Tile::kTileNS + (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1, kRowD);
  // P, dS stores from the S accumulators: row g of each 8-row half, 2 elements at column 2t.
  const uint32_t off_p_st = lane_offset(wm_s * Tile::kTileMS + g, wn_s * kNiS, kRowN) + 4 * t;
  // dV, dK: A = P^T/dS^T (transposed loads of [m][n] tiles), B = dO/Q ([m][d], transposed loads).
  const int wn_kv = warp % Tile::kWarpsNKV, wd_kv = warp / Tile::kWarpsNKV;
  const uint32_t off_kv_a = lane_offset((lane & 7) + ((lane >> 4) << 3), 2 * wn_kv + ((lane >> 3) & 1), kRowN);
  const uint32_t off_kv_b = lane_offset((lane & 7) + (((lane >> 3) & 1) << 3), 2 * wd_kv + (lane >> 4), kRowD);
  // dQ: A = dS rows of this warp's m range, B = K ([n][d], transposed loads).
  const int wm_q = warp % Tile::kWarpsMQ, wd_q = warp / Tile::kWarpsMQ;
  const uint32_t off_q_a = lane_offset(wm_q * Tile::kTileMQ + (lane & 15), lane >> 4, kRowN);
  const uint32_t off_q_b = lane_offset((lane & 7) + (((lane >> 3) & 1) << 3), 2 * wd_q + (lane >> 4), kRowD);

  for (int n_block = n_first; n_block < n_blocks; n_block += n_stride) {
    const int n0 = n_block * kBlockN;
    // Query tiles that see any of keys n0 .. n0 + kBlockN - 1, all heads of the CTA, head-major;
    // this CTA's piece of them: tiles item_begin .. item_begin + item_count - 1.
    const int m_begin = args.causal ? max(0, n0 - diag) / kBlockM : 0;
    const int m_end = (seqlen_q + kBlockM - 1) / kBlockM;
    const int num_m = max(0, m_end - m_begin);
    const int items = num_m * (h_end - h_begin);
    const int item_begin = static_cast<int>(int64_t{items} * slice.piece / slice.pieces);
    const int item_count = static_cast<int>(int64_t{items} * (slice.piece + 1) / slice.pieces) - item_begin;

    // Tiles are tracked as (head, query tile) cursors, one for the next load and one for the tile
    // in use: no division per tile.
    int load_h = h_begin, load_mt = m_begin;
    if (item_begin > 0) load_h += item_begin / num_m, load_mt += item_begin % num_m;
    int use_h = load_h, use_mt = load_mt;
    auto advance = [&](int& h, int& mt) {
      if (++mt == m_end) mt = m_begin, ++h;
    };

    // Issues the loads of the tile under the load cursor into stage `stage` and advances it.
    auto issue_tile = [&](int stage) {
      const int h = load_h, m0 = load_mt * kBlockM;
      advance(load_h, load_mt);
      const int64_t row = q_start + m0;
      const int rows_valid = seqlen_q - m0;
      bwd_load_rows<Tile, kBlockM>(s_base + Tile::kOffQ + stage * Tile::kQBytes,
                                   q + row * args.q_row_stride + h * args.q_head_stride, args.q_row_stride,
                                   rows_valid, tid);
      bwd_load_rows<Tile, kBlockM>(s_base + Tile::kOffDo + stage * Tile::kQBytes,
                                   dout + row * args.do_row_stride + h * args.do_head_stride, args.do_row_stride,
                                   rows_valid, tid);
      // Threads 0 .. kBlockM - 1 copy lse, the next kBlockM D (their arrays are adjacent in smem).
      const int64_t lse_row = h * args.lse_head_stride + lse_start + m0;
      const bool is_lse = tid < kBlockM;
      const float* src = is_lse ? args.lse_log2 + lse_row + tid : args.dsum + lse_row + (tid - kBlockM);
      const int slot = is_lse ? stage * kBlockM + tid : (Tile::kStages + stage) * kBlockM + (tid - kBlockM);
      if (tid < 2 * kBlockM) cp_async_4(s_base + Tile::kOffLse + slot * 4, src);
    };

    __syncthreads();  // the previous key block (deterministic mode) is done with shared memory
    bwd_load_rows<Tile, kBlockN>(s_k, k + (k_start + n0) * args.k_row_stride + kv_head * args.k_head_stride,
                                 args.k_row_stride, seqlen_k - n0, tid);
    bwd_load_rows<Tile, kBlockN>(s_v, v + (k_start + n0) * args.v_row_stride + kv_head * args.v_head_stride,
                                 args.v_row_stride, seqlen_k - n0, tid);
    // Group g holds the piece's tile g (group 0 also K and V); tile i lives in stage i % kStages.
    // Every iteration commits one group (possibly empty) so that the group arithmetic stays uniform.
#pragma unroll
    for (int i = 0; i < Tile::kStages - 1; ++i) {
      if (i < item_count) issue_tile(i);
      cp_async_commit();
    }

    float acc_dv[kMiKV][2 * kNjKV][4], acc_dk[kMiKV][2 * kNjKV][4];
#pragma unroll
    for (int i = 0; i < kMiKV; ++i)
#pragma unroll
      for (int j = 0; j < 2 * kNjKV; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_dv[i][j][e] = acc_dk[i][j][e] = 0.f;

    for (int item = 0, stage = 0; item < item_count; ++item, stage = stage + 1 == Tile::kStages ? 0 : stage + 1) {
      const int h = use_h, m0 = use_mt * kBlockM;
      advance(use_h, use_mt);
      cp_async_wait<Tile::kStages - 2>();  // tile `item` has landed (only later ones in flight)
      __syncthreads();
      // The stage of tile item + kStages - 1 was last read by tile item - 1: free after the barrier.
      // (Issuing it after the S/dP products instead measured +-1% at d = 64, -3% at d = 128.)
      if (item + Tile::kStages - 1 < item_count) issue_tile(stage == 0 ? Tile::kStages - 1 : stage - 1);
      cp_async_commit();
      const uint32_t s_q = s_base + Tile::kOffQ + stage * Tile::kQBytes;
      const uint32_t s_do = s_base + Tile::kOffDo + stage * Tile::kQBytes;

      // Only tiles that cross the causal diagonal or the end of the keys need the mask. By default
      // the mask is a per-element compare and select that is a no-op elsewhere (last = a large
      // number); kMaskCopies compiles the softmax twice instead, the products with it in each copy
      // (one basic block, so that the exp2 of finished accumulators can issue among the last mma;
      // run 11, with a branch between them, lost ~3% on every non-fused path: bench/NOTES_BWD.md).
      const bool need_mask = (n0 + kBlockN > seqlen_k) || (args.causal && n0 + kBlockN - 1 > m0 + diag);
      // Built after the products (nothing extra live across their mma).
      auto softmax_rows = [&]() {
        const int col0 = n0 + wn_s * Tile::kTileNS + 2 * t;  // this lane's first key column
        const int first = stage * kBlockM + wm_s * Tile::kTileMS + g;
        return Tile::kMaskCopies || need_mask
                   ? SoftmaxRows{first, seqlen_k - 1 - col0, m0 + diag - col0 - stage * kBlockM, args.causal}
                   : SoftmaxRows{first, kBlockN, 0, false};
      };
      uint32_t p16[kMiS][kNiS][2];
      float acc_s[kMiS][kNiS][4], acc_dp[kMiS][kNiS][4];
      if constexpr (Tile::kFusedSdP) {
        // ---- S = Q K^T and dP = dO V^T in one k-loop, then P and dS in FP32 ----
        if (!Tile::kMaskCopies || need_mask) {
          warp_gemm_rows2<T, Tile, kMiS, kNiS>(acc_s, acc_dp, s_q, s_do, s_k, s_v, off_s_a, off_s_b);
          bwd_softmax<T, Tile, true, true>(acc_s, acc_dp, p16, smem, s_lse, s_dsum, off_p_st, softmax_rows(), scale_log2, ds_alpha);
        } else {
          warp_gemm_rows2<T, Tile, kMiS, kNiS>(acc_s, acc_dp, s_q, s_do, s_k, s_v, off_s_a, off_s_b);
          bwd_softmax<T, Tile, false, true>(acc_s, acc_dp, p16, smem, s_lse, s_dsum, off_p_st, softmax_rows(), scale_log2, ds_alpha);
        }
      } else {
        // ---- S = Q K^T (FP32 accumulators, this warp's kTileMS x kTileNS), then P ----
        // The rounded P (what dV = P^T dO uses too) stays in registers for dS: half the registers
        // of the FP32 scores while dP is computed.
        if (!Tile::kMaskCopies || need_mask) {
          warp_gemm_rows<T, Tile, kMiS, kNiS>(acc_s, s_q, s_k, off_s_a, off_s_b);
          bwd_softmax<T, Tile, true, false>(acc_s, acc_dp, p16, smem, s_lse, s_dsum, off_p_st, softmax_rows(), scale_log2, ds_alpha);
        } else {
          warp_gemm_rows<T, Tile, kMiS, kNiS>(acc_s, s_q, s_k, off_s_a, off_s_b);
          bwd_softmax<T, Tile, false, false>(acc_s, acc_dp, p16, smem, s_lse, s_dsum, off_p_st, softmax_rows(), scale_log2, ds_alpha);
        }

        // ---- dP = dO V^T, then dS = P o (dP - D) -> shared memory (16 bit) ----
        warp_gemm_rows<T, Tile, kMiS, kNiS>(acc_dp, s_do, s_v, off_s_a, off_s_b);
#pragma unroll
        for (int mi = 0; mi < kMiS; ++mi) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const float dsum = s_dsum[stage * kBlockM + wm_s * Tile::kTileMS + g + mi * 16 + hh * 8];
#pragma unroll
            for (int ni = 0; ni < kNiS; ++ni) {
              const float2 p = unpack2<T>(p16[mi][ni][hh]);
              const float ds0 = p.x * fmaf(acc_dp[mi][ni][2 * hh], ds_alpha, -dsum);
              const float ds1 = p.y * fmaf(acc_dp[mi][ni][2 * hh + 1], ds_alpha, -dsum);
              const uint32_t off = chunk_step(off_p_st, ni) + (mi * 16 + hh * 8) * kRowN;
              *reinterpret_cast<uint32_t*>(smem + Tile::kOffDs + off) = pack2<T>(ds0, ds1);
            }
          }
        }
      }
      __syncthreads();

      auto update_dkv = [&]() {
        // ---- dV += P^T dO, dK += dS^T Q (k = the tile's query rows) ----
#pragma unroll
        for (int ks = 0; ks < kBlockM / 16; ++ks) {
          uint32_t a_p[kMiKV][4], a_ds[kMiKV][4];
#pragma unroll
          for (int mi = 0; mi < kMiKV; ++mi) {
            const uint32_t off = chunk_step(off_kv_a, 2 * Tile::kWarpsNKV * mi) + ks * 16 * kRowN;
            ldmatrix_x4_trans(a_p[mi], s_p + off);
            ldmatrix_x4_trans(a_ds[mi], s_ds + off);
          }
#pragma unroll
          for (int nj = 0; nj < kNjKV; ++nj) {
            uint32_t b_do[4], b_q[4];
            const uint32_t off = chunk_step(off_kv_b, 2 * Tile::kWarpsDKV * nj) + ks * 16 * kRowD;
            ldmatrix_x4_trans(b_do, s_do + off);
            ldmatrix_x4_trans(b_q, s_q + off);
            const uint32_t bdo0[2] = {b_do[0], b_do[1]}, bdo1[2] = {b_do[2], b_do[3]};
            const uint32_t bq0[2] = {b_q[0], b_q[1]}, bq1[2] = {b_q[2], b_q[3]};
#pragma unroll
            for (int mi = 0; mi < kMiKV; ++mi) {
              mma_m16n8k16<T>(acc_dv[mi][2 * nj], a_p[mi], bdo0);
              mma_m16n8k16<T>(acc_dv[mi][2 * nj + 1], a_p[mi], bdo1);
              mma_m16n8k16<T>(acc_dk[mi][2 * nj], a_ds[mi], bq0);
              mma_m16n8k16<T>(acc_dk[mi][2 * nj + 1], a_ds[mi], bq1);
            }
          }
        }
      };
      auto update_dq = [&]() {
        // ---- dQ = dS K (k = the block's keys), into the FP32 workspace ----
        // In kDqPasses passes over column blocks (d = 256: the whole dQ tile would not fit the
        // registers next to dK and dV).
        float* dq_tile = dq_accum + (q_start + m0) * dq_row_stride + h * kHeadDim;
#pragma unroll
        for (int pass = 0; pass < Tile::kDqPasses; ++pass) {
          constexpr int kNj = kNjQ / Tile::kDqPasses;
          // Element pair (mi, hh, nj, s) of this lane: row r, columns col, col + 1.
          auto row_of = [&](int mi, int hh) { return wm_q * Tile::kTileMQ + mi * 16 + hh * 8 + g; };
          auto pair_at = [&](int mi, int hh, int nj, int s) {
            return dq_tile + row_of(mi, hh) * dq_row_stride + 2 * t + 16 * (wd_q + Tile::kWarpsDQ * (pass * kNj + nj)) +
                   8 * s;
          };
          // Deterministic: this CTA's own slice, always touched by this same thread, updated with
          // plain loads and stores. The loads go out before the mma so that their latency hides
          // under it (one round trip per tile instead of one per element pair).
          float2 old[kDeterministic ? kMiQ : 1][2][kDeterministic ? kNj : 1][2];
          if constexpr (kDeterministic) {
#pragma unroll
            for (int mi = 0; mi < kMiQ; ++mi)
#pragma unroll
              for (int hh = 0; hh < 2; ++hh)
#pragma unroll
                for (int nj = 0; nj < kNj; ++nj)
#pragma unroll
                  for (int s = 0; s < 2; ++s)
                    old[mi][hh][nj][s] = row_of(mi, hh) < seqlen_q - m0
                                             ? __ldcg(reinterpret_cast<const float2*>(pair_at(mi, hh, nj, s)))
                                             : make_float2(0.f, 0.f);
          }
          float acc_dq[kMiQ][2 * kNj][4];
#pragma unroll
          for (int i = 0; i < kMiQ; ++i)
#pragma unroll
            for (int j = 0; j < 2 * kNj; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc_dq[i][j][e] = 0.f;
#pragma unroll
          for (int ks = 0; ks < kBlockN / 16; ++ks) {
            uint32_t a_ds[kMiQ][4];
#pragma unroll
            for (int mi = 0; mi < kMiQ; ++mi) ldmatrix_x4(a_ds[mi], s_ds + chunk_step(off_q_a, 2 * ks) + mi * 16 * kRowN);
#pragma unroll
            for (int nj = 0; nj < kNj; ++nj) {
              uint32_t b_k[4];
              const int c = 2 * Tile::kWarpsDQ * (pass * kNj + nj);
              ldmatrix_x4_trans(b_k, s_k + chunk_step(off_q_b, c) + ks * 16 * kRowD);
              const uint32_t bk0[2] = {b_k[0], b_k[1]}, bk1[2] = {b_k[2], b_k[3]};
#pragma unroll
              for (int mi = 0; mi < kMiQ; ++mi) {
                mma_m16n8k16<T>(acc_dq[mi][2 * nj], a_ds[mi], bk0);
                mma_m16n8k16<T>(acc_dq[mi][2 * nj + 1], a_ds[mi], bk1);
              }
            }
          }
#pragma unroll
          for (int mi = 0; mi < kMiQ; ++mi) {
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              if (row_of(mi, hh) >= seqlen_q - m0) continue;
#pragma unroll
              for (int nj = 0; nj < kNj; ++nj) {
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                  float* p = pair_at(mi, hh, nj, s);
                  const float x0 = acc_dq[mi][2 * nj + s][2 * hh], x1 = acc_dq[mi][2 * nj + s][2 * hh + 1];
                  if constexpr (kDeterministic) {
                    const float2 o = old[mi][hh][nj][s];
                    __stcg(reinterpret_cast<float2*>(p), make_float2(o.x + x0, o.y + x1));
                  } else {
                    red_add_f32x2(p, x0, x1);
                  }
                }
              }
            }
          }
        }
      };
      // dV/dK first: issuing the dQ reductions first was measured 4-5% slower, FlashAttention-2's
      // dV, dQ, dK order 1.4% slower at d = 64 (bench/NOTES_BWD.md).
      update_dkv();
      update_dq();
    }
    cp_async_wait<0>();  // nothing in flight when the block ends (items == 0 leaves K, V pending)

    // A piece of a split unit: only the CTA that completes the unit goes on, with the sums (the
    // flag lives in the lse slots: every thread is past its tile loop when it is written).
    if constexpr (!kDeterministic) {
      if (blockIdx.x >= args.full_ctas) {
        const TailPiece sl = tail_piece(args);  // recomputed: nothing stays live across the loop
        float* partial = args.tail_partial + int64_t{sl.tail_unit} * sl.pieces * 2 * kBlockN * kHeadDim;
        if (!bwd_tail_combine<Tile::kThreads>(acc_dk, acc_dv, partial, args.tail_arrivals + sl.tail_unit, sl.piece,
                                              sl.pieces, tid, reinterpret_cast<volatile int*>(smem + Tile::kOffLse)))
          continue;
      }
    }

    // ---- Epilogue: dK (times the softmax scale) and dV of keys n0 .. ----
    float dk_scale = args.dk_scale, dv_scale = args.dv_scale;
    if (args.fp32_factors != nullptr) {
      dk_scale *= args.fp32_factors[kFactorDk];
      dv_scale *= args.fp32_factors[kFactorDv];
    }
#pragma unroll
    for (int mi = 0; mi < kMiKV; ++mi) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = 16 * (wn_kv + Tile::kWarpsNKV * mi) + 8 * hh + g;
        if (r >= seqlen_k - n0) continue;
        const int64_t row = k_start + n0 + r;
#pragma unroll
        for (int nj = 0; nj < kNjKV; ++nj) {
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            const int col = 16 * (wd_kv + Tile::kWarpsDKV * nj) + 8 * s + 2 * t;
            const float k0 = acc_dk[mi][2 * nj + s][2 * hh] * dk_scale, k1 = acc_dk[mi][2 * nj + s][2 * hh + 1] * dk_scale;
            const float v0 = acc_dv[mi][2 * nj + s][2 * hh] * dv_scale, v1 = acc_dv[mi][2 * nj + s][2 * hh + 1] * dv_scale;
            if (args.kv_partial) {
              const int64_t off = head_split * args.kv_split_stride + (row * args.heads_kv + kv_head) * kHeadDim + col;
              *reinterpret_cast<float2*>(args.dk_partial + off) = make_float2(k0, k1);
              *reinterpret_cast<float2*>(args.dv_partial + off) = make_float2(v0, v1);
            } else {
              T* dk = static_cast<T*>(args.dk) + row * args.dk_row_stride + kv_head * args.dk_head_stride + col;
              T* dv = static_cast<T*>(args.dv) + row * args.dv_row_stride + kv_head * args.dv_head_stride + col;
              *reinterpret_cast<uint32_t*>(dk) = pack2<T>(k0, k1);
              *reinterpret_cast<uint32_t*>(dv) = pack2<T>(v0, v1);
            }
          }
        }
      }
    }
  }
}

}  // namespace attnd::kernels::bwd
