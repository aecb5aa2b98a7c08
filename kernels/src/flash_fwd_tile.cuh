// Tile shapes of the forward kernel, one per head dim, and the shared-memory budget they imply.
//
// A CTA of kWarps warps owns kBlockM = kWarps * kMTiles * 16 query rows (each warp kMTiles
// consecutive 16-row mma tiles) and walks the key/value sequence in tiles of kBlockN rows, K and V
// double-buffered in shared memory (kStages = 2). Why these numbers (H100, mma.sync):
// - 32 query rows per warp (kMTiles = 2) halves the shared-memory traffic per mma compared with
//   16: every K/V fragment loaded by ldmatrix feeds two mma instead of one, and at 16 rows the
//   128 B/clk of shared memory per SM, not the tensor cores, would bound the kernel.
// - The registers that remain bound kBlockN: O (kMTiles*16 x d FP32) + S (kMTiles*16 x kBlockN
//   FP32) per warp must fit 255 registers per thread with 2 CTAs per SM.
// - d = 256 cannot hold 32 rows of O per warp, so it takes 16 rows per warp and a narrow K tile.
#pragma once

#include "common/smem_swizzle.cuh"

namespace attnd::kernels::detail {

template <int kHeadDim_, int kWarps_, int kMTiles_, int kBlockN_, int kMinBlocksPerSm_>
struct FwdTile {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kMTiles_;  // 16-row mma tiles per warp
  static constexpr int kWarpRows = kMTiles * 16;
  static constexpr int kBlockM = kWarps * kWarpRows;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = 2;  // K/V ring depth
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;

  using Smem = SwizzledRows<kHeadDim>;
  static constexpr int kQBytes = kBlockM * Smem::kRowBytes;
  static constexpr int kKVTileBytes = kBlockN * Smem::kRowBytes;
  static constexpr int kSmemBytes = kQBytes + 2 * kStages * kKVTileBytes;

  static_assert(kBlockN % 16 == 0 && kHeadDim % 16 == 0, "mma k-slices are 16 wide");
};

// The tuned choice per head dim (launch_flash_fwd takes any other FwdTile, for experiments).
template <int kHeadDim>
struct DefaultFwdTile;
template <> struct DefaultFwdTile<32> { using type = FwdTile<32, 4, 2, 128, 2>; };
template <> struct DefaultFwdTile<64> { using type = FwdTile<64, 4, 2, 128, 2>; };
template <> struct DefaultFwdTile<96> { using type = FwdTile<96, 4, 2, 64, 2>; };
template <> struct DefaultFwdTile<128> { using type = FwdTile<128, 4, 2, 64, 2>; };
template <> struct DefaultFwdTile<256> { using type = FwdTile<256, 4, 1, 32, 2>; };

}  // namespace attnd::kernels::detail
