// Small memory instructions the tensor-core primitives do not cover: 4-byte cp.async (per-row
// scalars such as a logsumexp) and vector FP32 reductions into global memory (accumulating a tile
// of partial sums from many CTAs).
#pragma once

#include <cstdint>

namespace attnd::kernels::detail {

// 4-byte asynchronous copy global -> shared (.ca: the only cache mode below 16 bytes). Completes
// with the same commit/wait groups as cp_async_16 (cp_async.cuh).
__device__ __forceinline__ void cp_async_4(uint32_t smem_dst, const void* gmem_src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_dst), "l"(gmem_src) : "memory");
}

// *p += a, *(p + 1) += b as one relaxed GPU-scope reduction (red.global.add.v2.f32 on sm_90+, two
// scalar atomics before). p must be 8-byte aligned. The result does not come back: no round trip.
__device__ __forceinline__ void red_add_f32x2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

}  // namespace attnd::kernels::detail
