// cp.async: asynchronous 16-byte global -> shared copies (sm_80+), bypassing registers and L1
// (.cg), grouped with commit/wait so that a tile for a later iteration can be in flight while the
// current one is computed on.
//
// Usage pattern of a multi-stage pipeline:
//   cp_async_16(...) for every chunk of a tile;  cp_async_commit();      // one group per tile
//   ...
//   cp_async_wait<N>();   // all but the N most recently committed groups have landed (this thread)
//   __syncthreads();      // ... and are visible to every thread of the block
// Committing an empty group is legal and keeps group counting uniform at the end of a loop.
#pragma once

#include <cstdint>

namespace attnd::kernels::detail {

// Copies 16 bytes from gmem_src to the shared address smem_dst when `valid`; otherwise writes 16
// zero bytes and reads nothing (the src-size operand is 0). Tails of a tile (rows past the
// sequence end) are therefore zero in shared memory, never garbage. gmem_src must still be a
// valid-looking address when !valid; callers pass the tensor base.
__device__ __forceinline__ void cp_async_16(uint32_t smem_dst, const void* gmem_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_dst), "l"(gmem_src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace attnd::kernels::detail
