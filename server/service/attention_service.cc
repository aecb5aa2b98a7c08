#include "server/service/attention_service.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/service/call_reactor.h"
#include "server/transport/wire_decoder.h"
#include "server/transport/wire_encoder.h"

#ifndef ATTND_VERSION
#define ATTND_VERSION "unknown"
#endif

namespace attnd {
namespace {

RequestLimits StreamLimits(const RequestLimits& unary, const TransportSettings& settings) {
  RequestLimits limits = unary;
  limits.streamed = true;
  limits.max_request_bytes = settings.max_stream_request_bytes;
  limits.limit_flag = settings.stream_limit_flag;
  return limits;
}

// The caller's authenticated identity: the bearer token's name (server/security), or the names in
// the client certificate under mutual TLS; empty on plaintext.
std::string AuthenticatedCaller(const grpc::CallbackServerContext& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return "";
  std::string identity;
  for (const grpc::string_ref& name : auth->GetPeerIdentity()) {
    if (!identity.empty()) identity += ',';
    identity.append(name.data(), name.size());
  }
  return identity;
}

}  // namespace

const char* AttndVersion() { return ATTND_VERSION; }

AttentionService::AttentionService(Backend* backend, WorkerPool* pool, const RequestLimits& limits,
                                   std::vector<std::string> available_backends, const TransportContext& transport,
                                   const TransportSettings& settings, ServiceMetrics* metrics, AccessLog* access_log)
    : backend_(backend),
      pool_(pool),
      limits_(limits),
      env_{backend, limits, transport},
      stream_env_{backend, StreamLimits(limits, settings), transport},
      settings_(settings),
      metrics_(metrics),
      access_log_(access_log) {
  info_.set_version(std::string(AttndVersion()));
  info_.set_backend(std::string(backend_->name()));
  for (std::string& name : available_backends) info_.add_available_backends(std::move(name));
  for (const DeviceDescription& d : backend_->Devices()) {
    v1::DeviceInfo* device = info_.add_devices();
    device->set_index(d.index);
    device->set_name(d.name);
    device->set_total_memory_bytes(d.total_memory_bytes);
    device->set_multiprocessors(d.multiprocessors);
    device->set_compute_capability(d.compute_capability);
  }
  info_.add_supported_dtypes(v1::DTYPE_BF16);
  info_.add_supported_dtypes(v1::DTYPE_FP16);
  info_.add_supported_dtypes(v1::DTYPE_FP32);
  for (int d : backend_->SupportedHeadDims()) info_.add_supported_head_dims(d);
  v1::Limits* l = info_.mutable_limits();
  l->set_max_request_bytes(std::min(limits_.max_request_bytes, kMaxRequestBytesLimit));
  l->set_max_head_dim(kMaxHeadDim);
  l->set_max_tokens_per_request(
      std::min<int64_t>(limits_.max_tokens_per_request, std::numeric_limits<int32_t>::max()));
  v1::TransportInfo* t = info_.mutable_transports();
  t->set_region_socket(settings_.region_socket);
  t->set_cuda_ipc(transport.regions != nullptr && transport.regions->cuda_ipc_supported());
  t->set_max_stream_request_bytes(settings_.max_stream_request_bytes);
  if (transport.resident != nullptr) {
    const ResidentStore::Options& r = transport.resident->options();
    t->set_resident_bytes_limit(r.capacity_bytes);
    t->set_resident_default_ttl_ms(absl::ToInt64Milliseconds(r.default_ttl));
    t->set_resident_max_ttl_ms(absl::ToInt64Milliseconds(r.max_ttl));
  }
}

CallReactor* AttentionService::StartCall(RpcMethod method, grpc::CallbackServerContext* context,
                                         int64_t request_bytes, const google::protobuf::Message* response_message,
                                         const grpc::ByteBuffer* response_buffer, bool* draining) {
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;  // until the reactor is deleted
    *draining = draining_;
  }
  // peer() and the identity allocate: only the access log wants them.
  const bool log = access_log_ != nullptr;
  return new CallReactor(this, method, request_bytes, response_message, response_buffer,
                         log ? context->peer() : std::string(),
                         log ? AuthenticatedCaller(*context) : std::string());  // deletes itself in OnDone
}

bool AttentionService::EnterCall() {
  absl::MutexLock lock(&mu_);
  if (draining_) return false;
  ++in_flight_;
  return true;
}

void AttentionService::Dispatch(CallReactor* reactor, grpc::CallbackServerContext* context,
                                absl::AnyInvocable<absl::Status(const CallControl&, CallTimings*) &&> compute) {
  if (context->deadline() <= std::chrono::system_clock::now()) {
    reactor->Complete(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed before the call was computed"));
    return;
  }
  auto run = [context, reactor, queued_at = CallReactor::Clock::now(), compute = std::move(compute)]() mutable {
    reactor->set_queue_wait(CallReactor::SecondsSince(queued_at));
    // Checked again here: the call may have waited in the queue for a long time. The reactor
    // only hears of a cancellation when gRPC reports it; IsCancelled() also polls the call.
    if (reactor->cancelled() || context->IsCancelled()) {
      compute = nullptr;  // the call's leases go first
      reactor->Complete(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before it was computed"));
      return;
    }
    if (context->deadline() <= std::chrono::system_clock::now()) {
      compute = nullptr;
      reactor->Complete(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                     "deadline passed before the call was computed"));
      return;
    }
    absl::Status status;
    CallTimings timings;
    const CallReactor::Clock::time_point compute_start = CallReactor::Clock::now();
    try {
      // The deadline and the cancellation travel with the call, so a backend that queues it
      // (the dynamic batcher) can still drop it uncomputed.
      status = std::move(compute)(CallControl{context->deadline(), reactor->cancelled_flag()}, &timings);
    } catch (const std::bad_alloc&) {
      // Sizing a large response on a host that is out of memory.
      status = absl::ResourceExhaustedError("out of host memory while computing the response");
    } catch (const std::exception& e) {
      // Backends return absl::Status; should one throw anyway, fail this call, not the daemon.
      status = absl::InternalError(absl::StrCat("backend failure: ", e.what()));
    }
    reactor->set_compute(CallReactor::SecondsSince(compute_start));
    reactor->set_timings(timings);
    reactor->Complete(ToGrpc(status));
  };
  // Complete() may run on a worker before this handler returns the reactor: gRPC holds it until
  // the reactor is bound to the call.
  if (!pool_->Submit(std::move(run))) {
    reactor->Complete(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                   "server busy: too many calls are waiting for a worker; retry later"));
  }
}

AttentionService::~AttentionService() {
  // gRPC has finished every call by the time the server is shut down; this only guards the order.
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(+[](int64_t* n) { return *n == 0; }, &in_flight_));
}

void AttentionService::StartDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool AttentionService::WaitUntilIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

void AttentionService::CallDone(const CallReactor& call) {
  const bool computed = call.code() == grpc::StatusCode::OK &&
                        (call.method() == RpcMethod::kForward || call.method() == RpcMethod::kBackward);
  if (metrics_ == nullptr && access_log_ == nullptr && !computed) return;
  const AccessRecord record = call.Record();
  if (computed) latencies_.Record(record);
  RecordCall(call.method(), record, call.code());
}

void AttentionService::RecordCall(RpcMethod method, const AccessRecord& record, grpc::StatusCode code) {
  if (metrics_ != nullptr) metrics_->RecordCall(method, record, code);
  if (access_log_ != nullptr) access_log_->Write(record);
}

int64_t AttentionService::calls_in_flight() {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

void AttentionService::CallDeleted() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

template <typename Call, typename Header>
grpc::ServerUnaryReactor* AttentionService::UnaryAttention(RpcMethod method, const char* what,
                                                           grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  bool draining = false;
  CallReactor* reactor =
      StartCall(method, context, static_cast<int64_t>(request->Length()), nullptr, response, &draining);
  if (draining) {  // a shutting-down server validates nothing
    reactor->Complete(ShuttingDown());
    return reactor;
  }
  Header header;
  absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(*request, Call::kTensorFields, &header, what);
  if (!decoded.ok()) {
    reactor->Complete(ToGrpc(decoded.status()));
    return reactor;
  }
  absl::StatusOr<std::unique_ptr<Call>> call =
      Call::Create(std::move(header), std::make_unique<DecodedInlineTensors>(*std::move(decoded), env_.transport.copier), env_);
  if (!call.ok()) {
    reactor->Complete(ToGrpc(call.status()));
    return reactor;
  }
  Dispatch(reactor, context, [call = *std::move(call), response](const CallControl& control,
                                                               CallTimings* timings) mutable -> absl::Status {
    absl::Status status = call->Run(control, timings);
    if (status.ok()) {
      std::vector<TensorData> data;
      for (const OutputTensor& out : call->outputs()) data.push_back({out.field, {SliceOf(out.buffer)}});
      *response = EncodeMessage(call->response(), Call::kResponseTensorFields, std::move(data));
    }
    // Inputs and region leases go before the client hears back: once a call has returned, its
    // regions are free to unregister.
    call.reset();
    return status;
  });
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::Forward(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return UnaryAttention<ForwardCall, v1::ForwardRequest>(RpcMethod::kForward, "ForwardRequest", context, request,
                                                         response);
}

grpc::ServerUnaryReactor* AttentionService::Backward(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  return UnaryAttention<BackwardCall, v1::BackwardRequest>(RpcMethod::kBackward, "BackwardRequest", context, request,
                                                           response);
}

grpc::ServerUnaryReactor* AttentionService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest* request,
                                                          v1::ServerInfo* response) {
  bool draining = false;  // served while draining: it is cheap and tells the client what it reached
  CallReactor* reactor = StartCall(RpcMethod::kGetServerInfo, context, static_cast<int64_t>(request->ByteSizeLong()),
                                   response, nullptr, &draining);
  *response = info_;
  reactor->Complete(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::GetStats(grpc::CallbackServerContext* context,
                                                     const v1::GetStatsRequest* request, v1::ServerStats* response) {
  bool draining = false;  // served while draining: an operator watches the drain through it
  CallReactor* reactor = StartCall(RpcMethod::kGetStats, context, static_cast<int64_t>(request->ByteSizeLong()),
                                   response, nullptr, &draining);
  BackendStats engine;
  backend_->CollectStats(engine);
  FillServerStats(engine, latencies_.Snapshot(), absl::ToDoubleSeconds(absl::Now() - started_), response);
  reactor->Complete(grpc::Status::OK);
  return reactor;
}

}  // namespace attnd
