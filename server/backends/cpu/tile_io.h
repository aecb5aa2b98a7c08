// Moving tiles between the request's buffers (BF16/FP16/FP32, strided rows of the packed layout)
// and dense float tiles, converting once per tile. Conversions are those of server/core/float16.h
// (round to nearest even), the same the test oracle's inputs are rounded with.
#pragma once

#include <cstdint>

#include "server/backends/cpu/cpu_isa.h"
#include "server/core/attention_problem.h"
#include "server/core/float16.h"

namespace attnd::cpu {

// The address of element `index` of a buffer of `dtype`.
ATTND_ALWAYS_INLINE const void* ElementAt(const void* base, DType dtype, int64_t index) {
  return static_cast<const char*>(base) + index * static_cast<int64_t>(ElementSize(dtype));
}
ATTND_ALWAYS_INLINE void* ElementAt(void* base, DType dtype, int64_t index) {
  return static_cast<char*>(base) + index * static_cast<int64_t>(ElementSize(dtype));
}

// Fp16ToFloat of float16.h without branches, so that whole rows convert in vector registers
// (the branchy original kept FP16 calls twice as slow as BF16). Bit-identical to Fp16ToFloat for
// all 65536 inputs (tests/server/backends checks every one). Subnormals go through an exact
// int -> float conversion, never through denormal arithmetic, so DAZ/FTZ modes cannot change it.
ATTND_ALWAYS_INLINE float Fp16ToFloatBranchless(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  const uint32_t normal = sign | ((exp + 112u) << 23) | (man << 13);
  const uint32_t special = sign | 0x7f800000u | (man << 13);               // inf, NaN
  const uint32_t small = sign | FloatBits(static_cast<float>(static_cast<int32_t>(man)) *
                                          5.9604644775390625e-8f);       // man * 2^-24, exact
  // Select with integer masks: a ?: here becomes a branch (the compiler will not speculate the
  // float multiply under -ftrapping-math) and the loop would stay scalar.
  const uint32_t is_small = 0u - static_cast<uint32_t>(exp == 0);
  const uint32_t is_special = 0u - static_cast<uint32_t>(exp == 0x1fu);
  return BitsFloat((small & is_small) | (special & is_special) | (normal & ~(is_small | is_special)));
}

template <typename Convert, typename T>
ATTND_ALWAYS_INLINE void ConvertRow(const T* __restrict src, int cols, float* __restrict dst,
                                    Convert convert) {
  for (int c = 0; c < cols; ++c) dst[c] = convert(src[c]);
}

// dst[r * ld + c] = src[r * stride + c] for r < rows, c < cols; columns cols..cols_pad become 0.
ATTND_ALWAYS_INLINE void LoadRows(DType dtype, const void* src, int64_t stride, int rows, int cols,
                                  int cols_pad, float* __restrict dst, int ld) {
  for (int r = 0; r < rows; ++r) {
    float* __restrict out = dst + r * ld;
    switch (dtype) {
      case DType::kBF16:
        ConvertRow(static_cast<const uint16_t*>(src) + r * stride, cols, out, Bf16ToFloat);
        break;
      case DType::kFP16:
        ConvertRow(static_cast<const uint16_t*>(src) + r * stride, cols, out, Fp16ToFloatBranchless);
        break;
      case DType::kFP32:
        ConvertRow(static_cast<const float*>(src) + r * stride, cols, out, [](float x) { return x; });
        break;
    }
    for (int c = cols; c < cols_pad; ++c) out[c] = 0.f;
  }
}

// The transpose of LoadRows: dst[c * ld + r] = src[r * stride + c]; rows..rows_pad become 0.
// Keys are loaded this way so that the scores S = Q K^T stream contiguous rows of K^T.
ATTND_ALWAYS_INLINE void LoadRowsTransposed(DType dtype, const void* src, int64_t stride, int rows,
                                            int cols, int rows_pad, float* __restrict dst, int ld,
                                            float* __restrict row_buffer) {
  for (int r = 0; r < rows; ++r) {
    LoadRows(dtype, ElementAt(src, dtype, r * stride), 0, 1, cols, cols, row_buffer, 0);
    for (int c = 0; c < cols; ++c) dst[c * ld + r] = row_buffer[c];
  }
  for (int c = 0; c < cols; ++c) {
    for (int r = rows; r < rows_pad; ++r) dst[c * ld + r] = 0.f;
  }
}

// dst[c] = src[c] in `dtype`, c < cols.
ATTND_ALWAYS_INLINE void StoreRow(DType dtype, const float* __restrict src, int cols, void* dst) {
  switch (dtype) {
    case DType::kBF16: {
      uint16_t* __restrict out = static_cast<uint16_t*>(dst);
      for (int c = 0; c < cols; ++c) out[c] = FloatToBf16(src[c]);
      break;
    }
    case DType::kFP16: {
      uint16_t* __restrict out = static_cast<uint16_t*>(dst);
      for (int c = 0; c < cols; ++c) out[c] = FloatToFp16(src[c]);
      break;
    }
    case DType::kFP32: {
      float* __restrict out = static_cast<float*>(dst);
      for (int c = 0; c < cols; ++c) out[c] = src[c];
      break;
    }
  }
}

}  // namespace attnd::cpu
