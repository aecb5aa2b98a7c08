// Helpers of the batcher tests: TestCall owns one caller's shape and host buffers (any dtype:
// call_buffers.h), Outcome receives one asynchronous completion.
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
#include "server/engine/dynamic_batcher.h"
#include "tests/server/engine/call_buffers.h"

namespace attnd::engine::testing {

// A caller of the batcher tests; `cancelled` is its flag for control.cancelled.
struct TestCall : attnd::testing::CallBuffers {
  std::atomic<bool> cancelled{false};
  float* f(std::vector<unsigned char>& t) { return reinterpret_cast<float*>(t.data()); }
};

inline void StoreRandom(std::vector<unsigned char>& t, int64_t n, DType dtype, std::mt19937& rng, bool integers) {
  t.assign(n * ElementSize(dtype), 0);
  std::uniform_int_distribution<int> ints(-1000, 1000);
  std::uniform_real_distribution<float> reals(-1.f, 1.f);
  for (int64_t i = 0; i < n; ++i) {
    const float x = integers ? static_cast<float>(ints(rng)) : reals(rng);
    attnd::testing::StoreElement(x, dtype, t.data() + i * ElementSize(dtype));
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
