#include "client/loadgen/server_breakdown.h"

#include "absl/strings/str_format.h"

namespace attnd::loadgen {
namespace {

// Mean of the step's samples of one histogram, in milliseconds (sum is in microseconds).
double MeanMs(const v1::Log2Histogram& before, const v1::Log2Histogram& after) {
  const int64_t n = after.count() - before.count();
  return n > 0 ? static_cast<double>(after.sum() - before.sum()) / n / 1e3 : 0.0;
}

int64_t Launches(const v1::ServerStats& s) {
  int64_t launches = 0;
  for (const v1::DeviceStats& d : s.devices()) launches += d.launches();
  return launches;
}

int64_t DriverAllocations(const v1::ServerStats& s) {
  int64_t n = s.pinned_host().driver_allocations();
  for (const v1::DeviceStats& d : s.devices()) n += d.memory().driver_allocations();
  return n;
}

}  // namespace

ServerBreakdown SubtractStats(const v1::ServerStats& before, const v1::ServerStats& after) {
  ServerBreakdown b;
  b.available = true;
  const v1::EngineLatencies& e0 = before.engine();
  const v1::EngineLatencies& e1 = after.engine();
  b.requests = e1.total_us().count() - e0.total_us().count();
  b.queue_ms = MeanMs(e0.queue_us(), e1.queue_us());
  b.h2d_ms = MeanMs(e0.h2d_us(), e1.h2d_us());
  b.kernel_ms = MeanMs(e0.kernel_us(), e1.kernel_us());
  b.d2h_ms = MeanMs(e0.d2h_us(), e1.d2h_us());
  b.other_ms = MeanMs(e0.other_us(), e1.other_us());
  b.engine_ms = MeanMs(e0.total_us(), e1.total_us());
  b.worker_queue_ms = MeanMs(before.service().worker_queue_us(), after.service().worker_queue_us());
  b.compute_ms = MeanMs(before.service().compute_us(), after.service().compute_us());
  b.server_total_ms = MeanMs(before.service().total_us(), after.service().total_us());
  // Kernel launches where the GPU counts them, else the batcher's batches (the CPU backend).
  b.launches = Launches(after) - Launches(before);
  if (b.launches == 0) {
    b.launches = (after.batcher().batches_run() + after.batcher().retried_alone()) -
                 (before.batcher().batches_run() + before.batcher().retried_alone());
  }
  b.requests_per_launch = b.launches > 0 ? static_cast<double>(b.requests) / b.launches : 0.0;
  b.driver_allocations = DriverAllocations(after) - DriverAllocations(before);
  return b;
}

std::string BreakdownJson(const ServerBreakdown& b) {
  return absl::StrFormat(
      "{\"requests\":%d,\"queue_ms\":%.6g,\"h2d_ms\":%.6g,\"kernel_ms\":%.6g,\"d2h_ms\":%.6g,\"other_ms\":%.6g,"
      "\"engine_ms\":%.6g,\"worker_queue_ms\":%.6g,\"compute_ms\":%.6g,\"server_total_ms\":%.6g,\"launches\":%d,"
      "\"requests_per_launch\":%.6g,\"driver_allocations\":%d}",
      b.requests, b.queue_ms, b.h2d_ms, b.kernel_ms, b.d2h_ms, b.other_ms, b.engine_ms, b.worker_queue_ms,
      b.compute_ms, b.server_total_ms, b.launches, b.requests_per_launch, b.driver_allocations);
}

std::string BreakdownText(const ServerBreakdown& b) {
  return absl::StrFormat(
      "server ms   queue %.3f  h2d %.3f  kernel %.3f  d2h %.3f  other %.3f  (engine %.3f; worker queue %.3f, "
      "server total %.3f); %.2f requests/launch over %d launches, %d driver allocations\n",
      b.queue_ms, b.h2d_ms, b.kernel_ms, b.d2h_ms, b.other_ms, b.engine_ms, b.worker_queue_ms, b.server_total_ms,
      b.requests_per_launch, b.launches, b.driver_allocations);
}

}  // namespace attnd::loadgen
