// One attention test problem: a shape (dense or packed), options, random rounded inputs, and
// helpers that run the CPU backend on it with poisoned outputs and the float64 oracle beside it.
#pragma once

#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/backend.h"
#include "tests/server/backends/cpu_backend_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd::testing {

struct AttentionCase {
  std::string name;
  std::vector<int> seqlens_q;  // one per sequence; all equal unless packed
  std::vector<int> seqlens_k;
  int heads_q = 1;
  int heads_kv = 1;
  int head_dim = 64;
  bool causal = false;
  bool packed = false;
  float scale = 0.f;  // 0: 1/sqrt(head_dim)
};

// How gtest prints a case in failure messages.
inline void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << c.name << " (" << c.seqlens_q.size() << " sequences, heads " << c.heads_q << "/" << c.heads_kv
      << ", head_dim " << c.head_dim << (c.causal ? ", causal" : "") << (c.packed ? ", packed" : "") << ")";
}

inline AttentionShape ShapeOf(const AttentionCase& c) {
  if (c.packed) return PackedShape(c.seqlens_q, c.seqlens_k, c.heads_q, c.heads_kv, c.head_dim);
  return DenseShape(static_cast<int>(c.seqlens_q.size()), c.seqlens_q[0], c.seqlens_k[0], c.heads_q,
                    c.heads_kv, c.head_dim);
}

struct Problem {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kFP32;
  HostTensor q, k, v, dout;
};

inline Problem MakeProblem(const AttentionCase& c, DType dtype, uint64_t seed) {
  Problem p;
  p.shape = ShapeOf(c);
  p.options.causal = c.causal;
  p.options.softmax_scale = c.scale != 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  p.dtype = dtype;
  std::mt19937_64 rng(seed);
  p.q = RandomTensor(dtype, p.shape.q_elements(), rng);
  p.k = RandomTensor(dtype, p.shape.kv_elements(), rng);
  p.v = RandomTensor(dtype, p.shape.kv_elements(), rng);
  p.dout = RandomTensor(dtype, p.shape.q_elements(), rng);
  return p;
}

struct ForwardOutputs {
  HostTensor out;
  std::vector<float> lse;
};

// Runs the backend's forward into NaN-poisoned buffers.
inline ForwardOutputs RunForward(Backend& backend, const Problem& p) {
  ForwardOutputs r;
  r.out = PoisonedTensor(p.dtype, p.shape.q_elements());
  r.lse.assign(static_cast<size_t>(LseLength(p.shape)), std::numeric_limits<float>::quiet_NaN());
  ForwardArgs a;
  a.shape = &p.shape;
  a.options = p.options;
  a.dtype = p.dtype;
  a.q = p.q.data();
  a.k = p.k.data();
  a.v = p.v.data();
  a.out = r.out.data();
  a.lse = r.lse.data();
  EXPECT_TRUE(backend.Forward(a).ok());
  return r;
}

struct BackwardOutputs {
  HostTensor dq, dk, dv;
};

// Runs the backend's backward (given the forward's out and lse) into NaN-poisoned buffers.
inline BackwardOutputs RunBackward(Backend& backend, const Problem& p, const HostTensor& out,
                                   const std::vector<float>& lse) {
  BackwardOutputs r;
  r.dq = PoisonedTensor(p.dtype, p.shape.q_elements());
  r.dk = PoisonedTensor(p.dtype, p.shape.kv_elements());
  r.dv = PoisonedTensor(p.dtype, p.shape.kv_elements());
  BackwardArgs a;
  a.shape = &p.shape;
  a.options = p.options;
  a.dtype = p.dtype;
  a.q = p.q.data();
  a.k = p.k.data();
  a.v = p.v.data();
  a.out = out.data();
  a.lse = lse.data();
  a.grad_out = p.dout.data();
  a.grad_q = r.dq.data();
  a.grad_k = r.dk.data();
  a.grad_v = r.dv.data();
  EXPECT_TRUE(backend.Backward(a).ok());
  return r;
}

// The oracle's forward on the problem's (rounded) inputs, with out rounded to the problem's dtype
// and lse to float: what a correct forward hands to the backward.
inline ForwardOutputs OracleForwardOutputs(const Problem& p, const ReferenceForward& ref) {
  ForwardOutputs r;
  r.out = Encode(p.dtype, ref.out);
  r.lse.assign(ref.lse.begin(), ref.lse.end());
  return r;
}

inline bool SameBytes(const HostTensor& a, const HostTensor& b) { return a.bytes == b.bytes; }

inline bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace attnd::testing
