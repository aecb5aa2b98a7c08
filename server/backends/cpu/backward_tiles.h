// The backward's tile-level work, shared by both schedules of cpu_backward.cc: the plain task and
// scratch structs, and per-instruction-set entry points that run one task each.
#pragma once

#include <cstdint>

#include "server/backends/cpu/attention_tiles.h"
#include "server/backends/cpu/cpu_isa.h"
#include "server/core/attention_problem.h"

namespace attnd::cpu {

struct KeyTile {  // pass-1 task: key rows [k0, k0 + cols) of sequence b, KV head hk
  int b = 0;
  int hk = 0;
  int k0 = 0;
  int cols = 0;
};

struct QueryTile {  // pass-2 task: query rows [q0, q0 + rows) of sequence b, query head h
  int b = 0;
  int h = 0;
  int q0 = 0;
  int rows = 0;
};

struct BackwardInputs {
  const BackwardArgs* args = nullptr;
  AttentionParams p;
  const float* delta = nullptr;  // D, [heads_q][total_q]
};

// One thread's tiles; ld is the row length of the head_dim-wide tiles.
struct BackwardScratch {
  int ld = 0;
  float* q = nullptr;      // [kBlockQ][ld]
  float* dout = nullptr;   // [kBlockQ][ld]
  float* kt = nullptr;     // [head_dim][kBlockK]  K^T
  float* vt = nullptr;     // [head_dim][kBlockK]  V^T
  float* k = nullptr;      // [kBlockK][ld]
  float* s = nullptr;      // [kBlockQ][kBlockK]  scores, then P
  float* dp = nullptr;     // [kBlockQ][kBlockK]  dP, then scale * dS
  float* dk = nullptr;     // [kBlockK][ld]
  float* dv = nullptr;     // [kBlockK][ld]
  float* dq = nullptr;     // [kBlockQ][ld]       pass 2's dQ
  float* lse2 = nullptr;   // [kBlockQ]           lse in log2 units
  float* delta = nullptr;  // [kBlockQ]
  float* row = nullptr;    // [ld] conversion buffer
};

// One thread's backward tiles: the allocation and the tiles carved from it.
struct BackwardWorkspace {
  explicit BackwardWorkspace(int ld);
  BackwardWorkspace(const BackwardWorkspace&) = delete;  // tiles point into arena
  BackwardWorkspace& operator=(const BackwardWorkspace&) = delete;
  TileScratch arena;
  BackwardScratch tiles;
};

// The entry points of one instruction set. dq_acc: the task's [group][seqlen_q][ld] float buffer.
struct BackwardKernels {
  void (*kv_head)(const BackwardInputs&, int b, int hk, float* dq_acc, const BackwardScratch&);
  void (*key_tile)(const BackwardInputs&, const KeyTile&, const BackwardScratch&);
  void (*query_tile)(const BackwardInputs&, const QueryTile&, const BackwardScratch&);
};
BackwardKernels SelectBackwardKernels(CpuIsa isa);

}  // namespace attnd::cpu
