// ServiceMetrics: the series the gRPC front end records, on a MetricsRegistry.
//
//   attnd_requests_total{method,code}              counter: finished calls by gRPC status
//   attnd_request_stage_seconds{method,stage}      histogram: queue_wait (for a worker), compute,
//                                                  total, and the engine's batch_queue, h2d, kernel,
//                                                  d2h (calls the engine computed)
//   attnd_request_bytes_total{method}              counter: request message bytes received
//   attnd_response_bytes_total{method}             counter: response message bytes sent
//   attnd_queue_depth, attnd_workers_busy, attnd_workers, attnd_calls_in_flight   gauges
//   attnd_build_info{version,backend}              gauge, always 1
//
// Methods are those of attnd.v1.Attention; their series (with code="OK") exist from the start,
// at 0, so a dashboard's rate() works before the first call.
#pragma once

#include <array>
#include <atomic>

#include <grpcpp/support/status.h>

#include "absl/strings/string_view.h"
#include "server/metrics/metrics_registry.h"
#include "server/service/structured_log.h"

namespace attnd {

enum class RpcMethod {
  kForward = 0,
  kBackward = 1,
  kGetServerInfo = 2,
  kGetStats = 3,
  // Transports (server/transport).
  kRegisterSharedMemory = 4,
  kRegisterCudaMemory = 5,
  kUnregisterRegion = 6,
  kReleaseResident = 7,
  kForwardStream = 8,
  kBackwardStream = 9,
};
inline constexpr int kRpcMethods = 10;
absl::string_view RpcMethodName(RpcMethod method);
// "OK", "INVALID_ARGUMENT", ...: gRPC's canonical names.
absl::string_view StatusCodeName(grpc::StatusCode code);

class ServiceMetrics {
 public:
  explicit ServiceMetrics(metrics::MetricsRegistry* registry);

  // attnd_request_stage_seconds{method, stage}: created on first use, cached by the caller.
  metrics::Histogram& StageSeconds(RpcMethod method, absl::string_view stage);
  // One finished call: its count by status, bytes, and each stage it reached.
  void RecordCall(RpcMethod method, const AccessRecord& record, grpc::StatusCode code);

  metrics::MetricsRegistry* registry() const { return registry_; }

 private:
  struct PerMethod {
    metrics::Counter* request_bytes;
    metrics::Counter* response_bytes;
    metrics::Histogram* queue_wait;
    metrics::Histogram* compute;
    metrics::Histogram* total;
    metrics::Histogram* batch_queue;  // the engine's stages (CallTimings)
    metrics::Histogram* h2d;
    metrics::Histogram* kernel;
    metrics::Histogram* d2h;
    // grpc::StatusCode 0..16; OK from the start, the others on their first call (GetCounter is
    // idempotent, so two threads filling one slot store the same pointer).
    std::array<std::atomic<metrics::Counter*>, 17> by_code;
  };
  metrics::MetricsRegistry* const registry_;
  metrics::Counter& Requests(RpcMethod method, int code);

  std::array<PerMethod, kRpcMethods> methods_;
};

}  // namespace attnd
