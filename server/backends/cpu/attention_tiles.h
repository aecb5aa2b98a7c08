// What the forward and backward loops share: the plain parameters of one call, the tile sizes,
// the causal geometry of a sequence, and per-thread scratch carved into tiles.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "server/core/attention_problem.h"

namespace attnd::cpu {

// Query rows and key rows per tile. A 64 x 64 score tile and 64-row operand tiles of up to 256
// floats stay within L2 (about 200 KiB at head_dim 256), and the work per tile (64*64*d FMAs)
// dwarfs the per-tile conversions and bookkeeping.
inline constexpr int kBlockQ = 64;
inline constexpr int kBlockK = 64;
// The forward converts every key tile once per query tile, so its query tiles are taller: at
// 128 rows the conversions cost half as much per FMA (measured: 1x1024x16x128 bf16 forward
// 36 -> 32 ms with AVX-512; 256 rows gained another 5% but halves the tasks to spread).
inline constexpr int kForwardBlockQ = 128;

inline constexpr int RoundUp(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }
inline constexpr int64_t CeilDiv(int64_t x, int64_t y) { return (x + y - 1) / y; }

// Pointers, strides and sizes of one call, in elements. Built once per call from the shape.
struct AttentionParams {
  const AttentionShape* shape = nullptr;
  DType dtype = DType::kBF16;
  bool causal = false;
  float scale = 0.f;
  int head_dim = 0;
  int heads_q = 0;
  int heads_kv = 0;
  int group = 1;           // query heads per KV head; query head h reads KV head h / group
  int64_t q_stride = 0;    // elements between consecutive rows of q, out, dO, dQ
  int64_t kv_stride = 0;   // elements between consecutive rows of k, v, dK, dV

  static AttentionParams From(const AttentionShape& s, DType dtype, const AttentionOptions& o) {
    AttentionParams p;
    p.shape = &s;
    p.dtype = dtype;
    p.causal = o.causal;
    p.scale = o.softmax_scale;
    p.head_dim = s.head_dim;
    p.heads_q = s.heads_q;
    p.heads_kv = s.heads_kv;
    p.group = s.heads_q / s.heads_kv;
    p.q_stride = int64_t{s.heads_q} * s.head_dim;
    p.kv_stride = int64_t{s.heads_kv} * s.head_dim;
    return p;
  }
  // Element offset of (row, head) in q-shaped and kv-shaped buffers.
  int64_t QOffset(int64_t row, int h) const { return row * q_stride + int64_t{h} * head_dim; }
  int64_t KvOffset(int64_t row, int h) const { return row * kv_stride + int64_t{h} * head_dim; }
};

// Which keys each query row of one sequence sees. Causal masks are aligned to the bottom-right
// corner: query i sees key j iff j <= i + seqlen_k - seqlen_q.
struct SequenceMask {
  int seqlen_q = 0;
  int seqlen_k = 0;
  bool causal = false;

  // Query i sees keys [0, KeyEnd(i)).
  int KeyEnd(int i) const {
    if (!causal) return seqlen_k;
    return std::clamp(i + seqlen_k - seqlen_q + 1, 0, seqlen_k);
  }
  // The first query row that sees key j (seqlen_q when none does).
  int FirstQueryRow(int j) const {
    if (!causal) return 0;
    return std::clamp(j - (seqlen_k - seqlen_q), 0, seqlen_q);
  }
  // Whether any row of [q0, q0 + rows) sees any key of [k0, ...): the tile pair has work.
  bool TilesMeet(int q0, int rows, int k0) const { return KeyEnd(q0 + rows - 1) > k0; }
};

// Indices 0..n-1 by decreasing cost (stable): tasks are handed out in this order, so the long
// ones (late causal tiles, long sequences) start first instead of finishing last on one thread.
inline std::vector<int64_t> LongestFirst(const std::vector<double>& cost) {
  std::vector<int64_t> order(cost.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[size_t(a)] > cost[size_t(b)]; });
  return order;
}

// Per-thread scratch: one allocation, carved into 64-byte aligned float tiles.
class TileScratch {
 public:
  // Reserves room for tiles of the given float counts (each rounded up to 16 floats).
  explicit TileScratch(std::initializer_list<int64_t> sizes) {
    int64_t total = 16;
    for (int64_t n : sizes) total += RoundUp16(n);
    storage_.assign(static_cast<size_t>(total), 0.f);
    const auto addr = reinterpret_cast<uintptr_t>(storage_.data());
    next_ = storage_.data() + ((64 - addr % 64) % 64) / sizeof(float);
  }
  // The next tile of n floats (uninitialised contents).
  float* Take(int64_t n) {
    float* tile = next_;
    next_ += RoundUp16(n);
    return tile;
  }

 private:
  static int64_t RoundUp16(int64_t n) { return (n + 15) / 16 * 16; }
  std::vector<float> storage_;
  float* next_ = nullptr;
};

}  // namespace attnd::cpu
