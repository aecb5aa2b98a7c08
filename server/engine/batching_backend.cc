#include "server/engine/batching_backend.h"

#include <utility>

#include "absl/synchronization/notification.h"
#include "server/backend_stats.h"

namespace attnd {

struct BatchingBackend::Waiter {
  absl::Notification done;
  absl::Status status;  // written before done.Notify()
  engine::DynamicBatcher::Completion Completion() {
    return [this](absl::Status s) {
      status = std::move(s);
      done.Notify();
    };
  }
};

BatchingBackend::BatchingBackend(std::unique_ptr<Backend> inner, const engine::BatcherOptions& options)
    : BackendDecorator(std::move(inner)), batcher_(std::make_unique<engine::DynamicBatcher>(inner_.get(), options)) {}

BatchingBackend::~BatchingBackend() { batcher_.reset(); }

void BatchingBackend::CollectStats(BackendStats& stats) const {
  stats.has_batcher = true;
  stats.batcher.Merge(batcher_->Stats());
  inner_->CollectStats(stats);
}

absl::Status BatchingBackend::Forward(const ForwardArgs& args) {
  Waiter waiter;
  return Wait(batcher_->SubmitForward(args, waiter.Completion()), args.control, waiter);
}

absl::Status BatchingBackend::Backward(const BackwardArgs& args) {
  Waiter waiter;
  return Wait(batcher_->SubmitBackward(args, waiter.Completion()), args.control, waiter);
}

absl::Status BatchingBackend::Wait(engine::DynamicBatcher::Ticket ticket, const CallControl& control,
                                   Waiter& waiter) {
  if (ticket != 0 && control.deadline != std::chrono::system_clock::time_point::max() &&
      !waiter.done.WaitForNotificationWithDeadline(absl::FromChrono(control.deadline))) {
    // Still queued: take it back now rather than when an executor next looks. Already computing:
    // Withdraw refuses and the call completes as usual below.
    batcher_->Withdraw(ticket, absl::DeadlineExceededError(
                                   "deadline passed while the call waited in the batch queue; it was not computed"));
  }
  waiter.done.WaitForNotification();
  return waiter.status;
}

}  // namespace attnd
