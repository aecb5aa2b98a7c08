// One load step. Closed loop (spec.rate == 0): spec.concurrency threads, each with its own place in
// the rotation of payloads, send one call, wait for its answer, check it when sampled, and send the
// next. Open loop (spec.rate > 0): one sender schedules calls at spec.rate per second (Poisson or
// constant gaps) and sends them asynchronously; a call's latency counts from its scheduled send
// time, so a daemon (or a client) that falls behind shows as latency, not as fewer samples
// (no coordinated omission). Without windows only calls started after the warm-up are measured;
// with windows (spec.window_s > 0) a window holds the calls that ended in it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/loadgen/latency_stats.h"
#include "client/loadgen/load_spec.h"
#include "client/loadgen/payloads.h"
#include "client/loadgen/server_breakdown.h"

namespace attnd::loadgen {

// One workload's share of a step (mixed workloads).
struct WorkloadReport {
  std::string name;
  int64_t ok = 0, errors = 0;
  int64_t request_bytes = 0, response_bytes = 0, wire_bytes = 0;
  LatencySummary latency;
};

struct LoadReport {
  double elapsed_s = 0;         // from the end of the warm-up to the last measured answer
  int64_t ok = 0;               // measured calls that succeeded
  int64_t errors = 0;           // measured calls that failed
  std::map<std::string, int64_t> errors_by_code;      // "DEADLINE_EXCEEDED" -> count
  std::map<std::string, std::string> error_examples;  // code -> the first message seen
  int64_t request_bytes = 0;    // tensor bytes of the successful calls' requests
  int64_t response_bytes = 0;   // and of their responses
  int64_t wire_bytes = 0;       // protobuf message bytes the successful calls sent and received
  std::vector<WorkloadReport> workloads;  // by workload, when there are several
  double flops = 0;             // of the successful calls
  LatencySummary latency;       // of the successful calls
  int64_t checked = 0;          // responses compared with the local CPU backend
  int64_t mismatches = 0;
  double max_rel_l2 = 0;        // worst relative L2 error among checked responses
  std::string first_mismatch;
  int windows = 0;              // measurement windows the report covers (0: no windows)
  int windows_run = 0;          // windows measured in all before the step ended
  bool stable = false;          // the stability rule was met (windows mode)
  ServerBreakdown server;       // the daemon's own account of the step (GetStats), when it gives one

  double requests_per_s() const { return elapsed_s > 0 ? ok / elapsed_s : 0; }
  double payload_gb_per_s() const { return elapsed_s > 0 ? (request_bytes + response_bytes) / elapsed_s / 1e9 : 0; }
  double tflops() const { return elapsed_s > 0 ? flops / elapsed_s / 1e12 : 0; }
  double wire_bytes_per_call() const { return ok > 0 ? static_cast<double>(wire_bytes) / ok : 0; }
};

// Connects the channels (UNAVAILABLE if the daemon cannot be reached in spec.connect_timeout_s) and
// runs the loop over `payloads`.
// `progress`, when set, is called after each window (windows mode) with the window's own numbers.
using WindowProgress = std::function<void(int window, const LoadReport& window_report)>;
absl::StatusOr<LoadReport> RunLoad(const LoadSpec& spec, const std::vector<Payload>& payloads,
                                   const WindowProgress& progress = nullptr);

// True when the last n reports agree within `tolerance`: (max - min) / max of their requests/s,
// and of their p99 latency, at most tolerance.
bool WindowsStable(const std::vector<LoadReport>& windows, int n, double tolerance);

}  // namespace attnd::loadgen
