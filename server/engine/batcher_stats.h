// BatcherStats: a consistent snapshot of the DynamicBatcher's counters, for GetServerInfo / a
// stats RPC / logs. Every submitted request ends in exactly one of the outcome counters, so
//   submitted == rejected_queue_full + rejected_stopped + expired + cancelled + withdrawn
//                + completed_ok + completed_error + queue_depth + running
#pragma once

#include <cstdint>

#include "server/engine/log2_histogram.h"

namespace attnd::engine {

struct BatcherStats {
  // Requests, by how they ended.
  int64_t submitted = 0;
  int64_t rejected_queue_full = 0;  // RESOURCE_EXHAUSTED at once: the queue held max_queue_requests
  int64_t rejected_stopped = 0;     // UNAVAILABLE: submitted after shutdown began
  int64_t expired = 0;              // DEADLINE_EXCEEDED before computing (at submit or while queued)
  int64_t cancelled = 0;            // CANCELLED before computing (at submit or while queued)
  int64_t withdrawn = 0;            // taken back by the caller (Withdraw) while queued
  int64_t completed_ok = 0;
  int64_t completed_error = 0;      // the inner backend's error, passed through

  // Launches of the inner backend.
  int64_t batches_run = 0;          // inner calls for batches (retries below not included)
  int64_t packed_batches = 0;       // batches of more than one request
  int64_t oversized_requests = 0;   // ran alone because they exceed max_batch_tokens (or are not packable)
  int64_t retried_alone = 0;        // requests rerun alone after their packed batch failed

  // Now.
  int64_t queue_depth = 0;          // waiting, not yet taken by an executor
  int64_t peak_queue_depth = 0;
  int64_t running = 0;              // taken by an executor, not yet completed

  Log2Histogram requests_per_batch;
  Log2Histogram tokens_per_batch;   // query rows of each batch
  Log2Histogram queue_wait_us;      // submit -> taken by an executor, for every computed request
};

}  // namespace attnd::engine
