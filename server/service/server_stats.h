// GetStats: the service's own per-request latencies (ServiceLatencyStats) and the conversion of
// those plus the engine's BackendStats into the wire's ServerStats.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "attnd/v1/attention.pb.h"
#include "server/backend_stats.h"
#include "server/engine/log2_histogram.h"
#include "server/service/structured_log.h"

namespace attnd {

struct ServiceLatencies {
  engine::Log2Histogram worker_queue_us, compute_us, total_us;
};

// The front end's share of each successful Forward/Backward, in microseconds. Thread-safe.
class ServiceLatencyStats {
 public:
  void Record(const AccessRecord& record);
  ServiceLatencies Snapshot() const;

 private:
  mutable absl::Mutex mu_;
  ServiceLatencies latencies_ ABSL_GUARDED_BY(mu_);
};

void FillServerStats(const BackendStats& engine, const ServiceLatencies& service, double uptime_s,
                     v1::ServerStats* out);

}  // namespace attnd
