// Shared-memory helpers of the backward kernel, on top of the swizzled layout of
// common/smem_swizzle.cuh (chunk c of row r at r * kRowBytes + ((c ^ (r % 8)) << 4)).
//
// Every ldmatrix/store address of the kernel is "a lane part" + "a compile-time part": the lane
// part fixes a row and a chunk (lane and warp dependent), the compile-time part moves by whole
// 16-row blocks (a constant) and by chunks c whose low 3 bits do not overlap the lane chunk's low 3
// bits (the warp layouts of flash_bwd_tile.cuh guarantee it). Then chunk (lane + c) sits at
//     (lane_offset ^ ((c % 8) << 4)) + (c / 8) * 128,
// one LOP3 and an immediate per access, no per-access swizzle arithmetic.
#pragma once

#include <cstdint>

namespace attnd::kernels::bwd {

// Byte offset of chunk `chunk` (any value) of row `row` in a swizzled tile of row_bytes-wide rows.
__device__ __forceinline__ uint32_t lane_offset(int row, int chunk, int row_bytes) {
  return static_cast<uint32_t>(row * row_bytes + ((chunk & ~7) << 4) + (((chunk ^ row) & 7) << 4));
}

// Moves a lane_offset() by c chunks (c's low 3 bits disjoint from the lane chunk's).
__device__ __forceinline__ uint32_t chunk_step(uint32_t offset, int c) {
  return (offset ^ static_cast<uint32_t>((c & 7) << 4)) + static_cast<uint32_t>((c >> 3) << 7);
}

}  // namespace attnd::kernels::bwd
