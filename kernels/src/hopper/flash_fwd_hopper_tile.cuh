// Tile shape and shared-memory plan of the Hopper forward kernel.
//
// A CTA is 1 + kConsumers warpgroups: warpgroup 0 is the producer (one thread issues every TMA
// copy; the warpgroup gives its registers away with setmaxnreg), warpgroups 1.. are consumers,
// each owning 64 of a work tile's kBlockM = 64 * kConsumers query rows (one wgmma M extent). K and
// V stream through a ring of kStages slots that runs on across work tiles. Two consumers at
// d = 128 (each needs ~220 registers); three at d = 64 (160 registers each is enough there, and a
// third warp per scheduler hides more of the softmax's latency).
//
// Shared memory (every tile 1024-byte aligned, in the 128-byte swizzle, d = kHeadDim):
//   Q            [d/64][kBlockM rows][64]    loaded once per work tile
//   K[kStages]   [d/64][kBlockN rows][64]
//   V[kStages]   [d/64][kBlockN rows][64]
//   O            [d/64][kBlockM rows][64]    output staging (the TMA store's source)
//   mbarriers    q_full, q_empty, k_full[s], k_empty[s], v_full[s], v_empty[s]
//   tile slot    the number of the work tile whose Q q_full announces (-1: no more tiles)
#pragma once

#include <cstdint>

#include "hopper/flash_fwd_hopper.h"

namespace attnd::kernels::detail::hopper {

template <int kHeadDim_, int kConsumers_, int kStages_, HopperSchedule kSchedule_>
struct HopperFwdTile {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumers = kConsumers_;  // warpgroups of 64 query rows
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kBlockN = kHopperBlockN;
  static constexpr int kStages = kStages_;
  static constexpr HopperSchedule kSchedule = kSchedule_;
  static constexpr bool kPingPong =
      kSchedule == HopperSchedule::kPingPong || kSchedule == HopperSchedule::kPingPongOverlap;
  static constexpr bool kOverlap = kSchedule == HopperSchedule::kOverlap || kSchedule == HopperSchedule::kPingPongOverlap;

  static constexpr int kThreads = 128 * (1 + kConsumers);
  // setmaxnreg moves registers only within what the CTA was launched with: kThreads x the cap
  // that __launch_bounds__(kThreads, 1) gives (65536 / kThreads, a multiple of 8). The producer
  // keeps 32 (its tile hand-out spills at 24); the consumers split the rest, a multiple of 8 each:
  // 232 for 2 consumers (384 x 168 registers at launch), 160 for 3 (512 x 128).
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kProducerRegs = 32;
  static constexpr int kConsumerRegs = (kLaunchRegs * kThreads / 128 - kProducerRegs) / kConsumers / 8 * 8;

  static constexpr int kColBlocks = kHeadDim / 64;          // 128-byte column blocks per row
  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * 2;
  static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * 2;  // one K or one V tile
  static constexpr uint32_t kQOffset = 0;
  static constexpr uint32_t kKOffset = kQOffset + kQBytes;
  static constexpr uint32_t kVOffset = kKOffset + kStages * kKVBytes;
  static constexpr uint32_t kOOffset = kVOffset + kStages * kKVBytes;
  static constexpr uint32_t kBarOffset = kOOffset + kQBytes;
  static constexpr uint32_t kBarriers = 2 + 4 * kStages;
  static constexpr uint32_t kTileSlotOffset = kBarOffset + 8 * kBarriers;  // the work tile's number
  // +1024: the dynamic shared memory base is rounded up to 1024 bytes inside the kernel.
  static constexpr uint32_t kSmemBytes = kTileSlotOffset + 16 + 1024;

  static_assert(kHeadDim == 64 || kHeadDim == 128, "one or two 64-element column blocks");
  static_assert(kConsumers == 2 || kConsumers == 3, "kBlockM = 128 or 192 (a TMA box is at most 256 rows)");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "key tile: a wgmma N extent and one TMA box");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA on sm_90");
  static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kConsumers <= kLaunchRegs * kThreads, "registers");
};

// Shared-memory addresses of one CTA (base: the 1024-aligned start of its dynamic shared memory).
template <typename Tile>
struct FwdSmem {
  uint32_t base;
  __device__ __forceinline__ uint32_t q() const { return base + Tile::kQOffset; }
  __device__ __forceinline__ uint32_t k(int s) const { return base + Tile::kKOffset + s * Tile::kKVBytes; }
  __device__ __forceinline__ uint32_t v(int s) const { return base + Tile::kVOffset + s * Tile::kKVBytes; }
  __device__ __forceinline__ uint32_t o() const { return base + Tile::kOOffset; }
  __device__ __forceinline__ uint32_t q_full() const { return bar(0); }
  __device__ __forceinline__ uint32_t q_empty() const { return bar(1); }
  __device__ __forceinline__ uint32_t k_full(int s) const { return bar(2 + s); }
  __device__ __forceinline__ uint32_t k_empty(int s) const { return bar(2 + Tile::kStages + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const { return bar(2 + 2 * Tile::kStages + s); }
  __device__ __forceinline__ uint32_t v_empty(int s) const { return bar(2 + 3 * Tile::kStages + s); }

 private:
  __device__ __forceinline__ uint32_t bar(int i) const { return base + Tile::kBarOffset + 8 * i; }
};

}  // namespace attnd::kernels::detail::hopper
