// One attention problem of the client round-trip tests: shape, dtype and options, with fresh random
// inputs and the float64 oracle's answer on exactly the values that went over the wire.
#pragma once

#include <cmath>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "server/core/attention_problem.h"

namespace attnd::testing {

struct AttentionCase {
  std::string name;
  DType dtype = DType::kBF16;
  // Dense when seqlens_k is empty: batch x seqlens_q[0] x seqlens_q[1]; packed otherwise.
  int batch = 1;
  int seqlen_q = 0;
  int seqlen_k = 0;
  std::vector<int> packed_q;  // non-empty: packed layout with these sequence lengths
  std::vector<int> packed_k;
  int heads_q = 1;
  int heads_kv = 1;
  int head_dim = 64;
  bool causal = false;
  float softmax_scale = 0.f;  // 0: the daemon's default, 1/sqrt(head_dim)

  AttentionShape Shape() const {
    if (!packed_q.empty()) return PackedShape(packed_q, packed_k, heads_q, heads_kv, head_dim);
    return DenseShape(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim);
  }
  AttentionOptions WireOptions() const {
    AttentionOptions o;
    o.causal = causal;
    o.softmax_scale = softmax_scale;
    return o;
  }
  // The options the oracle needs: the scale resolved as the protocol says.
  AttentionOptions OracleOptions() const {
    AttentionOptions o = WireOptions();
    if (o.softmax_scale == 0.f) o.softmax_scale = 1.f / std::sqrt(static_cast<float>(head_dim));
    return o;
  }
};

inline std::ostream& operator<<(std::ostream& os, const AttentionCase& c) { return os << c.name; }

// Relative L2 bound of an output rounded to `dtype` against the float64 oracle.
inline double OutputTolerance(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return 1e-2;
    case DType::kFP16: return 2e-3;
    case DType::kFP32: return 1e-5;
  }
  return 0;
}

}  // namespace attnd::testing
