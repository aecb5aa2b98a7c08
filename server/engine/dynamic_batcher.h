// DynamicBatcher: a bounded queue in front of a Backend that packs compatible calls (same
// BatchKey) into one packed-varlen call of the backend, run by a few executor threads.
//
// Policy, in the order an executor applies it each time it looks at the queue:
//   1. Drop: a queued call whose deadline has passed completes with DEADLINE_EXCEEDED, one whose
//      cancellation flag is raised with CANCELLED; neither is ever computed. (Checked when a call
//      is submitted, whenever an executor looks at the queue, and at each queued deadline while an
//      executor is idle; a raised flag is noticed on the next look, at the latest when the call's
//      batch forms, so a cancelled call is still never computed.)
//   2. Group queued calls by BatchKey, oldest first. A group is ready when its oldest call has
//      waited max_queue_delay, or it holds a full batch (max_batch_tokens rows of q or of k,
//      or max_batch_requests calls), or its call is one that runs alone.
//   3. The oldest ready group becomes a batch: its oldest call, then later calls of the group in
//      arrival order that still fit under max_batch_tokens (q rows and k rows each) and
//      max_batch_requests. A call larger than max_batch_tokens (or not packable, see
//      batch_packing.h) runs alone, straight on its own buffers (no copy).
//   max_queue_delay = 0: nothing waits for company. An idle executor takes a call the moment it is
//   queued, together with whatever compatible calls are already waiting; so batches still form
//   under load (while every executor is busy the queue fills), and cost no latency when idle.
//   max_batch_requests = 1 turns packing off entirely.
//
// Admission: at most max_queue_requests calls wait (calls being computed do not count); one more
// completes at once with RESOURCE_EXHAUSTED, so memory never grows without bound. After shutdown
// began, UNAVAILABLE.
//
// Deterministic backward (AttentionOptions::deterministic, or all_backward_deterministic) always
// runs alone: the backward kernels partition their sums by the size of the launch (GQA head splits,
// dQ slices per wave of CTAs), so a call packed with others gets other bits than alone, which would
// break "identical bits run to run" (measured on the H100: packed != alone for deterministic GQA
// backward, while packed forward equals alone bit for bit).
//
// Memory: every call that fits in a batch, packed or alone, reaches the backend with
// reserve_rows = max_batch_tokens, so a backend that allocates per call (CUDA) sizes its block
// for a full batch once instead of for each batch size it meets; the packers' own host buffers
// are sized for a full batch too (batch_packing.h). Steady traffic then allocates nothing, whatever
// the batch composition.
//
// Lone calls (lone_calls_on_caller): with max_queue_delay = 0 a call that finds the queue empty and
// an executor slot free would be taken by an idle executor at once and computed alone anyway; the
// submitting thread computes it itself instead, in that slot (it counts against executor_threads),
// which saves waking an executor and being woken back: tens of microseconds of a small call.
//
// A packed batch that fails is rerun one call at a time, so that one bad call cannot fail its
// neighbours; each caller gets its own call's status.
//
// Thread-safe. Completions run on an executor thread (or the submitting thread when the call is
// refused at once or computed there, see "Lone calls"), exactly once per submitted call, outside
// every lock of the batcher; they must not block for long. The caller's buffers (and the shape they point to) must stay valid until its
// completion runs.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/backend.h"
#include "server/engine/batch_key.h"
#include "server/engine/batcher_stats.h"

namespace attnd::engine {

struct BatcherOptions {
  absl::Duration max_queue_delay = absl::ZeroDuration();  // longest a call waits for company
  int64_t max_batch_tokens = 16384;    // rows of q (and, separately, of k/v) in one packed call
  int max_batch_requests = 256;        // calls in one packed call; 1 = no packing
  int max_queue_requests = 1024;       // calls waiting; beyond: RESOURCE_EXHAUSTED at once
  int executor_threads = 2;            // batches computed at once
  // The backend makes every backward deterministic (attnd --deterministic): then no backward call
  // is packed either (see "Deterministic backward" above).
  bool all_backward_deterministic = false;
  // A call submitted while nothing waits, max_queue_delay is 0 and fewer than executor_threads
  // batches compute runs on the submitting thread, inside Submit (see "Lone calls" above): no
  // hand-off to an executor and back. For callers that block until their call completes anyway
  // (BatchingBackend); off, Submit never computes.
  bool lone_calls_on_caller = false;
};

// INVALID_ARGUMENT naming the option when one is out of range.
absl::Status ValidateBatcherOptions(const BatcherOptions& options);

class DynamicBatcher {
 public:
  using Completion = absl::AnyInvocable<void(absl::Status) &&>;
  using Ticket = uint64_t;  // 0: the call was completed during Submit (refused or dropped)

  // `backend` must outlive the batcher. Options must pass ValidateBatcherOptions (checked: a
  // bad option is clamped to the nearest valid value).
  DynamicBatcher(Backend* backend, const BatcherOptions& options);
  ~DynamicBatcher();  // Stop()

  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues one call; `done` runs exactly once with its status. The deadline and the cancellation
  // flag come from args.control.
  Ticket SubmitForward(const ForwardArgs& args, Completion done);
  Ticket SubmitBackward(const BackwardArgs& args, Completion done);

  // Takes a call back if it is still queued: it completes with `status` (on this thread) and true
  // is returned. False when it is already being computed or done (its completion runs as usual).
  bool Withdraw(Ticket ticket, absl::Status status);

  // Refuses new calls, computes every queued one, joins the executors. Idempotent.
  void Stop();

  BatcherStats Stats() const;
  const BatcherOptions& options() const { return options_; }

 private:
  struct Call;
  struct Group;
  struct Packers;

  Ticket Submit(Call&& call);
  void ExecutorLoop();
  // Under mu_: moves dropped calls to `dropped` and the next batch to `batch`; waits while there
  // is neither. False when stopping and the queue is empty.
  bool NextBatch(std::list<Call>& batch, std::list<Call>& dropped) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `packers` may be null for a batch of one call.
  void RunBatch(std::list<Call>& batch, Packers* packers);
  // Under mu_: the statistics of a batch taken to be computed.
  void CountBatch(int calls, int64_t q_rows, bool alone) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunAlone(const Call& call);
  // ForwardArgs::reserve_rows for a call: max_batch_tokens while packing is on and the call fits
  // in a batch (then a backend sizes its memory for any batch once, see device_call_layout.h).
  int64_t ReserveRows(const Call& call) const;
  absl::Status RunPacked(const std::list<Call>& batch, Packers& packers);

  Backend* const backend_;
  const BatcherOptions options_;

  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  std::list<Call> queue_ ABSL_GUARDED_BY(mu_);  // arrival order
  int computing_ ABSL_GUARDED_BY(mu_) = 0;      // batches being computed (by executors or callers)
  std::vector<Group> groups_ ABSL_GUARDED_BY(mu_);  // scratch of NextBatch
  Ticket next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  BatcherStats stats_ ABSL_GUARDED_BY(mu_);

  std::vector<std::thread> executors_;
  absl::Mutex stop_mu_;  // serializes Stop()
};

}  // namespace attnd::engine
