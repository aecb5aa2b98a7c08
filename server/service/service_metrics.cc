#include "server/service/service_metrics.h"

#include <string>
#include <utility>

namespace attnd {
namespace {

constexpr char kRequests[] = "attnd_requests_total";
constexpr char kRequestsHelp[] = "Finished attnd.v1.Attention calls by method and gRPC status code.";
constexpr char kStage[] = "attnd_request_stage_seconds";
constexpr char kStageHelp[] =
    "Seconds a call spent in each stage: queue_wait (validated, waiting for a worker), compute (backend), "
    "total (handler entry to response sent); inside the engine batch_queue (batch queue and CUDA stream "
    "wait), h2d, kernel, d2h.";

}  // namespace

absl::string_view RpcMethodName(RpcMethod method) {
  switch (method) {
    case RpcMethod::kForward: return "Forward";
    case RpcMethod::kBackward: return "Backward";
    case RpcMethod::kGetServerInfo: return "GetServerInfo";
    case RpcMethod::kGetStats: return "GetStats";
    case RpcMethod::kRegisterSharedMemory: return "RegisterSharedMemory";
    case RpcMethod::kRegisterCudaMemory: return "RegisterCudaMemory";
    case RpcMethod::kUnregisterRegion: return "UnregisterRegion";
    case RpcMethod::kReleaseResident: return "ReleaseResident";
    case RpcMethod::kForwardStream: return "ForwardStream";
    case RpcMethod::kBackwardStream: return "BackwardStream";
  }
  return "unknown";
}

absl::string_view StatusCodeName(grpc::StatusCode code) {
  static constexpr absl::string_view kNames[] = {
      "OK",      "CANCELLED",           "UNKNOWN",       "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

ServiceMetrics::ServiceMetrics(metrics::MetricsRegistry* registry) : registry_(registry) {
  for (int m = 0; m < kRpcMethods; ++m) {
    const RpcMethod method = static_cast<RpcMethod>(m);
    const std::string name(RpcMethodName(method));
    PerMethod& p = methods_[m];
    p.request_bytes = &registry_->GetCounter("attnd_request_bytes_total",
                                             "Bytes of request messages received (serialized protobuf).",
                                             {{"method", name}});
    p.response_bytes = &registry_->GetCounter("attnd_response_bytes_total",
                                              "Bytes of response messages sent (serialized protobuf).",
                                              {{"method", name}});
    p.queue_wait = &StageSeconds(method, "queue_wait");
    p.compute = &StageSeconds(method, "compute");
    p.total = &StageSeconds(method, "total");
    p.batch_queue = &StageSeconds(method, "batch_queue");
    p.h2d = &StageSeconds(method, "h2d");
    p.kernel = &StageSeconds(method, "kernel");
    p.d2h = &StageSeconds(method, "d2h");
    for (auto& slot : p.by_code) slot.store(nullptr, std::memory_order_relaxed);
    Requests(method, static_cast<int>(grpc::StatusCode::OK));
  }
}

metrics::Histogram& ServiceMetrics::StageSeconds(RpcMethod method, absl::string_view stage) {
  return registry_->GetHistogram(kStage, kStageHelp,
                                 {{"method", std::string(RpcMethodName(method))}, {"stage", std::string(stage)}},
                                 metrics::LatencyBucketsSeconds());
}

metrics::Counter& ServiceMetrics::Requests(RpcMethod method, int code) {
  std::atomic<metrics::Counter*>& slot = methods_[static_cast<int>(method)].by_code[code];
  metrics::Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    counter = &registry_->GetCounter(
        kRequests, kRequestsHelp,
        {{"code", std::string(StatusCodeName(static_cast<grpc::StatusCode>(code)))},
         {"method", std::string(RpcMethodName(method))}});
    slot.store(counter, std::memory_order_release);
  }
  return *counter;
}

void ServiceMetrics::RecordCall(RpcMethod method, const AccessRecord& r, grpc::StatusCode code) {
  PerMethod& p = methods_[static_cast<int>(method)];
  const int c = static_cast<int>(code);
  Requests(method, c >= 0 && c < 17 ? c : static_cast<int>(grpc::StatusCode::UNKNOWN)).Increment();
  p.request_bytes->Increment(static_cast<double>(r.request_bytes));
  p.response_bytes->Increment(static_cast<double>(r.response_bytes));
  if (r.queue_wait_s >= 0) p.queue_wait->Observe(r.queue_wait_s);
  if (r.compute_s >= 0) p.compute->Observe(r.compute_s);
  p.total->Observe(r.total_s);
  for (auto [seconds, histogram] : {std::pair{r.batch_queue_s, p.batch_queue}, {r.h2d_s, p.h2d},
                                    {r.kernel_s, p.kernel}, {r.d2h_s, p.d2h}}) {
    if (seconds >= 0) histogram->Observe(seconds);
  }
}

}  // namespace attnd
