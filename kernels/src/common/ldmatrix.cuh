// ldmatrix: a warp loads 8x8 tiles of 16-bit elements from shared memory straight into mma
// fragment layout (mma.cuh). Each lane passes the shared-memory address of ONE 16-byte row:
// lanes 0-7 address the 8 rows of matrix 0, lanes 8-15 matrix 1, 16-23 matrix 2, 24-31 matrix 3.
// Register i receives matrix i, lane l holding row l/4, elements 2(l%4) and 2(l%4)+1.
// With .trans, register i holds the transposed matrix instead (lane l: column l/4, rows 2(l%4)..+1),
// which turns a row-major [k][n] tile (V in P*V) into the "col" B operand.
//
// Addresses are 32-bit shared-state-space addresses (smem_addr() below), so that the swizzle
// arithmetic of smem_swizzle.cuh stays in 32-bit integer ops.
#pragma once

#include <cstdint>

namespace attnd::kernels::detail {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// x2: only lanes 0-15 supply addresses (matrices 0 and 1); the others' addresses are ignored.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

}  // namespace attnd::kernels::detail
