// Tile shape and shared-memory plan of the Hopper forward kernel.
//
// A CTA is three warpgroups: warpgroup 0 is the producer (one thread issues every TMA copy; the
// warpgroup gives its registers away with setmaxnreg), warpgroups 1 and 2 are consumers, each
// owning 64 of the CTA's kBlockM = 128 query rows (one wgmma M extent). K and V stream through a
// ring of kStages slots.
//
// Shared memory (every tile 1024-byte aligned, in the 128-byte swizzle, d = kHeadDim):
//   Q            [d/64][128 rows][64]        also the output staging area at the end
//   K[kStages]   [d/64][kBlockN rows][64]
//   V[kStages]   [d/64][kBlockN rows][64]
//   mbarriers    q_full, k_full[s], k_empty[s], v_full[s], v_empty[s]
#pragma once

#include <cstdint>

#include "hopper/flash_fwd_hopper.h"

namespace attnd::kernels::detail::hopper {

template <int kHeadDim_, int kStages_, HopperSchedule kSchedule_>
struct HopperFwdTile {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kHopperBlockM;
  static constexpr int kBlockN = kHopperBlockN;
  static constexpr int kStages = kStages_;
  static constexpr HopperSchedule kSchedule = kSchedule_;
  static constexpr bool kPingPong =
      kSchedule == HopperSchedule::kPingPong || kSchedule == HopperSchedule::kPingPongOverlap;
  static constexpr bool kOverlap = kSchedule == HopperSchedule::kOverlap || kSchedule == HopperSchedule::kPingPongOverlap;

  static constexpr int kConsumers = 2;  // warpgroups of 64 query rows
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;  // 128 * 24 + 256 * 240 <= 65536

  static constexpr int kColBlocks = kHeadDim / 64;          // 128-byte column blocks per row
  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * 2;
  static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * 2;  // one K or one V tile
  static constexpr uint32_t kQOffset = 0;
  static constexpr uint32_t kKOffset = kQOffset + kQBytes;
  static constexpr uint32_t kVOffset = kKOffset + kStages * kKVBytes;
  static constexpr uint32_t kBarOffset = kVOffset + kStages * kKVBytes;
  static constexpr uint32_t kBarriers = 1 + 4 * kStages;
  // +1024: the dynamic shared memory base is rounded up to 1024 bytes inside the kernel.
  static constexpr uint32_t kSmemBytes = kBarOffset + 8 * kBarriers + 1024;

  static_assert(kHeadDim == 64 || kHeadDim == 128, "one or two 64-element column blocks");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "key tile: a wgmma N extent and one TMA box");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA on sm_90");
  static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kConsumers <= 65536, "register file");
};

}  // namespace attnd::kernels::detail::hopper
