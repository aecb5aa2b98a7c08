// Helpers for the service tests: well-formed wire requests with fresh random data, tensor decoding,
// and FakeBackend, a deterministic Backend whose outputs are simple functions of its inputs (so a
// test can tell every byte arrived where it belongs) and which a test can hold at a gate, fail on
// purpose or restrict to some head dims.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attnd/v1/attention.pb.h"
#include "server/backend.h"
#include "server/core/attention_problem.h"
#include "server/core/float16.h"

namespace attnd::testing {

inline v1::DType WireDType(DType t) {
  switch (t) {
    case DType::kBF16: return v1::DTYPE_BF16;
    case DType::kFP16: return v1::DTYPE_FP16;
    case DType::kFP32: return v1::DTYPE_FP32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

// Values in [-1, 1], rounded to `dtype`, little-endian.
inline v1::Tensor RandomTensor(DType dtype, const std::vector<int64_t>& shape, std::mt19937& rng) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  v1::Tensor t;
  t.set_dtype(WireDType(dtype));
  for (int64_t d : shape) t.add_shape(d);
  std::string* data = t.mutable_data();
  data->resize(n * ElementSize(dtype));
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (int64_t i = 0; i < n; ++i) {
    const float x = dist(rng);
    if (dtype == DType::kFP32) {
      std::memcpy(data->data() + 4 * i, &x, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(x) : FloatToFp16(x);
      std::memcpy(data->data() + 2 * i, &h, 2);
    }
  }
  return t;
}

inline std::vector<double> Decode(const std::string& data, DType dtype) {
  const size_t n = data.size() / ElementSize(dtype);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (dtype == DType::kFP32) {
      float f;
      std::memcpy(&f, data.data() + 4 * i, 4);
      out[i] = f;
    } else {
      uint16_t h;
      std::memcpy(&h, data.data() + 2 * i, 2);
      out[i] = dtype == DType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
    }
  }
  return out;
}

inline std::vector<int64_t> Shape(const v1::Tensor& t) { return {t.shape().begin(), t.shape().end()}; }

struct RequestSpec {
  int batch = 2;
  int seqlen_q = 5;
  int seqlen_k = 7;
  int heads_q = 4;
  int heads_kv = 2;
  int head_dim = 16;
  DType dtype = DType::kBF16;
  bool causal = false;
  uint32_t seed = 1;
};

inline v1::ForwardRequest DenseForwardRequest(const RequestSpec& s) {
  std::mt19937 rng(s.seed);
  v1::ForwardRequest r;
  *r.mutable_q() = RandomTensor(s.dtype, {s.batch, s.seqlen_q, s.heads_q, s.head_dim}, rng);
  *r.mutable_k() = RandomTensor(s.dtype, {s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, rng);
  *r.mutable_v() = RandomTensor(s.dtype, {s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, rng);
  r.mutable_params()->set_causal(s.causal);
  return r;
}

// Packed layout; uneven lengths (including an empty key sequence when `seqlens_k` says so).
inline v1::ForwardRequest PackedForwardRequest(const std::vector<int>& seqlens_q, const std::vector<int>& seqlens_k,
                                               int heads_q, int heads_kv, int head_dim, DType dtype,
                                               uint32_t seed = 2) {
  std::mt19937 rng(seed);
  int64_t total_q = 0, total_k = 0;
  v1::ForwardRequest r;
  r.mutable_params()->add_cu_seqlens_q(0);
  r.mutable_params()->add_cu_seqlens_k(0);
  for (size_t b = 0; b < seqlens_q.size(); ++b) {
    total_q += seqlens_q[b];
    total_k += seqlens_k[b];
    r.mutable_params()->add_cu_seqlens_q(static_cast<int32_t>(total_q));
    r.mutable_params()->add_cu_seqlens_k(static_cast<int32_t>(total_k));
  }
  *r.mutable_q() = RandomTensor(dtype, {total_q, heads_q, head_dim}, rng);
  *r.mutable_k() = RandomTensor(dtype, {total_k, heads_kv, head_dim}, rng);
  *r.mutable_v() = RandomTensor(dtype, {total_k, heads_kv, head_dim}, rng);
  return r;
}

inline std::vector<int64_t> WireLseShape(const v1::ForwardRequest& f) {
  const auto& q = f.q().shape();
  if (q.size() == 3) return {q[1], q[0]};
  return {q[0], q[2], q[1]};
}

// A backward request around `forward`'s q/k/v: out, grad_out random in q's dtype, lse random FP32.
inline v1::BackwardRequest BackwardRequestFor(const v1::ForwardRequest& forward, uint32_t seed = 3) {
  std::mt19937 rng(seed);
  const DType dtype = forward.q().dtype() == v1::DTYPE_BF16   ? DType::kBF16
                      : forward.q().dtype() == v1::DTYPE_FP16 ? DType::kFP16
                                                              : DType::kFP32;
  v1::BackwardRequest r;
  *r.mutable_q() = forward.q();
  *r.mutable_k() = forward.k();
  *r.mutable_v() = forward.v();
  *r.mutable_params() = forward.params();
  *r.mutable_out() = RandomTensor(dtype, Shape(forward.q()), rng);
  *r.mutable_grad_out() = RandomTensor(dtype, Shape(forward.q()), rng);
  *r.mutable_lse() = RandomTensor(DType::kFP32, WireLseShape(forward), rng);
  return r;
}

inline v1::ForwardRequest ForwardPart(const v1::BackwardRequest& b) {
  v1::ForwardRequest f;
  *f.mutable_q() = b.q();
  *f.mutable_k() = b.k();
  *f.mutable_v() = b.v();
  *f.mutable_params() = b.params();
  return f;
}

// Shared between a test and the FakeBackend the server owns.
struct FakeBackendState {
  absl::Mutex mu;
  bool open ABSL_GUARDED_BY(mu) = true;  // calls pass the gate
  int entered ABSL_GUARDED_BY(mu) = 0;   // Forward/Backward calls that reached the backend
  int checks ABSL_GUARDED_BY(mu) = 0;    // CheckSupported calls (one per validated request)
  absl::Status fail_with ABSL_GUARDED_BY(mu);  // returned by Forward/Backward when not OK
  std::vector<int> head_dims;            // supported head dims; empty: all (set before Start)

  void Close() { absl::MutexLock l(&mu); open = false; }
  void Open() { absl::MutexLock l(&mu); open = true; }
  int Entered() { absl::MutexLock l(&mu); return entered; }
  int Checks() { absl::MutexLock l(&mu); return checks; }
  bool WaitFor(int FakeBackendState::*counter, int n, absl::Duration timeout) {
    absl::MutexLock l(&mu);
    auto reached = [this, counter, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return this->*counter >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }
};

// Forward: out = q (bytes), lse[i] = i * softmax_scale. Backward: grad_q = grad_out,
// grad_k = k, grad_v = v (bytes). Identity maps make misplaced or truncated buffers visible.
class FakeBackend final : public Backend {
 public:
  explicit FakeBackend(std::shared_ptr<FakeBackendState> state) : state_(std::move(state)) {}

  std::string_view name() const override { return "fake"; }
  std::vector<DeviceDescription> Devices() const override {
    DeviceDescription d;
    d.name = "fake device";
    d.total_memory_bytes = 1 << 20;
    d.multiprocessors = 3;
    d.compute_capability = "0.1";
    return {d};
  }
  std::vector<int> SupportedHeadDims() const override { return state_->head_dims; }
  absl::Status CheckSupported(const AttentionShape& shape, DType) const override {
    absl::MutexLock l(&state_->mu);
    ++state_->checks;
    const auto& dims = state_->head_dims;
    if (!dims.empty() && std::find(dims.begin(), dims.end(), shape.head_dim) == dims.end()) {
      return absl::InvalidArgumentError("q.shape (head_dim): not supported by the fake backend");
    }
    return absl::OkStatus();
  }
  absl::Status Forward(const ForwardArgs& a) override {
    if (absl::Status s = Enter(); !s.ok()) return s;
    std::memcpy(a.out, a.q, a.shape->q_elements() * ElementSize(a.dtype));
    for (int64_t i = 0; i < a.shape->lse_elements(); ++i) a.lse[i] = static_cast<float>(i) * a.options.softmax_scale;
    return absl::OkStatus();
  }
  absl::Status Backward(const BackwardArgs& a) override {
    if (absl::Status s = Enter(); !s.ok()) return s;
    std::memcpy(a.grad_q, a.grad_out, a.shape->q_elements() * ElementSize(a.dtype));
    std::memcpy(a.grad_k, a.k, a.shape->kv_elements() * ElementSize(a.dtype));
    std::memcpy(a.grad_v, a.v, a.shape->kv_elements() * ElementSize(a.dtype));
    return absl::OkStatus();
  }

 private:
  absl::Status Enter() {
    absl::MutexLock l(&state_->mu);
    ++state_->entered;
    state_->mu.Await(absl::Condition(&state_->open));
    return state_->fail_with;
  }
  std::shared_ptr<FakeBackendState> state_;
};

}  // namespace attnd::testing
