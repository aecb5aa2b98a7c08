// Helpers of the CUDA engine's GPU tests: one call's host tensors and args (CallBuffers, shared with
// the batcher's tests) filled with random normal values rounded to the element type, kept as
// doubles for the float64 oracle; outputs poisoned with NaN bytes so an unwritten element shows.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "server/backend.h"
#include "server/core/attention_problem.h"
#include "server/core/float16.h"
#include "tests/server/engine/call_buffers.h"

namespace attnd::testing {

struct EngineCall : CallBuffers {
  std::vector<double> qd, kd, vd, grad_out_d;  // the inputs as the oracle sees them

  void PoisonOutputs() {
    std::memset(out.data(), 0xFF, out.size());  // NaN in every element type
    std::memset(grad_q.data(), 0xFF, grad_q.size());
    std::memset(grad_k.data(), 0xFF, grad_k.size());
    std::memset(grad_v.data(), 0xFF, grad_v.size());
    for (float& x : lse) x = std::nanf("");
  }
};

inline double ToDouble(const uint8_t* p, DType t) {
  if (t == DType::kFP32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == DType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
}

inline std::vector<double> Decode(const std::vector<uint8_t>& bytes, DType t) {
  std::vector<double> v(bytes.size() / ElementSize(t));
  for (size_t i = 0; i < v.size(); ++i) v[i] = ToDouble(&bytes[i * ElementSize(t)], t);
  return v;
}

inline void FillRandom(std::vector<uint8_t>& bytes, std::vector<double>& values, int64_t n, DType t,
                       std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  bytes.resize(size_t(n) * ElementSize(t));
  values.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    StoreElement(normal(rng), t, &bytes[size_t(i) * ElementSize(t)]);
    values[size_t(i)] = ToDouble(&bytes[size_t(i) * ElementSize(t)], t);
  }
}

inline int64_t LseElements(const AttentionShape& s) {
  return s.packed ? s.lse_elements() : int64_t{s.batch} * s.heads_q * s.max_seqlen_q;
}

// Cheap random 16-bit values in [-1, 1) for large calls whose results are not checked against the
// oracle (no doubles kept): still never zeros.
inline void FillCheap(std::vector<uint8_t>& bytes, int64_t n, DType t, uint64_t seed) {
  bytes.resize(size_t(n) * ElementSize(t));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const float f = static_cast<float>(static_cast<int64_t>(x >> 40) - (int64_t{1} << 23)) / float(1 << 23);
    StoreElement(f, t, &bytes[size_t(i) * ElementSize(t)]);
  }
}

// `oracle`: keep the inputs as doubles for ReferenceAttentionForward (false for large calls).
inline std::unique_ptr<EngineCall> MakeEngineCall(const AttentionShape& shape, DType dtype, bool causal,
                                                  uint32_t seed, bool oracle = true) {
  auto c = std::make_unique<EngineCall>();
  c->shape = shape;
  c->dtype = dtype;
  c->options.causal = causal;
  c->options.softmax_scale = 1.f / std::sqrt(float(shape.head_dim));
  if (oracle) {
    std::mt19937 rng(seed);
    FillRandom(c->q, c->qd, shape.q_elements(), dtype, rng);
    FillRandom(c->k, c->kd, shape.kv_elements(), dtype, rng);
    FillRandom(c->v, c->vd, shape.kv_elements(), dtype, rng);
    FillRandom(c->grad_out, c->grad_out_d, shape.q_elements(), dtype, rng);
  } else {
    FillCheap(c->q, shape.q_elements(), dtype, 4 * uint64_t{seed});
    FillCheap(c->k, shape.kv_elements(), dtype, 4 * uint64_t{seed} + 1);
    FillCheap(c->v, shape.kv_elements(), dtype, 4 * uint64_t{seed} + 2);
    FillCheap(c->grad_out, shape.q_elements(), dtype, 4 * uint64_t{seed} + 3);
  }
  c->out.resize(c->q.size());
  c->grad_q.resize(c->q.size());
  c->grad_k.resize(c->k.size());
  c->grad_v.resize(c->v.size());
  c->lse.resize(size_t(LseElements(shape)));
  c->PoisonOutputs();
  return c;
}

}  // namespace attnd::testing
