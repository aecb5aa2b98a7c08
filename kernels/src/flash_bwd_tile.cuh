// Tile shapes of the backward kernel and how its 8 warps split each of the five products.
//
// A CTA owns kBlockN keys (K, V and the dK, dV accumulators stay on chip for the whole CTA) and
// walks the query sequence in tiles of kBlockM rows. Per query tile:
//   S, dP   [kBlockM x kBlockN]: kWarpsMS x (8 / kWarpsMS) warps, contiguous warp tiles
//   dV, dK  [kBlockN x d]      : kWarpsNKV warps along keys x the rest along d
//   dQ      [kBlockM x d]      : kWarpsMQ warps along queries x the rest along d
// Along keys (dV/dK) and along d (dV/dK, dQ) a warp takes 16-wide blocks interleaved with the other
// warps (block w, w + W, w + 2W, ...), so that the lane's part of every ldmatrix address is fixed
// and the per-block steps are compile-time XOR/add immediates (see flash_bwd_smem.cuh).
//
// Why these numbers (H100, mma.sync, 255 registers per thread, one CTA of 8 warps per SM):
// - Registers: dK + dV take 2 * kBlockN * d / 256 FP32 per thread (128 at d = 128, kBlockN = 128),
//   S + dP 2 * kBlockM * kBlockN / 256 (64 at kBlockM = 64). That leaves ~60 for fragments and
//   addresses; a larger kBlockM at d = 128 would spill.
// - Shared memory traffic per mma: warp tiles of 32 x 32 (S, dP, dQ) and 32 x 64 (dV, dK) read
//   (32 + 32) and (32 + 64) rows of 32 bytes per k-slice, about 0.06 bytes per FLOP, which
//   at 128 B/clk/SM stays above the mma.sync rate.
// - Shared memory: K, V (kBlockN rows), Q, dO double-buffered (kBlockM rows each), P and dS
//   (kBlockM x kBlockN), lse and D: 160 KB at d = 128, under the 227 KB limit.
#pragma once

#include "common/smem_swizzle.cuh"

namespace attnd::kernels::bwd {

// Schedule options of the tile loop (kSchedule bits).
inline constexpr int kScheduleFusedSdP = 1;  // S and dP in one k-loop (more ILP, more registers)
inline constexpr int kScheduleMaskCopies = 2; // softmax compiled with and without the mask

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarpsMS_, int kWarpsNKV_, int kWarpsMQ_, int kDqPasses_ = 1,
          int kSchedule_ = 0, int kStages_ = 2>
struct BwdTile {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;

  // S and dP.
  static constexpr int kWarpsMS = kWarpsMS_;
  static constexpr int kWarpsNS = kWarps / kWarpsMS;
  static constexpr int kTileMS = kBlockM / kWarpsMS;
  static constexpr int kTileNS = kBlockN / kWarpsNS;
  static constexpr int kMiS = kTileMS / 16;  // 16-row mma tiles per warp
  static constexpr int kNiS = kTileNS / 8;   // 8-column mma tiles per warp

  // dV and dK.
  static constexpr int kWarpsNKV = kWarpsNKV_;
  static constexpr int kWarpsDKV = kWarps / kWarpsNKV;
  static constexpr int kMiKV = kBlockN / 16 / kWarpsNKV;   // 16-key blocks per warp
  static constexpr int kNjKV = kHeadDim / 16 / kWarpsDKV;  // 16-column blocks per warp

  // dQ.
  static constexpr int kWarpsMQ = kWarpsMQ_;
  static constexpr int kWarpsDQ = kWarps / kWarpsMQ;
  static constexpr int kTileMQ = kBlockM / kWarpsMQ;
  static constexpr int kMiQ = kTileMQ / 16;
  static constexpr int kNjQ = kHeadDim / 16 / kWarpsDQ;
  static constexpr int kDqPasses = kDqPasses_;  // dQ computed in this many column slices
  static constexpr bool kFusedSdP = (kSchedule_ & kScheduleFusedSdP) != 0;
  static constexpr bool kMaskCopies = (kSchedule_ & kScheduleMaskCopies) != 0;

  // Shared memory: rows of head_dim (Q, dO, K, V) and rows of kBlockN (P, dS), both swizzled.
  using RowsD = detail::SwizzledRows<kHeadDim>;
  using RowsN = detail::SwizzledRows<kBlockN>;
  static constexpr int kQBytes = kBlockM * RowsD::kRowBytes;  // one stage of Q (or dO)
  static constexpr int kKBytes = kBlockN * RowsD::kRowBytes;
  static constexpr int kPBytes = kBlockM * RowsN::kRowBytes;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKBytes;
  static constexpr int kStages = kStages_;  // query tiles (Q, dO, lse, D) in flight or in use
  static constexpr int kOffQ = kOffV + kKBytes;
  static constexpr int kOffDo = kOffQ + kStages * kQBytes;
  static constexpr int kOffP = kOffDo + kStages * kQBytes;
  static constexpr int kOffDs = kOffP + kPBytes;
  static constexpr int kOffLse = kOffDs + kPBytes;  // kStages x kBlockM floats
  static constexpr int kOffDsum = kOffLse + kStages * kBlockM * 4;
  static constexpr int kSmemBytes = kOffDsum + kStages * kBlockM * 4;

  static_assert(kWarps % kWarpsMS == 0 && kWarps % kWarpsNKV == 0 && kWarps % kWarpsMQ == 0, "warp split");
  static_assert(kMiS >= 1 && kTileMS % 16 == 0 && kNiS % 2 == 0, "S warp tile: 16-row, 16-column multiples");
  static_assert(kMiKV >= 1 && kMiKV * kWarpsNKV * 16 == kBlockN, "dV/dK key blocks split evenly");
  static_assert(kNjKV >= 1 && kNjKV * kWarpsDKV * 16 == kHeadDim, "dV/dK column blocks split evenly");
  static_assert(kMiQ >= 1 && kTileMQ % 16 == 0, "dQ warp tile: 16-row multiples");
  static_assert(kNjQ >= 1 && kNjQ * kWarpsDQ * 16 == kHeadDim, "dQ column blocks split evenly");
  static_assert(kNjQ % kDqPasses == 0, "dQ passes split the column blocks evenly");
  // The lane/compile-time split of ldmatrix addresses needs these warp counts to be powers of two
  // and the S warp's column tiles too (their chunk bits must not overlap).
  static_assert((kWarpsNKV & (kWarpsNKV - 1)) == 0 && (kWarpsDKV & (kWarpsDKV - 1)) == 0, "power of two");
  static_assert((kWarpsDQ & (kWarpsDQ - 1)) == 0 && (kNiS & (kNiS - 1)) == 0, "power of two");
  static_assert(2 * kBlockM <= kThreads, "one thread per lse/D value");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");
  static_assert(kStages >= 2, "at least double buffering");
};

// The tuned choice per head dim and causality (bench/NOTES_BWD.md has the measurements).
// - d = 64: 128 query rows per tile, as FlashAttention-2: half the barriers and P/dS round trips
//   per FLOP; +4-10% over 64 rows. S/dP warps 4 x 2 (32 x 64 warp tiles, also FlashAttention-2's
//   choice) with the softmax compiled with and without the mask (kScheduleMaskCopies: the only
//   build of 4 x 2 without spills in the tile loop): +6% non-causal, +5% causal over 2 x 4 with
//   the predicated mask, which now has 4 LDL per tile in bf16 (version 8, run 12).
// - d = 128 non-causal: S and dP in one k-loop (16 independent accumulators per k-slice instead
//   of 8: the kernel is latency bound with two warps per scheduler); +2.5-4%. Causal keeps the
//   two loops: with fewer tiles per CTA and masked diagonal tiles the fused loop measured 2-3%
//   slower at N <= 4096.
// - A third query-tile stage (kStages = 3) measured no gain; d = 32, 96, 256 are supported, not tuned.
template <int kHeadDim, bool kCausal>
struct DefaultBwdTile;
template <bool kCausal> struct DefaultBwdTile<32, kCausal> { using type = BwdTile<32, 64, 128, 2, 4, 4>; };
template <bool kCausal> struct DefaultBwdTile<64, kCausal> { using type = BwdTile<64, 128, 128, 4, 4, 4, 1, kScheduleMaskCopies>; };
template <bool kCausal> struct DefaultBwdTile<96, kCausal> { using type = BwdTile<96, 64, 128, 2, 4, 4>; };
template <> struct DefaultBwdTile<128, true> { using type = BwdTile<128, 64, 128, 2, 4, 2>; };
template <> struct DefaultBwdTile<128, false> { using type = BwdTile<128, 64, 128, 2, 4, 2, 1, kScheduleFusedSdP>; };
template <bool kCausal> struct DefaultBwdTile<256, kCausal> { using type = BwdTile<256, 64, 64, 2, 4, 2, 2>; };

}  // namespace attnd::kernels::bwd
