// Backend decorators that let the client tests steer the daemon from below:
//   GatedBackend holds every call at a gate until the test opens it, so a test knows calls are in
//   flight inside the daemon (for cancellation and shutdown); CorruptingBackend perturbs every
//   output, so a test can prove a check actually catches wrong numbers; ByteMixingBackend makes
//   every output byte a function of input bytes, so a test can check each byte a transport carried.
#pragma once

#include <memory>
#include <string_view>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/backend.h"

namespace attnd::testing {

class GatedBackend final : public Backend {
 public:
  explicit GatedBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  // Blocks until `n` calls have entered the backend (including those already released); false after
  // `timeout`.
  bool WaitForEntered(int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return entered_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }
  // Lets every held and future call through.
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  int entered() {
    absl::MutexLock lock(&mu_);
    return entered_;
  }

  std::string_view name() const override { return inner_->name(); }
  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    return inner_->CheckSupported(shape, dtype);
  }
  absl::Status Forward(const ForwardArgs& args) override {
    Enter();
    return inner_->Forward(args);
  }
  absl::Status Backward(const BackwardArgs& args) override {
    Enter();
    return inner_->Backward(args);
  }

 private:
  void Enter() {
    absl::MutexLock lock(&mu_);
    ++entered_;
    mu_.Await(absl::Condition(&open_));
  }

  std::unique_ptr<Backend> inner_;
  absl::Mutex mu_;
  int entered_ ABSL_GUARDED_BY(mu_) = 0;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
};

// Adds 0.5 to every element of out (in its dtype's bytes, via the float value) and of lse, and scales
// every gradient by 1.5: plausible-looking numbers that are wrong.
class CorruptingBackend final : public Backend {
 public:
  explicit CorruptingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  std::string_view name() const override { return inner_->name(); }
  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    return inner_->CheckSupported(shape, dtype);
  }
  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;

 private:
  std::unique_ptr<Backend> inner_;
};

// Forward: out = q ^ k ^ v byte by byte, lse = q's first bytes. Backward: grad_q = q ^ grad_out,
// grad_k = k ^ out, grad_v = v. Needs q and k/v of one size (heads_q == heads_kv, seqlen_q ==
// seqlen_k): FAILED_PRECONDITION otherwise.
class ByteMixingBackend final : public Backend {
 public:
  std::string_view name() const override { return "byte-mixing"; }
  absl::Status CheckSupported(const AttentionShape& shape, DType) const override;
  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;
};

}  // namespace attnd::testing
