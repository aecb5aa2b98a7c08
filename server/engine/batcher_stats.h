// BatcherStats: a consistent snapshot of the DynamicBatcher's counters, for GetServerInfo / a
// stats RPC / logs. Every submitted request ends in exactly one of the outcome counters, so
//   submitted == rejected_queue_full + rejected_stopped + expired + cancelled + withdrawn
//                + completed_ok + completed_error + queue_depth + running
#pragma once

#include <cstdint>
#include <utility>

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

  // Adds another batcher's counters (one batcher per GPU); peaks add too (an upper bound).
  void Merge(const BatcherStats& o) {
    for (auto [mine, theirs] : {std::pair{&submitted, o.submitted}, {&rejected_queue_full, o.rejected_queue_full},
                                {&rejected_stopped, o.rejected_stopped}, {&expired, o.expired},
                                {&cancelled, o.cancelled}, {&withdrawn, o.withdrawn},
                                {&completed_ok, o.completed_ok}, {&completed_error, o.completed_error},
                                {&batches_run, o.batches_run}, {&packed_batches, o.packed_batches},
                                {&oversized_requests, o.oversized_requests}, {&retried_alone, o.retried_alone},
                                {&queue_depth, o.queue_depth}, {&peak_queue_depth, o.peak_queue_depth},
                                {&running, o.running}}) {
      *mine += theirs;
    }
    requests_per_batch.Merge(o.requests_per_batch);
    tokens_per_batch.Merge(o.tokens_per_batch);
    queue_wait_us.Merge(o.queue_wait_us);
  }
};

}  // namespace attnd::engine
