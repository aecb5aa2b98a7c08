// Helpers of the batcher tests: TestCall owns one caller's shape and host buffers (any dtype),
// Outcome receives one asynchronous completion.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "server/core/attention_problem.h"
#include "server/core/float16.h"
#include "server/engine/dynamic_batcher.h"

namespace attnd::engine::testing {

struct TestCall {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kFP32;
  std::vector<unsigned char> q, k, v, out, grad_out, grad_q, grad_k, grad_v;
  std::vector<float> lse;
  std::atomic<bool> cancelled{false};
  CallControl control;

  ForwardArgs Forward() {
    ForwardArgs a;
    a.shape = &shape;
    a.options = options;
    a.dtype = dtype;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.out = out.data();
    a.lse = lse.data();
    a.control = control;
    return a;
  }
  BackwardArgs Backward() {
    BackwardArgs a;
    a.shape = &shape;
    a.options = options;
    a.dtype = dtype;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.out = out.data();
    a.lse = lse.data();
    a.grad_out = grad_out.data();
    a.grad_q = grad_q.data();
    a.grad_k = grad_k.data();
    a.grad_v = grad_v.data();
    a.control = control;
    return a;
  }
  float* f(std::vector<unsigned char>& t) { return reinterpret_cast<float*>(t.data()); }
};

inline void StoreRandom(std::vector<unsigned char>& t, int64_t n, DType dtype, std::mt19937& rng, bool integers) {
  t.assign(n * ElementSize(dtype), 0);
  std::uniform_int_distribution<int> ints(-1000, 1000);
  std::uniform_real_distribution<float> reals(-1.f, 1.f);
  for (int64_t i = 0; i < n; ++i) {
    const float x = integers ? static_cast<float>(ints(rng)) : reals(rng);
    if (dtype == DType::kFP32) {
      std::memcpy(t.data() + 4 * i, &x, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(x) : FloatToFp16(x);
      std::memcpy(t.data() + 2 * i, &h, 2);
    }
  }
}

// A call with random inputs (q, k, v, out, lse, grad_out) and outputs filled with 0xAB bytes.
// integers: values are small integers (FP32 arithmetic on them is exact: the fake backend).
inline std::unique_ptr<TestCall> MakeCall(const AttentionShape& shape, uint32_t seed, DType dtype = DType::kFP32,
                                          AttentionOptions options = {false, 0.125f, false}, bool integers = true) {
  auto c = std::make_unique<TestCall>();
  c->shape = shape;
  c->options = options;
  c->dtype = dtype;
  std::mt19937 rng(seed);
  StoreRandom(c->q, shape.q_elements(), dtype, rng, integers);
  StoreRandom(c->k, shape.kv_elements(), dtype, rng, integers);
  StoreRandom(c->v, shape.kv_elements(), dtype, rng, integers);
  StoreRandom(c->grad_out, shape.q_elements(), dtype, rng, integers);
  StoreRandom(c->out, shape.q_elements(), dtype, rng, integers);
  c->lse.resize(shape.lse_elements());
  std::uniform_int_distribution<int> ints(-50, 50);
  for (float& x : c->lse) x = static_cast<float>(ints(rng));
  c->grad_q.assign(shape.q_elements() * ElementSize(dtype), 0xAB);
  c->grad_k.assign(shape.kv_elements() * ElementSize(dtype), 0xAB);
  c->grad_v.assign(shape.kv_elements() * ElementSize(dtype), 0xAB);
  return c;
}

struct Outcome {
  absl::Notification done;
  absl::Status status;
  DynamicBatcher::Completion Callback() {
    return [this](absl::Status s) {
      status = std::move(s);
      done.Notify();
    };
  }
  absl::Status Wait() {
    done.WaitForNotification();
    return status;
  }
};

}  // namespace attnd::engine::testing
