// FlashAttention forward for Hopper (sm_90a): TMA loads, wgmma, warp specialisation, persistent.
//
// The math is the online softmax of flash_fwd_kernel.cuh (per query row, over key tiles S):
//   m' = max(m, max_j S_j),  l' = l exp(c(m - m')) + sum_j exp(c(S_j - m')),
//   O' = O exp(c(m - m')) + exp(c(S - m')) V,      out = O / l,  lse = c m + log l,
// with c = softmax_scale, exp2 and c log2(e) folded into one FFMA, and m moved lazily (only when a
// row's maximum grows by more than 2^8 in exp2 units), so O is rarely rescaled.
//
// A grid of (at most) one CTA per SM runs the work tiles (batch, head, 64 * consumers query rows;
// fwd_work_tile.cuh), claimed one at a time from a counter (fwd_tile_scheduler.cuh). Each CTA is
// 1 + consumers warpgroups (flash_fwd_hopper_tile.cuh):
//   producer (warpgroup 0, one thread; fwd_producer.cuh): picks the tiles and publishes each one's
//     number to the consumers through shared memory; per work tile, TMA Q, then K[n], V[n]
//     for n = n_last .. 0 into a ring of kStages slots, each completing on an mbarrier. It runs
//     ahead into the next work tile while the consumers finish the current one (their last
//     softmax, P V and epilogue hide the next tile's first loads).
//   consumers (warpgroups 1..; fwd_consumer.cuh): 64 query rows each, S = Q K^T and O += P V
//     with wgmma, the softmax in registers, the epilogue through a staging buffer and TMA store.
//
// Tails and varlen: the tensor maps span the whole packed tensors, so a tile that runs past its
// sequence reads the next sequence's rows (or zeros past the tensor's end). Those keys are masked
// to -inf (P = 0 exactly, and every loaded value is finite), those query rows are never stored:
// the TMA store is used only when all 64 rows of a consumer lie inside the sequence.
#pragma once

#include <cstdint>

#include "hopper/async_copy.cuh"
#include "hopper/flash_fwd_hopper_tile.cuh"
#include "hopper/fwd_consumer.cuh"
#include "hopper/fwd_producer.cuh"
#include "hopper/fwd_tile_scheduler.cuh"
#include "hopper/fwd_work_tile.cuh"
#include "hopper/warpgroup.cuh"

namespace attnd::kernels::detail::hopper {

template <typename T, typename Tile, bool kCausal>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    flash_fwd_hopper_kernel(const __grid_constant__ HopperFwdArgs args) {
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN;
  const FwdKernelArgs& a = args.base;
  const int m_blocks = (a.max_seqlen_q + kBlockM - 1) / kBlockM;
  const int num_bh = a.heads_q * args.batch;
  const int num_tiles = m_blocks * num_bh;

  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const FwdSmem<Tile> sm{(raw + 1023u) & ~1023u};
  if (threadIdx.x == 0) {
    mbar_init(sm.q_full(), 1);
    mbar_init(sm.q_empty(), 4 * Tile::kConsumers);  // every consumer warp releases
    for (int s = 0; s < Tile::kStages; ++s) {
      mbar_init(sm.k_full(s), 1);
      mbar_init(sm.v_full(s), 1);
      mbar_init(sm.k_empty(s), 4 * Tile::kConsumers);
      mbar_init(sm.v_empty(s), 4 * Tile::kConsumers);
    }
    mbar_init_fence();
  }
  __syncthreads();

  // Causal: heads per group of the tile order (fwd_work_tile.cuh), two rounds of the grid each.
  const int group_heads = min(num_bh, max(1, (2 * int(gridDim.x) + m_blocks - 1) / m_blocks));
  auto decode = [&](int tile) {
    return decode_work_tile<kBlockM, kBlockN, kCausal>(a, tile, m_blocks, num_bh, group_heads);
  };
  volatile int* tile_slot = reinterpret_cast<volatile int*>(smem_raw + (sm.base - raw) + Tile::kTileSlotOffset);

  if (threadIdx.x < 128) {
    // ---- producer: picks the tiles, publishes each (number + Q), streams its K/V ----
    warpgroup_reg_dealloc<Tile::kProducerRegs>();
    if (threadIdx.x != 0) return;
    FwdTileScheduler scheduler(num_tiles, args.tile_counter);
    int ring = 0, round = 0;
    for (int tile = scheduler.first(); !scheduler.done(tile); tile = scheduler.next(tile)) {
      const FwdWorkTile w = decode(tile);
      if (w.rows_valid <= 0) continue;  // past this sequence's end (varlen): nothing to do
      publish_work_tile<Tile>(args, sm, tile_slot, tile, &w, round++);
      produce_key_tiles<Tile>(args, sm, w, ring);
      ring += w.n_blocks;
    }
    publish_work_tile<Tile>(args, sm, tile_slot, -1, nullptr, round);
    return;
  }

  // ---- consumers: run the published tiles until the producer says there are no more ----
  warpgroup_reg_alloc<Tile::kConsumerRegs>();
  FwdConsumer<T, Tile, kCausal> consumer(args, sm, smem_raw + (sm.base - raw),
                                         __shfl_sync(0xffffffffu, threadIdx.x / 128, 0) - 1);
  int ring = 0;
  for (int round = 0;; ++round) {
    mbar_wait(sm.q_full(), round & 1);
    const int tile = *tile_slot;
    if (tile < 0) break;
    const FwdWorkTile w = decode(tile);
    if (w.n_blocks <= 0) {
      consumer.release(sm.q_empty());
      consumer.write_empty(w);
      continue;
    }
    // The ring position feeds the wgmma descriptors: broadcast it so that the compiler sees a
    // warp-uniform value and keeps the descriptor arithmetic on the uniform datapath (else
    // every descriptor goes through R2UR right before its HGMMA).
    consumer.run(w, __shfl_sync(0xffffffffu, ring, 0));
    ring += w.n_blocks;
  }
  consumer.finish();
}

}  // namespace attnd::kernels::detail::hopper
