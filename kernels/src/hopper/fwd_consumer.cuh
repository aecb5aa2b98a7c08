// A consumer warpgroup of the Hopper forward kernel: 64 query rows of a work tile, from the key
// tiles in shared memory to out and lse in global memory (the math: flash_fwd_hopper_kernel.cuh).
//
// Per key tile i (n = n_last - i), after the peeled first tile:
//     S = Q K[n]^T       wgmma m64 n=kBlockN k16, Q and K from shared memory (K-major)
//     O += P V[n+1]      wgmma m64 n=d k16, P from registers (the previous tile's S rounded to
//                        16 bits: the accumulator layout of S is the A-fragment layout), V from
//                        shared memory (N-major)
//   issued back to back; then wait for S, release the K slot, mask (diagonal and ragged tiles
//   only), online softmax; wait for O (kOverlap: only now, so the softmax ran under the P V
//   product), release the V slot, rescale O if m moved, P = 16-bit S. A last O += P V[0] ends it.
// kPingPong: the consumers take turns issuing their GEMMs (consumer c waits on named barrier 1 + c,
// then hands the turn to c + 1), so one's softmax runs while the others' GEMMs keep the tensor
// cores busy.
// Epilogue: O / l rounded to 16 bits into the O staging buffer (the 128-byte swizzle), then one
// TMA store of the warpgroup's 64 rows when they all lie inside the sequence, else 16-byte stores
// of the valid rows; lse from the lane that owns each row.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "common/fast_math.cuh"
#include "common/numeric.cuh"
#include "common/warp_reduce.cuh"
#include "hopper/async_copy.cuh"
#include "hopper/flash_fwd_hopper_tile.cuh"
#include "hopper/fwd_work_tile.cuh"
#include "hopper/warpgroup.cuh"
#include "hopper/wgmma_ops.cuh"

namespace attnd::kernels::detail::hopper {

template <typename T, typename Tile, bool kCausal>
struct FwdConsumer {
  static constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kHeadDim = Tile::kHeadDim;
  static constexpr int kStages = Tile::kStages, kConsumers = Tile::kConsumers;
  static constexpr float kInf = INFINITY;
  // Named barrier ids: 1 + c = "consumer c may issue" (ping-pong); 1 + kConsumers + c: consumer c's own.
  static constexpr int kIssueBarrier = 1, kEpilogueBarrier = 1 + kConsumers;

  const HopperFwdArgs& args;
  const FwdSmem<Tile> sm;
  uint8_t* const smem_generic;  // the generic address of sm.base
  const int consumer;           // rows 64 * consumer .. + 63 of each work tile
  const int tid, warp, lane;
  const int g, t;     // accumulator layout: rows g, g + 8 of the warp's 16; columns 8j + 2t, 8j + 2t + 1
  const int row0;     // this thread's first row within the work tile
  const float scale_log2;

  float acc_o[kHeadDim / 2];
  float acc_s[kBlockN / 2];
  uint32_t frag_p[kBlockN / 16][4];
  float row_max[2], row_sum[2], correction[2];

  __device__ FwdConsumer(const HopperFwdArgs& a, FwdSmem<Tile> s, uint8_t* generic, int c)
      : args(a),
        sm(s),
        smem_generic(generic),
        consumer(c),
        tid(threadIdx.x % 128),
        warp(tid / 32),
        lane(tid % 32),
        g(lane / 4),
        t(lane % 4),
        row0(c * 64 + warp * 16 + lane / 4),
        scale_log2(a.base.scale_log2) {}

  // ---- the pieces ----
  __device__ __forceinline__ void issue_qk(int s) {
    const uint64_t desc_q = smem_desc(sm.q() + consumer * 64 * 128, 16, 1024);
    const uint64_t desc_k = smem_desc(sm.k(s), 16, 1024);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk)  // k-slice kk: column block kk / 4, 32 bytes per slice in it
      wgmma_ss<kBlockN, T>(acc_s, desc_advance(desc_q, (kk / 4) * kBlockM * 128 + (kk % 4) * 32),
                           desc_advance(desc_k, (kk / 4) * kBlockN * 128 + (kk % 4) * 32), kk > 0);
  }

  __device__ __forceinline__ void issue_pv(int s) {
    const uint64_t desc_v = smem_desc(sm.v(s), kBlockN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) wgmma_rs_tb<kHeadDim, T>(acc_o, frag_p[kk], desc_advance(desc_v, kk * 16 * 128));
  }

  // A slot is free once every consumer warp has arrived (its wgmma reading it completed).
  __device__ __forceinline__ void release(uint32_t empty_bar) {
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_bar);
  }

  __device__ __forceinline__ void turn_wait() {
    if constexpr (Tile::kPingPong) named_barrier_sync(kIssueBarrier + consumer, 256);
  }
  __device__ __forceinline__ void turn_pass() {
    if constexpr (Tile::kPingPong) named_barrier_arrive(kIssueBarrier + (consumer + 1) % kConsumers, 256);
  }

  // Key j of tile n is masked for row r when j >= seqlen_k or (causal) j > r + seqlen_k - seqlen_q.
  __device__ __forceinline__ void apply_mask(const FwdWorkTile& w, int n) {
    const int col0 = n * kBlockN + 2 * t;
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      int limit = w.seqlen_k;
      if constexpr (kCausal) limit = min(limit, w.m_block * kBlockM + row0 + 8 * rh + w.seqlen_k - w.seqlen_q + 1);
      const int rel = limit - col0;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (j * 8 + e >= rel) acc_s[4 * j + 2 * rh + e] = -kInf;
    }
  }

  // Online softmax of acc_s in place (P = exp2(c S - c m), FP32). Returns whether m moved; then
  // correction[] holds the factors O must still be multiplied by.
  __device__ __forceinline__ bool softmax() {
    constexpr float kStaleLog2 = 8.f;
    float tile_max[2];
    bool move = false;
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float part[4] = {-kInf, -kInf, -kInf, -kInf};
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
        part[j % 4] = fmaxf(part[j % 4], fmaxf(acc_s[4 * j + 2 * rh], acc_s[4 * j + 2 * rh + 1]));
      tile_max[rh] = quad_max(fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3])));
      move |= (tile_max[rh] - row_max[rh]) * scale_log2 > kStaleLog2;  // NaN (-inf - -inf) is false
    }
    const bool moved = __any_sync(0xffffffffu, move);
    if (moved) {
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const float mx = fmaxf(row_max[rh], tile_max[rh]);
        correction[rh] = mx == -kInf ? 1.f : fast_exp2((row_max[rh] - mx) * scale_log2);
        row_max[rh] = mx;
        row_sum[rh] *= correction[rh];
      }
    }
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      const float max_scaled = row_max[rh] == -kInf ? 0.f : row_max[rh] * scale_log2;
      float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float p = fast_exp2(fmaf(acc_s[4 * j + 2 * rh + e], scale_log2, -max_scaled));
          acc_s[4 * j + 2 * rh + e] = p;
          part[j % 4] += p;
        }
      row_sum[rh] += (part[0] + part[1]) + (part[2] + part[3]);
    }
    return moved;
  }

  __device__ __forceinline__ void rescale_o() {
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[4 * j + e] *= correction[e / 2];
  }

  __device__ __forceinline__ void convert_p() {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) frag_p[kk][r] = pack2<T>(acc_s[8 * kk + 2 * r], acc_s[8 * kk + 2 * r + 1]);
  }

  // ---- one work tile (its Q has landed: q_full) ----
  // ring: ring position of the tile's first key tile.
  __device__ __forceinline__ void run(const FwdWorkTile& w, int ring) {
#pragma unroll
    for (int i = 0; i < kHeadDim / 2; ++i) acc_o[i] = 0.f;
    row_max[0] = row_max[1] = -kInf;
    row_sum[0] = row_sum[1] = 0.f;
    const int n_last = w.n_blocks - 1;
    auto slot = [&](int i) { return (ring + i) % kStages; };
    auto parity = [&](int i) { return uint32_t(((ring + i) / kStages) & 1); };

    if (Tile::kPingPong && consumer == kConsumers - 1) named_barrier_arrive(kIssueBarrier, 256);  // 0 goes first

    // Key tile 0 (the last one, n = n_last): S only; O is still zero.
    turn_wait();
    mbar_wait(sm.k_full(slot(0)), parity(0));
    wgmma_fence();
    issue_qk(slot(0));
    wgmma_commit();
    turn_pass();
    wgmma_wait<0>();
    fence_registers(acc_s);
    release(sm.k_empty(slot(0)));
    if (n_last == 0) release(sm.q_empty());
    if (n_last >= w.n_mask) apply_mask(w, n_last);
    softmax();
    convert_p();

    for (int i = 1; i <= n_last; ++i) {
      const int n = n_last - i;
      turn_wait();
      mbar_wait(sm.k_full(slot(i)), parity(i));
      fence_registers(acc_o);
      wgmma_fence();
      issue_qk(slot(i));
      wgmma_commit();
      mbar_wait(sm.v_full(slot(i - 1)), parity(i - 1));
      wgmma_fence();  // a new basic block after the wait: ptxas wants the fence again
      issue_pv(slot(i - 1));
      wgmma_commit();
      turn_pass();
      if constexpr (Tile::kOverlap) {
        wgmma_wait<1>();  // S landed; O += P V still running under the softmax below
      } else {
        wgmma_wait<0>();
      }
      fence_registers(acc_s);
      release(sm.k_empty(slot(i)));
      if (i == n_last) release(sm.q_empty());  // the producer may load the next work tile's Q
      if constexpr (!Tile::kOverlap) release(sm.v_empty(slot(i - 1)));
      if (n >= w.n_mask) apply_mask(w, n);
      const bool moved = softmax();
      if constexpr (Tile::kOverlap) {
        wgmma_wait<0>();
        release(sm.v_empty(slot(i - 1)));
      }
      fence_registers(acc_o);
      if (moved) rescale_o();
      convert_p();
    }

    // The last O += P V.
    turn_wait();
    mbar_wait(sm.v_full(slot(n_last)), parity(n_last));
    fence_registers(acc_o);
    wgmma_fence();
    issue_pv(slot(n_last));
    wgmma_commit();
    if (consumer != kConsumers - 1) turn_pass();  // the last consumer's last pass would have no taker
    wgmma_wait<0>();
    fence_registers(acc_o);
    release(sm.v_empty(slot(n_last)));

    epilogue(w);
  }

  __device__ __forceinline__ int64_t lse_index(const FwdWorkTile& w, int row) const {
    const int i = w.m_block * kBlockM + row;
    return args.base.lse_packed ? int64_t{w.h} * args.base.total_q + w.q_start + i
                                : (int64_t{w.b} * args.base.heads_q + w.h) * args.base.max_seqlen_q + i;
  }

  __device__ __forceinline__ T* out_rows(const FwdWorkTile& w) const {
    const int64_t q_row0 = int64_t{w.q_start} + int64_t{w.m_block} * kBlockM;
    return static_cast<T*>(args.base.out) + q_row0 * args.base.out_row_stride + w.h * args.base.out_head_stride;
  }

  // Byte offset of (row within the work tile, 16-byte chunk) in the staging buffer: TMA's
  // 128-byte swizzle, column blocks of 64 elements one after the other.
  static __device__ __forceinline__ uint32_t stage_offset(int row, int chunk) {
    return uint32_t((chunk / 8) * kBlockM * 128 + row * 128 + (((chunk % 8) ^ (row % 8)) << 4));
  }

  __device__ __forceinline__ void epilogue(const FwdWorkTile& w) {
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      const float sum = quad_sum(row_sum[rh]);
      const bool any = sum > 0.f;
      const float inv = any ? 1.f / sum : 0.f;
#pragma unroll
      for (int j = 0; j < kHeadDim / 8; ++j) {
        acc_o[4 * j + 2 * rh] *= inv;
        acc_o[4 * j + 2 * rh + 1] *= inv;
      }
      const int row = row0 + 8 * rh;
      if (t == 0 && row < w.rows_valid)
        args.base.lse[lse_index(w, row)] = any ? (row_max[rh] * scale_log2 + fast_log2(sum)) * kLn2 : kInf;
    }
    // The previous work tile's TMA store must have read the staging rows before they are rewritten.
    if (tid == 0) bulk_wait_read();
    named_barrier_sync(kEpilogueBarrier + consumer, 128);
    uint8_t* staging = smem_generic + Tile::kOOffset;
#pragma unroll
    for (int rh = 0; rh < 2; ++rh)
#pragma unroll
      for (int j = 0; j < kHeadDim / 8; ++j)
        *reinterpret_cast<uint32_t*>(staging + stage_offset(row0 + 8 * rh, j) + 4 * t) =
            pack2<T>(acc_o[4 * j + 2 * rh], acc_o[4 * j + 2 * rh + 1]);
    const int my_rows = min(64, w.rows_valid - consumer * 64);
    if (args.tma_store && my_rows == 64) {
      fence_proxy_async();  // the TMA store reads what these generic stores wrote
      named_barrier_sync(kEpilogueBarrier + consumer, 128);
      if (tid == 0) {
        const int q_row = w.q_start + w.m_block * kBlockM + consumer * 64;
#pragma unroll
        for (int cb = 0; cb < Tile::kColBlocks; ++cb)
          tma_store_3d(&args.tma_o, sm.o() + cb * kBlockM * 128 + consumer * 64 * 128, cb * 64, w.h, q_row);
        bulk_commit();
      }
    } else {
      named_barrier_sync(kEpilogueBarrier + consumer, 128);
      constexpr int kChunks = kHeadDim / 8;
      T* out = out_rows(w);
#pragma unroll
      for (int it = 0; it < 64 * kChunks / 128; ++it) {
        const int idx = it * 128 + tid;
        const int row = consumer * 64 + idx / kChunks, c = idx % kChunks;
        if (idx / kChunks < my_rows)
          *reinterpret_cast<uint4*>(out + row * args.base.out_row_stride + c * 8) =
              *reinterpret_cast<const uint4*>(staging + stage_offset(row, c));
      }
    }
  }

  // A work tile whose rows see no key at all: out = 0, lse = +inf for this warpgroup's rows. (Its
  // Q was never loaded: the caller releases q_empty at once.)
  __device__ __forceinline__ void write_empty(const FwdWorkTile& w) {
    T* out = out_rows(w);
    constexpr int kChunks = kHeadDim / 8;
    for (int idx = tid; idx < 64 * kChunks; idx += 128) {
      const int row = consumer * 64 + idx / kChunks, c = idx % kChunks;
      if (row < w.rows_valid) *reinterpret_cast<uint4*>(out + row * args.base.out_row_stride + c * 8) = make_uint4(0, 0, 0, 0);
    }
    if (tid < 64 && consumer * 64 + tid < w.rows_valid) args.base.lse[lse_index(w, consumer * 64 + tid)] = kInf;
  }

  // Before the CTA exits: the last TMA store must be done with shared memory.
  __device__ __forceinline__ void finish() {
    if (tid == 0) bulk_wait();
  }
};

}  // namespace attnd::kernels::detail::hopper
