// BatchingBackend: a Backend that puts a DynamicBatcher in front of another Backend.
//
// Why a decorator rather than an async API for the service: the front end already computes each
// call on a worker thread that calls Backend::Forward/Backward and writes the result straight into
// the response's bytes. Wrapping the backend keeps that path unchanged (one line in main.cc) and
// keeps the zero-copy output: the worker blocks until its batch has completed and its rows were
// copied into its own buffers. The cost is one blocked worker per queued call, so the worker pool
// must be at least as large as the number of calls that should be able to share a batch
// (--workers >= executors * typical batch size); blocked workers are cheap threads. The async
// DynamicBatcher API underneath stays available for a front end that wants no blocked threads.
//
// Deadline and cancellation come from ForwardArgs/BackwardArgs::control. A caller whose deadline
// passes while its call is queued gets DEADLINE_EXCEEDED at that moment (its call is withdrawn);
// a call already computing runs to completion (its buffers are in use).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "server/backend.h"
#include "server/engine/backend_decorator.h"
#include "server/engine/dynamic_batcher.h"

namespace attnd {

class BatchingBackend final : public engine::BackendDecorator {
 public:
  BatchingBackend(std::unique_ptr<Backend> inner, const engine::BatcherOptions& options);
  ~BatchingBackend() override;  // computes every queued call, then stops the executors

  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;
  // The batcher's counters (added to those of other batchers, one per GPU), then the inner's.
  void CollectStats(BackendStats& stats) const override;

  engine::BatcherStats Stats() const { return batcher_->Stats(); }
  const engine::BatcherOptions& options() const { return batcher_->options(); }

 private:
  struct Waiter;
  absl::Status Wait(engine::DynamicBatcher::Ticket ticket, const CallControl& control, Waiter& waiter);

  std::unique_ptr<engine::DynamicBatcher> batcher_;  // destroyed before the base's inner_, which it uses
};

}  // namespace attnd
