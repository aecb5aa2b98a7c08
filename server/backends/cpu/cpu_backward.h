// The CPU backward pass: dQ, dK, dV of attention from q, k, v, out, lse and dO, on host buffers.
#pragma once

#include "server/backends/cpu/cpu_isa.h"
#include "server/backends/cpu/thread_pool.h"
#include "server/core/attention_problem.h"

namespace attnd::cpu {

// How the backward splits its work across threads. Both schedules compute every tile the same
// way and sum in the same order, so they return identical bits; they differ in speed only.
enum class BackwardSchedule {
  kAuto,       // kPerKvHead when its tasks balance across the threads and its dQ buffer is small
  kPerKvHead,  // one task per (sequence, KV head): owns dK, dV and the dQ of the heads sharing it
  kSplit,      // key-tile tasks own dK and dV, then query-tile tasks own dQ (scores recomputed)
};

// Runs one validated backward call on `pool` with the tile loops compiled for `isa`.
void RunBackward(const BackwardArgs& args, CpuIsa isa, BackwardSchedule schedule, ThreadPool& pool);

}  // namespace attnd::cpu
