// Tensor-core matrix multiply-accumulate: mma.sync.aligned.m16n8k16.row.col, 16-bit inputs, FP32
// accumulators. Works on sm_80 and later (on sm_90 it runs on the same tensor cores as wgmma, at
// a lower rate, but needs no warpgroup or descriptor machinery).
//
// Fragment layouts (one warp; g = lane / 4, t = lane % 4), as the PTX ISA defines them:
//   A (16x16, row major), 4 x .b32, each holding two consecutive-column elements:
//       a[0]: row g,   cols 2t..2t+1      a[1]: row g+8, cols 2t..2t+1
//       a[2]: row g,   cols 2t+8..2t+9    a[3]: row g+8, cols 2t+8..2t+9
//   B (16x8, "col": B[k][n] stored n-major), 2 x .b32:
//       b[0]: k 2t..2t+1,  col n=g        b[1]: k 2t+8..2t+9, col n=g
//   C/D (16x8 FP32), 4 floats:
//       c[0..1]: row g, cols 2t..2t+1     c[2..3]: row g+8, cols 2t..2t+1
// ldmatrix (ldmatrix.cuh) produces exactly these layouts from shared memory, and the C layout of
// two adjacent n-tiles is the A layout of one k-slice, so P = softmax(S) feeds the next mma
// straight from registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace attnd::kernels::detail {

// D = A * B + D for one 16x8x16 tile. T is __nv_bfloat16 or __half (the element type packed in a/b).
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                            const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace attnd::kernels::detail
