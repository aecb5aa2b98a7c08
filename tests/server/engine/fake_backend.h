// FakeBackend: a Backend for the batcher's tests. It records the shape of every call it receives,
// can hold calls at a gate (so a test controls when an executor is busy, with no sleeps), and
// computes outputs that are cheap, exact and say which input rows they came from (FP32 only):
//   forward:  out = q,  lse(b, h, i) = q[row, h, 0] + h
//   backward: grad_q = q + 2 grad_out + 4 out + lse(row, h),  grad_k = k + 1,  grad_v = 2 v
// A call whose q holds kPoison anywhere fails with INVALID_ARGUMENT (a "bad request").
#pragma once

#include <cstring>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/backend.h"
#include "server/engine/batch_key.h"

namespace attnd::engine::testing {

inline constexpr float kPoison = -7777.f;

struct RecordedCall {
  Direction direction;
  AttentionShape shape;
  DType dtype;
  AttentionOptions options;
  int64_t reserve_rows = 0;
  TensorPlacement placement;
};

class FakeBackend final : public Backend {
 public:
  std::string_view name() const override { return "fake"; }
  absl::Status CheckSupported(const AttentionShape&, DType) const override { return absl::OkStatus(); }

  absl::Status Forward(const ForwardArgs& a) override {
    Enter(Direction::kForward, a.shape, a.dtype, a.options, a.reserve_rows, a.placement);
    const AttentionShape& s = *a.shape;
    if (!Consistent(s)) return absl::InvalidArgumentError("cu_seqlens do not match the shape");
    std::memcpy(a.out, a.q, s.q_elements() * ElementSize(a.dtype));
    if (a.dtype != DType::kFP32) return absl::OkStatus();
    const auto* q = static_cast<const float*>(a.q);
    if (Poisoned(q, s.q_elements())) return absl::InvalidArgumentError("poisoned q");
    for (int b = 0; b < s.batch; ++b)
      for (int h = 0; h < s.heads_q; ++h)
        for (int i = 0; i < s.seqlen_q(b); ++i)
          a.lse[s.LseIndex(b, h, i)] = q[(int64_t{s.cu_seqlens_q[b]} + i) * s.heads_q * s.head_dim + h * s.head_dim] + h;
    return absl::OkStatus();
  }

  absl::Status Backward(const BackwardArgs& a) override {
    Enter(Direction::kBackward, a.shape, a.dtype, a.options, a.reserve_rows, a.placement);
    const AttentionShape& s = *a.shape;
    if (!Consistent(s)) return absl::InvalidArgumentError("cu_seqlens do not match the shape");
    if (a.dtype != DType::kFP32) return absl::OkStatus();
    const auto* q = static_cast<const float*>(a.q);
    if (Poisoned(q, s.q_elements())) return absl::InvalidArgumentError("poisoned q");
    const auto* k = static_cast<const float*>(a.k);
    const auto* v = static_cast<const float*>(a.v);
    const auto* out = static_cast<const float*>(a.out);
    const auto* dout = static_cast<const float*>(a.grad_out);
    auto* dq = static_cast<float*>(a.grad_q);
    for (int b = 0; b < s.batch; ++b)
      for (int i = 0; i < s.seqlen_q(b); ++i)
        for (int h = 0; h < s.heads_q; ++h)
          for (int d = 0; d < s.head_dim; ++d) {
            const int64_t e = ((int64_t{s.cu_seqlens_q[b]} + i) * s.heads_q + h) * s.head_dim + d;
            dq[e] = q[e] + 2 * dout[e] + 4 * out[e] + a.lse[s.LseIndex(b, h, i)];
          }
    for (int64_t e = 0; e < s.kv_elements(); ++e) {
      static_cast<float*>(a.grad_k)[e] = k[e] + 1;
      static_cast<float*>(a.grad_v)[e] = 2 * v[e];
    }
    return absl::OkStatus();
  }

  // Calls entering from now on wait until Release().
  void Hold() {
    absl::MutexLock lock(&mu_);
    held_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    held_ = false;
  }
  // Blocks until `n` calls have entered (held or not).
  void WaitForEntered(int n) {
    absl::MutexLock lock(&mu_);
    auto entered = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return entered_ >= n; };
    mu_.Await(absl::Condition(&entered));
  }
  std::vector<RecordedCall> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  void Enter(Direction d, const AttentionShape* shape, DType dtype, const AttentionOptions& options,
             int64_t reserve_rows, const TensorPlacement& placement) {
    absl::MutexLock lock(&mu_);
    calls_.push_back(RecordedCall{d, *shape, dtype, options, reserve_rows, placement});
    ++entered_;
    mu_.Await(absl::Condition(+[](bool* held) { return !*held; }, &held_));
  }
  static bool Consistent(const AttentionShape& s) {
    if (s.cu_seqlens_q.back() != s.total_q || s.cu_seqlens_k.back() != s.total_k) return false;
    for (int b = 0; b < s.batch; ++b)
      if (s.seqlen_q(b) < 0 || s.seqlen_q(b) > s.max_seqlen_q) return false;
    return true;
  }
  static bool Poisoned(const float* q, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
      if (q[i] == kPoison) return true;
    return false;
  }

  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  int entered_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<RecordedCall> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd::engine::testing
