// ServerBreakdown: where the daemon says the time of one load step went. attn_loadgen reads the
// daemon's GetStats before and after each step and subtracts them (the counters are cumulative),
// so the step's requests, and only them, are described: mean per request of each engine stage
// (queue, H2D, kernel, D2H, other), of the service's share (worker queue, compute, total in the
// server), and the mean requests per kernel launch. The step's warm-up calls are included.
#pragma once

#include <cstdint>
#include <string>

#include "attnd/v1/attention.pb.h"

namespace attnd::loadgen {

struct ServerBreakdown {
  bool available = false;          // the daemon answered GetStats before and after the step
  int64_t requests = 0;            // Forward/Backward calls the engine computed in the step
  // Means per request, in milliseconds.
  double queue_ms = 0, h2d_ms = 0, kernel_ms = 0, d2h_ms = 0, other_ms = 0, engine_ms = 0;
  double worker_queue_ms = 0, compute_ms = 0, server_total_ms = 0;
  int64_t launches = 0;            // kernel launches (GPU) or batches (CPU batcher) in the step
  double requests_per_launch = 0;  // 0 when the daemon does not say
  int64_t driver_allocations = 0;  // device + pinned allocations the pools asked the driver for
};

// `after` minus `before`.
ServerBreakdown SubtractStats(const v1::ServerStats& before, const v1::ServerStats& after);

// {"requests":...,"queue_ms":...} (JSON object) and one human line.
std::string BreakdownJson(const ServerBreakdown& b);
std::string BreakdownText(const ServerBreakdown& b);

}  // namespace attnd::loadgen
