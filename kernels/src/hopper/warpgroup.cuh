// Warpgroup-level machinery of sm_90a: wgmma shared-memory descriptors, the fence / commit / wait
// protocol around the asynchronous matrix instructions (wgmma_ops.cuh), and register
// reallocation between warpgroups (setmaxnreg).
//
// Shared-memory tiles use the 128-byte swizzle that TMA writes (CU_TENSOR_MAP_SWIZZLE_128B): a
// tile of R rows x 64 16-bit elements is R rows of 128 bytes, the 16-byte chunk c of row r stored
// at chunk c ^ (r % 8), the pattern repeating every 1024 bytes (8 rows). A head dim of 128 is two
// such column blocks, one after the other ("[d/64][R][64]").
//
// Descriptor (PTX ISA, "matrix descriptor"): bits 0-13 start address >> 4, 16-29 leading
// byte offset >> 4, 32-45 stride byte offset >> 4, 49-51 base offset (0: tiles 1024-aligned),
// 62-63 swizzle (1 = 128B). For the layouts used here:
//   K-major operand (Q for S = Q K^T as A, K as B): rows are M (or N), 64-element K blocks. SBO =
//     1024 (from one 8-row group to the next); LBO unused with swizzling. The k-slice kk (16
//     elements = 32 bytes) of a column block starts 32*kk bytes into it: the hardware applies the
//     swizzle to the final address, so advancing the start address inside the 128-byte row is
//     exact as long as the tile itself is 1024-aligned.
//   MN-major operand (V[key][d] as B of O += P V, imm-trans-b = 1): 64-element N blocks of R key
//     rows. LBO = R * 128 (from one 64-wide d block to the next), SBO = 1024 (from one group of 8
//     keys to the next); the k-slice of keys 16*kk.. starts 16*kk*128 bytes in.
#pragma once

#include <cstdint>

namespace attnd::kernels::detail::hopper {

__device__ __forceinline__ uint64_t smem_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | (uint64_t(lbo_bytes >> 4) << 16) | (uint64_t(sbo_bytes >> 4) << 32) |
         (uint64_t(1) << 62);
}

// A descriptor moved by `bytes` (a multiple of 16) along its tile: only the start-address field
// changes, and it cannot carry out of its 14 bits for shared-memory addresses below 256 KB.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Orders earlier register accesses of the warpgroup before the next wgmma (required before the
// first wgmma, and after accumulator or A-fragment registers were touched by other instructions).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

// Closes the group of wgmma issued since the last commit.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Waits until at most kPending committed groups of this warpgroup are still running.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accesses of accumulator registers across the asynchronous region
// (it cannot see that a wgmma in flight still writes them).
template <int N>
__device__ __forceinline__ void fence_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

template <int N>
__device__ __forceinline__ void fence_registers(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// Register reallocation: the producer warpgroup gives registers back, the consumers take them.
// Takes effect only under a register cap at kernel entry (__launch_bounds__(threads, 1)).
template <int kRegs>
__device__ __forceinline__ void warpgroup_reg_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <int kRegs>
__device__ __forceinline__ void warpgroup_reg_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace attnd::kernels::detail::hopper
