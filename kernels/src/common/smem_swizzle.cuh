// Bank-conflict-free shared-memory layout for tiles of 16-bit elements, rows of head_dim values.
//
// A row is stored as kRowChunks 16-byte chunks (8 elements each). ldmatrix reads the same chunk
// column of 8 consecutive rows in one phase; with plain row-major rows of 128 or 256 bytes those
// 8 chunks sit in the same 4 banks (8-way conflict). XOR-ing the low 3 bits of the chunk index
// with (row % 8) puts them in 8 different 16-byte bank groups. cp.async writes whole chunks, so
// the writes are conflict-free too.
//
// kRowChunks is a power of two >= 8 (head_dim 32 and 96 are padded to 8 and 16 chunks: a little
// shared memory for one layout that is conflict-free for every head dim).
//
// Because the XOR touches only byte-address bits 4..6, and every row starts at a multiple of
// 128 bytes, the address of (row, chunk c) for a compile-time c is
//     (row_base(row) ^ ((c % 8) << 4)) + (c / 8) * 128          (at() below)
// where row_base(row) already contains the lane's own XOR pattern: one LOP3 per ldmatrix, with the
// +128-byte steps folded into the instruction's immediate offset.
#pragma once

#include <cstdint>

namespace attnd::kernels::detail {

template <int kHeadDim>
struct SwizzledRows {
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks holding data
  static constexpr int kRowChunks = kChunks <= 8 ? 8 : (kChunks <= 16 ? 16 : 32);
  static constexpr int kRowBytes = kRowChunks * 16;
  static_assert(kHeadDim % 8 == 0 && kChunks <= 32, "head_dim must be a multiple of 8, at most 256");

  // Byte offset of chunk `chunk` of row `row` (any runtime values).
  __device__ __forceinline__ static uint32_t offset(int row, int chunk) {
    return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
  }

  // Per-lane part of an ldmatrix address: row `row`, lane-dependent chunk bits `lane_chunk` (0..7).
  // at(base, c) then gives the offset of chunk (c ^ lane_chunk), which is c + lane_chunk whenever the
  // bits of c and lane_chunk do not overlap (the usual case: c even, lane_chunk 0 or 1).
  __device__ __forceinline__ static uint32_t row_base(int row, int lane_chunk) {
    return static_cast<uint32_t>(row * kRowBytes + (((lane_chunk ^ row) & 7) << 4));
  }

  // Address of chunk (c ^ lane's chunk bits folded into base) from a row_base() value plus a tile
  // base address that is a multiple of 128 bytes. c is meant to be a compile-time constant (an
  // unrolled loop index): the XOR and the add then fold into one LOP3 and an immediate offset.
  __device__ __forceinline__ static uint32_t at(uint32_t base, int c) {
    return (base ^ static_cast<uint32_t>((c & 7) << 4)) + static_cast<uint32_t>((c >> 3) * 128);
  }
};

}  // namespace attnd::kernels::detail
