#include "server/engine/batcher_flags.h"

#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/engine/batching_backend.h"

ABSL_FLAG(bool, batching, true,
          "queue calls and pack compatible ones into one packed-varlen backend call (see the max_* flags)");
ABSL_FLAG(int64_t, max_queue_delay_us, 0,
          "longest a call waits in the batch queue for compatible company, in microseconds; 0: none (an idle "
          "executor takes a call at once, with whatever compatible calls already wait)");
ABSL_FLAG(int64_t, max_batch_tokens, 16384,
          "most query rows (and key rows) in one packed batch; a larger call runs alone");
ABSL_FLAG(int, max_batch_requests, 256, "most calls in one packed batch; 1 turns packing off");
ABSL_FLAG(int, max_queue_requests, 1024,
          "most calls waiting in the batch queue; more are refused at once with RESOURCE_EXHAUSTED");
ABSL_FLAG(int, batch_executors, 2, "batches computed at once (threads that take batches from the queue)");
ABSL_FLAG(bool, lone_calls_on_caller, true,
          "with --max_queue_delay_us=0, a call that finds the batch queue empty and an executor free is computed "
          "by the worker that received it, without a hand-off to an executor and back");

namespace attnd {

absl::StatusOr<engine::BatcherOptions> BatcherOptionsFromFlags() {
  engine::BatcherOptions o;
  const int64_t delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  if (delay_us < 0 || delay_us > 60'000'000) {
    return absl::InvalidArgumentError(absl::StrCat("--max_queue_delay_us ", delay_us, " must be in 0..60000000"));
  }
  o.max_queue_delay = absl::Microseconds(delay_us);
  o.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  o.max_batch_requests = absl::GetFlag(FLAGS_max_batch_requests);
  o.max_queue_requests = absl::GetFlag(FLAGS_max_queue_requests);
  o.executor_threads = absl::GetFlag(FLAGS_batch_executors);
  o.lone_calls_on_caller = absl::GetFlag(FLAGS_lone_calls_on_caller);
  if (absl::Status s = engine::ValidateBatcherOptions(o); !s.ok()) {
    // The options are named like their flags, except executor_threads (--batch_executors).
    return absl::InvalidArgumentError(
        absl::StrCat("--", absl::StrReplaceAll(s.message(), {{"executor_threads", "batch_executors"}})));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<Backend>> WrapWithBatcherFromFlags(std::unique_ptr<Backend> backend,
                                                                  bool all_backward_deterministic) {
  if (!absl::GetFlag(FLAGS_batching)) return backend;
  absl::StatusOr<engine::BatcherOptions> options = BatcherOptionsFromFlags();
  if (!options.ok()) return options.status();
  options->all_backward_deterministic = all_backward_deterministic;
  return std::unique_ptr<Backend>(std::make_unique<BatchingBackend>(std::move(backend), *options));
}

}  // namespace attnd
