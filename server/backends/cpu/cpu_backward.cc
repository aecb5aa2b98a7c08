// The backward's schedule: who owns which gradient, so that no two threads ever add into the same
// element and the result does not depend on the number of threads (the math is in
// backward_tiles.cc). Two schedules:
//
//   per KV head: task (b, kv head) walks its key tiles; for each, every query tile of every head in
//     the group adds into that key tile's dK/dV and into the task's own float dQ buffer. Five tile
//     products per (query tile, key tile) pair, but only batch * heads_kv tasks.
//   split: pass 1, task (b, kv head, key tile) computes dK/dV as above without dQ; pass 2, task
//     (b, query head, query tile) recomputes P and dS for its key tiles and sums dQ. Seven tile
//     products per pair, with enough tasks for any number of threads (MQA, batch 1).
//
// Both visit the same pairs in the same order for every output element and compute each pair with
// the same function, so their bits agree; kAuto picks whichever should finish first.
#include "server/backends/cpu/cpu_backward.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "server/backends/cpu/attention_tiles.h"
#include "server/backends/cpu/backward_tiles.h"
#include "server/backends/cpu/tile_io.h"
#include "server/backends/cpu/vector_math.h"

namespace attnd::cpu {
namespace {

// Score entries a (query tile, key tile) walk of sequence b touches: sum over rows of keys seen.
double VisiblePairs(const AttentionShape& shape, bool causal, int b) {
  const SequenceMask mask{shape.seqlen_q(b), shape.seqlen_k(b), causal};
  double pairs = 0;
  for (int q0 = 0; q0 < mask.seqlen_q; q0 += kBlockQ) {
    const int rows = std::min(kBlockQ, mask.seqlen_q - q0);
    pairs += double(rows) * (mask.KeyEnd(q0 + rows - 1) + kBlockK);
  }
  return pairs + mask.seqlen_k;  // + the key tiles' own loads and stores
}

// D = rowsum(dO * O) for every (query head, row), in float.
std::vector<float> RowDeltas(const BackwardArgs& a, const AttentionParams& p, ThreadPool& pool) {
  const int64_t total_q = p.shape->total_q;
  std::vector<float> delta(static_cast<size_t>(total_q * p.heads_q));
  const int64_t chunks = CeilDiv(total_q, kBlockQ);
  pool.Run(chunks, [&](TaskCursor& cursor) {
    std::vector<float> o(static_cast<size_t>(p.head_dim)), dout(static_cast<size_t>(p.head_dim));
    int64_t chunk;
    while (cursor.Next(chunk)) {
      for (int64_t row = chunk * kBlockQ; row < std::min(total_q, (chunk + 1) * kBlockQ); ++row) {
        for (int h = 0; h < p.heads_q; ++h) {
          const int64_t off = p.QOffset(row, h);
          LoadRows(p.dtype, ElementAt(a.out, p.dtype, off), 0, 1, p.head_dim, p.head_dim, o.data(), 0);
          LoadRows(p.dtype, ElementAt(a.grad_out, p.dtype, off), 0, 1, p.head_dim, p.head_dim,
                   dout.data(), 0);
          delta[static_cast<size_t>(int64_t{h} * total_q + row)] = RowDot(o.data(), dout.data(), p.head_dim);
        }
      }
    }
  });
  return delta;
}

// Above this a per-KV-head task's float dQ buffer is too large to keep per thread.
constexpr int64_t kMaxDqAccBytes = int64_t{64} << 20;

// Per-KV-head schedule: task (b, hk) = b * heads_kv + hk, longest first.
void RunPerKvHead(const BackwardInputs& in, const BackwardKernels& kernels, const std::vector<double>& kv_cost,
                  int ld, ThreadPool& pool) {
  const int64_t dq_acc_floats = int64_t{in.p.group} * in.p.shape->max_seqlen_q * ld;
  const std::vector<int64_t> order = LongestFirst(kv_cost);
  pool.Run(static_cast<int64_t>(order.size()), [&](TaskCursor& cursor) {
    const BackwardWorkspace w(ld);
    std::vector<float> dq_acc(static_cast<size_t>(dq_acc_floats));
    int64_t i;
    while (cursor.Next(i)) {
      const int64_t task = order[size_t(i)];
      kernels.kv_head(in, int(task / in.p.heads_kv), int(task % in.p.heads_kv), dq_acc.data(), w.tiles);
    }
  });
}

// Split schedule: pass 1 dK/dV per key tile, then pass 2 dQ per query tile.
void RunSplit(const BackwardInputs& in, const BackwardKernels& kernels, int ld, ThreadPool& pool) {
  const AttentionShape& shape = *in.p.shape;
  std::vector<KeyTile> key_tiles;
  std::vector<double> key_cost;
  std::vector<QueryTile> query_tiles;
  std::vector<double> query_cost;
  for (int b = 0; b < shape.batch; ++b) {
    const SequenceMask mask{shape.seqlen_q(b), shape.seqlen_k(b), in.p.causal};
    for (int k0 = 0; k0 < mask.seqlen_k; k0 += kBlockK) {
      const int cols = std::min(kBlockK, mask.seqlen_k - k0);
      const double rows_seeing = mask.seqlen_q - mask.FirstQueryRow(k0) + kBlockQ;
      for (int hk = 0; hk < in.p.heads_kv; ++hk) {
        key_tiles.push_back({b, hk, k0, cols});
        key_cost.push_back(rows_seeing * cols * in.p.group);
      }
    }
    for (int q0 = 0; q0 < mask.seqlen_q; q0 += kBlockQ) {
      const int rows = std::min(kBlockQ, mask.seqlen_q - q0);
      for (int h = 0; h < in.p.heads_q; ++h) {
        query_tiles.push_back({b, h, q0, rows});
        query_cost.push_back(double(rows) * (mask.KeyEnd(q0 + rows - 1) + kBlockK));
      }
    }
  }
  const std::vector<int64_t> key_order = LongestFirst(key_cost);
  pool.Run(static_cast<int64_t>(key_tiles.size()), [&](TaskCursor& cursor) {
    const BackwardWorkspace w(ld);
    int64_t i;
    while (cursor.Next(i)) kernels.key_tile(in, key_tiles[size_t(key_order[size_t(i)])], w.tiles);
  });
  const std::vector<int64_t> query_order = LongestFirst(query_cost);
  pool.Run(static_cast<int64_t>(query_tiles.size()), [&](TaskCursor& cursor) {
    const BackwardWorkspace w(ld);
    int64_t i;
    while (cursor.Next(i)) kernels.query_tile(in, query_tiles[size_t(query_order[size_t(i)])], w.tiles);
  });
}

}  // namespace

void RunBackward(const BackwardArgs& args, CpuIsa isa, BackwardSchedule schedule, ThreadPool& pool) {
  const AttentionShape& shape = *args.shape;
  BackwardInputs in;
  in.args = &args;
  in.p = AttentionParams::From(shape, args.dtype, args.options);
  const std::vector<float> delta = RowDeltas(args, in.p, pool);
  in.delta = delta.data();
  const BackwardKernels kernels = SelectBackwardKernels(isa);
  const int ld = RoundUp(in.p.head_dim, 32);  // the widest W, so every variant fits

  std::vector<double> kv_cost;  // of the per-KV-head tasks
  for (int b = 0; b < shape.batch; ++b) {
    const double c = VisiblePairs(shape, in.p.causal, b) * in.p.group;
    for (int hk = 0; hk < in.p.heads_kv; ++hk) kv_cost.push_back(c);
  }
  if (schedule == BackwardSchedule::kAuto) {
    // Longest-first finishes in about max(longest task, total / threads). Split does 7/5 of the
    // work but balances perfectly, so per KV head wins unless its longest task exceeds that.
    double total = 0, longest = 0;
    for (double c : kv_cost) total += c, longest = std::max(longest, c);
    const bool balanced = longest * pool.threads() <= 1.4 * total;
    const bool fits = int64_t{in.p.group} * shape.max_seqlen_q * ld * 4 <= kMaxDqAccBytes;
    schedule = balanced && fits ? BackwardSchedule::kPerKvHead : BackwardSchedule::kSplit;
  }
  if (schedule == BackwardSchedule::kPerKvHead) {
    RunPerKvHead(in, kernels, kv_cost, ld, pool);
  } else {
    RunSplit(in, kernels, ld, pool);
  }
}

}  // namespace attnd::cpu
