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
inline constexpr int kScheduleDqFirst = 2;   // dQ before dV/dK (its reductions drain under dV/dK)

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarpsMS_, int kWarpsNKV_, int kWarpsMQ_, int kDqPasses_ = 1,
          int kSchedule_ = 0>
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
  static constexpr bool kDqFirst = (kSchedule_ & kScheduleDqFirst) != 0;

  // Shared memory: rows of head_dim (Q, dO, K, V) and rows of kBlockN (P, dS), both swizzled.
  using RowsD = detail::SwizzledRows<kHeadDim>;
  using RowsN = detail::SwizzledRows<kBlockN>;
  static constexpr int kQBytes = kBlockM * RowsD::kRowBytes;  // one stage of Q (or dO)
  static constexpr int kKBytes = kBlockN * RowsD::kRowBytes;
  static constexpr int kPBytes = kBlockM * RowsN::kRowBytes;
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKBytes;
  static constexpr int kOffQ = kOffV + kKBytes;   // 2 stages
  static constexpr int kOffDo = kOffQ + 2 * kQBytes;  // 2 stages
  static constexpr int kOffP = kOffDo + 2 * kQBytes;
  static constexpr int kOffDs = kOffP + kPBytes;
  static constexpr int kOffLse = kOffDs + kPBytes;    // 2 stages of kBlockM floats
  static constexpr int kOffDsum = kOffLse + 2 * kBlockM * 4;
  static constexpr int kSmemBytes = kOffDsum + 2 * kBlockM * 4;

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
};

// The tuned choice per head dim (the benchmark can instantiate others).
template <int kHeadDim>
struct DefaultBwdTile;
template <> struct DefaultBwdTile<32> { using type = BwdTile<32, 64, 128, 2, 4, 4>; };
template <> struct DefaultBwdTile<64> { using type = BwdTile<64, 64, 128, 2, 4, 2>; };
template <> struct DefaultBwdTile<96> { using type = BwdTile<96, 64, 128, 2, 4, 4>; };
template <> struct DefaultBwdTile<128> { using type = BwdTile<128, 64, 128, 2, 4, 2>; };
template <> struct DefaultBwdTile<256> { using type = BwdTile<256, 64, 64, 2, 4, 2, 2>; };

// Candidates the benchmark compares with the default (selected with ATTND_BWD_TILE=alt, see
// flash_bwd_launch.cuh); equal to the default where no candidate is being tried.
template <int kHeadDim>
struct AltBwdTile {
  using type = typename DefaultBwdTile<kHeadDim>::type;
};
// d = 64: 128 query rows per tile, as FlashAttention-2 does: half the barriers and P/dS round
// trips per FLOP, S/dP warp tiles of 64 x 32 (0.047 instead of 0.0625 shared-memory bytes per FLOP).
template <> struct AltBwdTile<64> { using type = BwdTile<64, 128, 128, 2, 4, 4>; };
template <> struct AltBwdTile<128> { using type = BwdTile<128, 64, 128, 2, 4, 2, 1, kScheduleDqFirst>; };
// A second candidate (ATTND_BWD_TILE=alt2).
template <int kHeadDim>
struct Alt2BwdTile {
  using type = typename DefaultBwdTile<kHeadDim>::type;
};
template <> struct Alt2BwdTile<64> { using type = BwdTile<64, 128, 128, 2, 4, 4, 1, kScheduleDqFirst>; };
template <> struct Alt2BwdTile<128> {
  using type = BwdTile<128, 64, 128, 2, 4, 2, 1, kScheduleFusedSdP | kScheduleDqFirst>;
};

}  // namespace attnd::kernels::bwd
