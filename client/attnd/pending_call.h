// PendingCall: the handle of one asynchronous call of attnd::Client. It owns the call's
// grpc::ClientContext, so it can cancel the call at any time, and lets a caller wait until the
// call's callback has returned. Dropping the handle neither cancels nor leaks the call.
#pragma once

#include <condition_variable>
#include <mutex>

#include <grpcpp/client_context.h>

#include "absl/time/time.h"

namespace attnd {

class PendingCall {
 public:
  PendingCall() = default;
  PendingCall(const PendingCall&) = delete;
  PendingCall& operator=(const PendingCall&) = delete;
  virtual ~PendingCall() = default;

  // Asks gRPC to cancel the call. Its callback then receives CANCELLED, unless the call had already
  // finished. Safe to call at any time, from any thread, any number of times.
  void Cancel() { context_.TryCancel(); }

  // True once the callback has returned.
  bool done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  // Blocks until the callback has returned. Never call it from inside a callback of the same client.
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

  // Like Wait(), giving up after `timeout`; true when the callback has returned.
  bool WaitFor(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [this] { return done_; });
  }

  // The call's context (metadata, peer, ...). Valid as long as this handle lives.
  grpc::ClientContext* context() { return &context_; }

 protected:
  void MarkDone() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
  }

 private:
  grpc::ClientContext context_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

}  // namespace attnd
