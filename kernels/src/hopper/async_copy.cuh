// Hopper asynchronous copies and the barriers they complete on (sm_90).
//
// mbarrier: a 64-bit shared-memory object with a phase bit. A phase completes when its expected
// arrivals have arrived AND its expected transaction bytes have landed; then the phase bit flips.
// The tensor copy engine (TMA, cp.async.bulk.tensor) counts its bytes against the barrier named in
// the copy (complete_tx), so "wait for phase p" means "the tile is in shared memory".
//
// A ring slot used for the i-th time (i = 0, 1, ...) is in phase parity (i & 1):
//   consumer: wait(full[slot], i & 1)          the tile landed
//   producer: wait(empty[slot], (i & 1) ^ 1)   the consumers of the previous round released it;
//             on a fresh barrier the "previous" phase (parity 1) counts as complete, so the
//             first round passes at once.
//
// Tensor maps (CUtensorMap, 128 bytes) are built on the host (tensor_map.h) and passed as
// __grid_constant__ kernel parameters; the copy takes their generic address.
#pragma once

#include <cstdint>

namespace attnd::kernels::detail::hopper {

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}

// Makes the barrier initialisations visible to the async proxy (the copy engine) and the other
// threads; follow with a CTA-wide barrier.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// One arrival that also announces `bytes` of transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Spins until the phase with parity `parity` has completed. try_wait suspends the thread for a
// hardware-chosen time before it reports "not yet", so the loop does not hammer the barrier.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// Copies the box at coordinates (c0 innermost, c1, c2) of the tensor map into shared memory at
// `dst` (the box's layout and swizzle come from the map); completes `bytes` on `bar`. Elements
// outside the tensor's extent are written as zeros (and still count as transferred bytes).
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void* tensor_map, uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::
          "r"(dst),
      "l"(tensor_map), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// Copies the box at (c0, c1, c2) of the tensor map from shared memory at `src` (the map's layout
// and swizzle) to global memory; elements outside the tensor's extent are not written. Completes
// as a bulk group of the issuing thread (bulk_commit / bulk_wait_read).
__device__ __forceinline__ void tma_store_3d(const void* tensor_map, uint32_t src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(tensor_map),
               "r"(src), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Waits until the issuing thread's bulk groups have finished READING shared memory (the source
// may be overwritten); the global writes may still be in flight.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }

// Waits until the issuing thread's bulk groups have completed.
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Orders this thread's earlier generic-proxy shared-memory accesses before later async-proxy ones
// (wgmma and TMA read shared memory through the async proxy).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Named barriers (ids 1..15; 0 is __syncthreads): `threads` must be a multiple of 32 and the same
// at every use of the id. sync waits for `threads` arrivals including its own; arrive does not wait.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace attnd::kernels::detail::hopper
