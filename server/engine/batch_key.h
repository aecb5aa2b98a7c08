// BatchKey: what two calls must share to run as one packed-varlen launch. Everything a kernel
// takes as a launch-wide constant is in it; sequence lengths, batch sizes and the caller's layout
// (dense or packed) are not, since packing turns every caller into sequences of one varlen batch.
#pragma once

#include <cstdint>
#include <cstring>

#include "server/core/attention_problem.h"

namespace attnd::engine {

enum class Direction : uint8_t { kForward, kBackward };

struct BatchKey {
  Direction direction = Direction::kForward;
  DType dtype = DType::kBF16;
  int heads_q = 0;
  int heads_kv = 0;
  int head_dim = 0;
  bool causal = false;
  uint32_t softmax_scale_bits = 0;  // compared bit for bit: 1/sqrt(d) computed two ways must match exactly
  bool deterministic = false;       // backward only; the forward has one schedule either way

  friend bool operator==(const BatchKey& a, const BatchKey& b) {
    return a.direction == b.direction && a.dtype == b.dtype && a.heads_q == b.heads_q &&
           a.heads_kv == b.heads_kv && a.head_dim == b.head_dim && a.causal == b.causal &&
           a.softmax_scale_bits == b.softmax_scale_bits && a.deterministic == b.deterministic;
  }
  friend bool operator!=(const BatchKey& a, const BatchKey& b) { return !(a == b); }
};

inline BatchKey MakeBatchKey(Direction direction, const AttentionShape& shape, const AttentionOptions& options,
                             DType dtype) {
  BatchKey key;
  key.direction = direction;
  key.dtype = dtype;
  key.heads_q = shape.heads_q;
  key.heads_kv = shape.heads_kv;
  key.head_dim = shape.head_dim;
  key.causal = options.causal;
  std::memcpy(&key.softmax_scale_bits, &options.softmax_scale, sizeof(float));
  key.deterministic = direction == Direction::kBackward && options.deterministic;
  return key;
}

}  // namespace attnd::engine
