// The closed loop: spec.concurrency threads, each with its own place in the rotation of payloads,
// send one call, wait for its answer, check it when sampled, and send the next, until the duration
// or the request count is used up. Only calls started after the warm-up are measured.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/loadgen/latency_stats.h"
#include "client/loadgen/load_spec.h"
#include "client/loadgen/payloads.h"

namespace attnd::loadgen {

struct LoadReport {
  double elapsed_s = 0;         // from the end of the warm-up to the last measured answer
  int64_t ok = 0;               // measured calls that succeeded
  int64_t errors = 0;           // measured calls that failed
  std::map<std::string, int64_t> errors_by_code;      // "DEADLINE_EXCEEDED" -> count
  std::map<std::string, std::string> error_examples;  // code -> the first message seen
  int64_t request_bytes = 0;    // tensor bytes of the successful calls' requests
  int64_t response_bytes = 0;   // and of their responses
  double flops = 0;             // of the successful calls
  LatencySummary latency;       // of the successful calls
  int64_t checked = 0;          // responses compared with the local CPU backend
  int64_t mismatches = 0;
  double max_rel_l2 = 0;        // worst relative L2 error among checked responses
  std::string first_mismatch;

  double requests_per_s() const { return elapsed_s > 0 ? ok / elapsed_s : 0; }
  double payload_gb_per_s() const { return elapsed_s > 0 ? (request_bytes + response_bytes) / elapsed_s / 1e9 : 0; }
  double tflops() const { return elapsed_s > 0 ? flops / elapsed_s / 1e12 : 0; }
};

// Connects the channels (UNAVAILABLE if the daemon cannot be reached in spec.connect_timeout_s) and
// runs the loop over `payloads`.
absl::StatusOr<LoadReport> RunLoad(const LoadSpec& spec, const std::vector<Payload>& payloads);

}  // namespace attnd::loadgen
