#include "client/loadgen/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace attnd::loadgen {
namespace {

double Percentile(const std::vector<double>& sorted, double p) {
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

LatencySummary Summarize(std::vector<double> latencies_ms) {
  LatencySummary s;
  if (latencies_ms.empty()) return s;
  std::sort(latencies_ms.begin(), latencies_ms.end());
  s.count = static_cast<int64_t>(latencies_ms.size());
  s.mean_ms = std::accumulate(latencies_ms.begin(), latencies_ms.end(), 0.0) / static_cast<double>(s.count);
  s.min_ms = latencies_ms.front();
  s.p50_ms = Percentile(latencies_ms, 50);
  s.p90_ms = Percentile(latencies_ms, 90);
  s.p95_ms = Percentile(latencies_ms, 95);
  s.p99_ms = Percentile(latencies_ms, 99);
  s.max_ms = latencies_ms.back();
  return s;
}

}  // namespace attnd::loadgen
