// Latency percentiles of the measured calls (nearest-rank: p-th percentile is the smallest latency
// that at least p% of the calls did not exceed).
#pragma once

#include <cstdint>
#include <vector>

namespace attnd::loadgen {

struct LatencySummary {
  int64_t count = 0;
  double mean_ms = 0;
  double min_ms = 0;
  double p50_ms = 0;
  double p90_ms = 0;
  double p95_ms = 0;
  double p99_ms = 0;
  double max_ms = 0;
};

LatencySummary Summarize(std::vector<double> latencies_ms);

}  // namespace attnd::loadgen
