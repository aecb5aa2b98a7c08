// The 16-bit element types the kernels compute in, and packing FP32 pairs into the .b32 registers
// that mma and 4-byte stores take. cvt.rn.{bf16x2,f16x2}.f32 rounds to nearest even in one
// instruction on sm_80+.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace attnd::kernels::detail {

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Flips the sign of both 16-bit values packed in x (exact for bf16 and fp16).
__device__ __forceinline__ uint32_t negate2(uint32_t x) { return x ^ 0x80008000u; }

}  // namespace attnd::kernels::detail
