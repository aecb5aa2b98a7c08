// The daemon's batcher flags and the one call main() needs to honour them:
//   --batching, --max_queue_delay_us, --max_batch_tokens, --max_batch_requests,
//   --max_queue_requests, --batch_executors
// Kept apart from the batcher so that tests and embedders link no flags.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "server/backend.h"
#include "server/engine/dynamic_batcher.h"

namespace attnd {

// INVALID_ARGUMENT naming the flag when one is out of range.
absl::StatusOr<engine::BatcherOptions> BatcherOptionsFromFlags();

// `backend` wrapped in a BatchingBackend configured by the flags, or unchanged with --nobatching.
// `all_backward_deterministic`: the backend forces deterministic backward (--deterministic).
absl::StatusOr<std::unique_ptr<Backend>> WrapWithBatcherFromFlags(std::unique_ptr<Backend> backend,
                                                                  bool all_backward_deterministic = false);

}  // namespace attnd
