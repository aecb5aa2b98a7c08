// The last partial wave of the backward's main kernel, split finely.
//
// Why: one CTA per SM runs at a time, and in the non-causal case every unit (key block x KV head x
// sequence) costs the same. The benchmark shapes give 4096 units at d = 64 (31.03 waves on 132
// SMs) and 2048 at d = 128 (15.52 waves): the last 4 (resp. 68) units run alone while the other
// SMs idle, so the kernel takes 32 (resp. 16) unit-times instead of 31.03 (15.52), 3% lost.
// FlashAttention-2 has the same grid and the same loss.
//
// What: the last `tail` units (units % SMs of them) are each split over `pieces` CTAs, piece p
// taking a contiguous slice of the unit's query tiles. Every piece writes its FP32 partial dK, dV
// (in its threads' fragment order) to a workspace slot, then counts itself in the unit's arrival
// counter; the CTA that arrives last adds the slots in piece order (so the bits do not depend on
// which piece finished last) and runs the normal epilogue. dQ needs nothing: its tiles are summed
// by the reductions anyway. Fewer SMs than units is the same problem with zero full waves (small
// problems, e.g. short sequences with few heads): those are split the same way, causal included.
// Causal problems with full waves are left alone: their units differ in length, and the dispatch
// order (longest key blocks first) already balances them.
#pragma once

#include <algorithm>
#include <cstdint>

namespace attnd::kernels::bwd {

// Host side: how many pieces each tail unit gets (1: no split). tail_units = units % sms (all the
// units when there are fewer than SMs); items = query tiles per unit (an upper bound for varlen).
// Model, in units of one query tile's time: a wave of pieces costs items / pieces plus a fixed
// ~half tile per piece (its K/V load and pipeline fill, the partial write and the final sum), and
// ceil(tail_units * pieces / sms) such waves run. Pieces are capped at 2 * sms in all (the
// workspace holds one FP32 dK, dV tile per piece) and 32 per unit.
inline int ChooseTailPieces(int64_t tail_units, int64_t items, int sms) {
  if (tail_units <= 0 || items <= 1 || sms <= 0) return 1;
  auto cost = [&](int64_t pieces) {
    const int64_t waves = (tail_units * pieces + sms - 1) / sms;
    return static_cast<double>(waves) * (static_cast<double>(items) / static_cast<double>(pieces) + 0.5);
  };
  int best = 1;
  double best_cost = cost(1);
  for (int64_t pieces = 2; pieces <= std::min<int64_t>(32, items) && tail_units * pieces <= 2 * int64_t{sms}; ++pieces) {
    const double c = cost(pieces);
    if (c < 0.98 * best_cost) {
      best = static_cast<int>(pieces);
      best_cost = c;
    }
  }
  return best;
}

#ifdef __CUDACC__
// Device side, called by every thread of a tail piece's CTA after its tile loop: publishes the
// piece's dK, dV accumulators (kMi x kNj mma tiles of 4 FP32 each) into slot `piece` of the unit's
// `partial` ([pieces][2][kMi * kNj * 4 * kThreads] floats), and returns true in the CTA that
// completes the unit, with the accumulators replaced by the sum over all pieces. s_last: one int
// of shared memory the tile loop no longer uses.
template <int kThreads, int kMi, int kNj>
__device__ bool bwd_tail_combine(float (&acc_dk)[kMi][kNj][4], float (&acc_dv)[kMi][kNj][4], float* partial,
                                 int* arrivals, int piece, int pieces, int tid, volatile int* s_last) {
  constexpr int kVecs = kMi * kNj;  // float4 per thread per tensor
  float4* slots = reinterpret_cast<float4*>(partial);
  float4* mine = slots + static_cast<int64_t>(piece) * 2 * kVecs * kThreads;
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int j = 0; j < kNj; ++j) {
      const int v = i * kNj + j;
      __stcg(mine + v * kThreads + tid, make_float4(acc_dk[i][j][0], acc_dk[i][j][1], acc_dk[i][j][2], acc_dk[i][j][3]));
      __stcg(mine + (kVecs + v) * kThreads + tid,
             make_float4(acc_dv[i][j][0], acc_dv[i][j][1], acc_dv[i][j][2], acc_dv[i][j][3]));
    }
  __threadfence();  // this thread's slot is visible GPU-wide before the CTA counts itself
  __syncthreads();
  if (tid == 0) *s_last = atomicAdd(arrivals, 1) == pieces - 1;
  __syncthreads();
  if (!*s_last) return false;
  __threadfence();  // every other piece's slot is visible to the reads below
#pragma unroll
  for (int i = 0; i < kMi; ++i)
#pragma unroll
    for (int j = 0; j < kNj; ++j) {
      const int v = i * kNj + j;
      float4 k = make_float4(0.f, 0.f, 0.f, 0.f), w = k;
      for (int p = 0; p < pieces; ++p) {
        const float4* slot = slots + static_cast<int64_t>(p) * 2 * kVecs * kThreads;
        const float4 a = __ldcg(slot + v * kThreads + tid), b = __ldcg(slot + (kVecs + v) * kThreads + tid);
        k.x += a.x, k.y += a.y, k.z += a.z, k.w += a.w;
        w.x += b.x, w.y += b.y, w.z += b.z, w.w += b.w;
      }
      acc_dk[i][j][0] = k.x, acc_dk[i][j][1] = k.y, acc_dk[i][j][2] = k.z, acc_dk[i][j][3] = k.w;
      acc_dv[i][j][0] = w.x, acc_dv[i][j][1] = w.y, acc_dv[i][j][2] = w.z, acc_dv[i][j][3] = w.w;
    }
  return true;
}
#endif

}  // namespace attnd::kernels::bwd
