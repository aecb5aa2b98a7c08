// The producer of the Hopper forward kernel: one thread of warpgroup 0 picks the work tiles
// (fwd_tile_scheduler.cuh) and issues every TMA load. A tile's number and its Q go out once the
// consumers released the previous tile's Q (q_empty); K[n] and V[n] for n = n_last .. 0 go into
// the K/V ring, each after the consumers released the slot's previous contents (k_empty /
// v_empty), each completing on its full barrier.
#pragma once

#include "hopper/async_copy.cuh"
#include "hopper/flash_fwd_hopper_tile.cuh"
#include "hopper/fwd_work_tile.cuh"

namespace attnd::kernels::detail::hopper {

// Publishes work tile `tile` (or -1: no more) to the consumers: its number in the tile slot, then
// q_full, which completes when its Q has landed (at once for -1 and for tiles with no key).
// round: the work tiles this CTA published before.
template <typename Tile>
__device__ __forceinline__ void publish_work_tile(const HopperFwdArgs& args, const FwdSmem<Tile>& sm, volatile int* slot,
                                                  int tile, const FwdWorkTile* w, int round) {
  mbar_wait(sm.q_empty(), (round & 1) ^ 1);
  *slot = tile;  // made visible by the arrive below (release) and the consumers' wait (acquire)
  if (w == nullptr || w->n_blocks <= 0) {
    mbar_arrive(sm.q_full());
    return;
  }
  mbar_arrive_expect_tx(sm.q_full(), Tile::kQBytes);
#pragma unroll
  for (int cb = 0; cb < Tile::kColBlocks; ++cb)
    tma_load_3d(sm.q() + cb * Tile::kBlockM * 128, &args.tma_q, sm.q_full(), cb * 64, w->h,
                w->q_start + w->m_block * Tile::kBlockM);
}

// K[n] and V[n] for n = n_last .. 0 of a work tile into the ring, from ring position `ring`.
template <typename Tile>
__device__ __forceinline__ void produce_key_tiles(const HopperFwdArgs& args, const FwdSmem<Tile>& sm,
                                                  const FwdWorkTile& w, int ring) {
  constexpr int kBlockN = Tile::kBlockN, kStages = Tile::kStages;
  const int kv_head = w.h / args.base.heads_per_kv;
  for (int i = 0; i < w.n_blocks; ++i) {
    const int n = w.n_blocks - 1 - i, pos = ring + i, s = pos % kStages;
    const uint32_t parity = ((pos / kStages) & 1) ^ 1;
    const int row = w.k_start + n * kBlockN;
    mbar_wait(sm.k_empty(s), parity);
    mbar_arrive_expect_tx(sm.k_full(s), Tile::kKVBytes);
#pragma unroll
    for (int cb = 0; cb < Tile::kColBlocks; ++cb)
      tma_load_3d(sm.k(s) + cb * kBlockN * 128, &args.tma_k, sm.k_full(s), cb * 64, kv_head, row);
    mbar_wait(sm.v_empty(s), parity);
    mbar_arrive_expect_tx(sm.v_full(s), Tile::kKVBytes);
#pragma unroll
    for (int cb = 0; cb < Tile::kColBlocks; ++cb)
      tma_load_3d(sm.v(s) + cb * kBlockN * 128, &args.tma_v, sm.v_full(s), cb * 64, kv_head, row);
  }
}

}  // namespace attnd::kernels::detail::hopper
