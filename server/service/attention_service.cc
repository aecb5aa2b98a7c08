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

#ifndef ATTND_VERSION
#define ATTND_VERSION "unknown"
#endif

namespace attnd {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// One output tensor of a response: its `bytes` field sized once and written in place by the
// backend. resize() zero-fills, so a backend bug can never leak stale heap contents to a client.
// Protobuf strings of any useful size are heap blocks (16-byte aligned); should one ever not be
// aligned for its element type the backend writes to scratch and Commit() copies it over.
class OutputBytes {
 public:
  OutputBytes(v1::Tensor* tensor, DType dtype, const std::vector<int64_t>& shape, int64_t elements) {
    tensor->set_dtype(ToProto(dtype));
    tensor->mutable_shape()->Assign(shape.begin(), shape.end());
    bytes_ = tensor->mutable_data();
    size_ = static_cast<size_t>(elements) * ElementSize(dtype);
    bytes_->resize(size_);
    if (reinterpret_cast<uintptr_t>(bytes_->data()) % ElementSize(dtype) != 0) {
      scratch_.reset(new uint64_t[(size_ + 7) / 8]);
    }
  }
  void* data() { return scratch_ ? static_cast<void*>(scratch_.get()) : bytes_->data(); }
  void Commit() {
    if (scratch_) std::memcpy(bytes_->data(), scratch_.get(), size_);
  }

 private:
  std::string* bytes_ = nullptr;
  size_t size_ = 0;
  std::unique_ptr<uint64_t[]> scratch_;
};

std::vector<int64_t> ShapeOf(const v1::Tensor& t) { return {t.shape().begin(), t.shape().end()}; }

// The caller's authenticated identity: the bearer token's name (server/security), or the names in
// the client certificate under mutual TLS; empty on plaintext.
std::string PeerIdentity(const grpc::CallbackServerContext& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return "";
  std::string identity;
  for (const grpc::string_ref& name : auth->GetPeerIdentity()) {
    if (!identity.empty()) identity += ',';
    identity.append(name.data(), name.size());
  }
  return identity;
}

const grpc::Status kShuttingDown(grpc::StatusCode::UNAVAILABLE, "attnd is shutting down; retry on another server");

}  // namespace

// The reactor of one call. It remembers a cancellation as soon as gRPC reports it (OnCancel runs
// on a gRPC thread), so a worker can drop a call its client has given up on before computing it;
// it carries what the metrics and the access log record of the call, and tells the service when
// the call is done, for draining.
class CallReactor final : public grpc::ServerUnaryReactor {
 public:
  using Clock = std::chrono::steady_clock;

  CallReactor(AttentionService* service, RpcMethod method, int64_t request_bytes,
              const google::protobuf::Message* response, std::string peer, std::string client)
      : service_(service),
        method_(method),
        request_bytes_(request_bytes),
        response_(response),
        peer_(std::move(peer)),
        client_(std::move(client)),
        start_(Clock::now()) {}

  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // Lets a backend (the batcher) drop the call uncomputed once its client gives up.
  const std::atomic<bool>* cancelled_flag() const { return &cancelled_; }
  void OnCancel() override { cancelled_.store(true, std::memory_order_release); }

  // Finish() that first notes the status and the response's size (the response is the call's,
  // gone once the call is done). gRPC orders this before OnDone.
  void Complete(const grpc::Status& status) {
    code_ = status.error_code();
    if (status.ok() && response_ != nullptr) response_bytes_ = static_cast<int64_t>(response_->ByteSizeLong());
    Finish(status);
  }
  void set_queue_wait(double seconds) { queue_wait_s_ = seconds; }
  void set_compute(double seconds) { compute_s_ = seconds; }
  void set_timings(const CallTimings& timings) { timings_ = timings; }
  static double SecondsSince(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  }

  void OnDone() override {
    total_s_ = SecondsSince(start_);
    AttentionService* service = service_;
    service->CallDone(*this);
    delete this;
    service->CallDeleted();
  }

  RpcMethod method() const { return method_; }
  grpc::StatusCode code() const { return code_; }
  AccessRecord Record() const {
    AccessRecord r;
    r.method = RpcMethodName(method_);
    r.code = StatusCodeName(code_);
    r.peer = peer_;
    r.client = client_;
    r.request_bytes = request_bytes_;
    r.response_bytes = response_bytes_;
    r.queue_wait_s = queue_wait_s_;
    r.compute_s = compute_s_;
    r.total_s = total_s_;
    r.batch_queue_s = timings_.queue_s;
    r.h2d_s = timings_.h2d_s;
    r.kernel_s = timings_.kernel_s;
    r.d2h_s = timings_.d2h_s;
    r.batch_requests = timings_.batch_requests;
    return r;
  }

 private:
  AttentionService* const service_;
  const RpcMethod method_;
  const int64_t request_bytes_;
  const google::protobuf::Message* const response_;
  const std::string peer_;
  const std::string client_;
  const Clock::time_point start_;
  std::atomic<bool> cancelled_{false};
  grpc::StatusCode code_ = grpc::StatusCode::UNKNOWN;
  int64_t response_bytes_ = 0;
  double queue_wait_s_ = -1;
  double compute_s_ = -1;
  double total_s_ = 0;
  CallTimings timings_;  // the engine's stages, when it computed the call
};

const char* AttndVersion() { return ATTND_VERSION; }

AttentionService::AttentionService(Backend* backend, WorkerPool* pool, const RequestLimits& limits,
                                   std::vector<std::string> available_backends, ServiceMetrics* metrics,
                                   AccessLog* access_log)
    : backend_(backend), pool_(pool), limits_(limits), metrics_(metrics), access_log_(access_log) {
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
}

CallReactor* AttentionService::StartCall(RpcMethod method, grpc::CallbackServerContext* context,
                                         const google::protobuf::Message& request,
                                         const google::protobuf::Message* response, bool* draining) {
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;  // until the reactor is deleted
    *draining = draining_;
  }
  // peer() and the identity allocate: only the access log wants them.
  const bool log = access_log_ != nullptr;
  return new CallReactor(this, method, static_cast<int64_t>(request.ByteSizeLong()), response,
                         log ? context->peer() : std::string(),
                         log ? PeerIdentity(*context) : std::string());  // deletes itself in OnDone
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
      reactor->Complete(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before it was computed"));
      return;
    }
    if (context->deadline() <= std::chrono::system_clock::now()) {
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
  if (metrics_ != nullptr) metrics_->RecordCall(call.method(), record, call.code());
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

grpc::ServerUnaryReactor* AttentionService::Forward(grpc::CallbackServerContext* context,
                                                    const v1::ForwardRequest* request,
                                                    v1::ForwardResponse* response) {
  bool draining = false;
  CallReactor* reactor = StartCall(RpcMethod::kForward, context, *request, response, &draining);
  if (draining) {  // a shutting-down server validates nothing
    reactor->Complete(kShuttingDown);
    return reactor;
  }
  absl::StatusOr<ValidatedForward> call = ValidateForwardRequest(*request, limits_, backend_);
  if (!call.ok()) {
    reactor->Complete(ToGrpc(call.status()));
    return reactor;
  }
  Dispatch(reactor, context,
           [this, call = std::move(*call), request, response](const CallControl& control,
                                                              CallTimings* timings) -> absl::Status {
    return ComputeForward(call, control, timings, *request, response);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::Backward(grpc::CallbackServerContext* context,
                                                     const v1::BackwardRequest* request,
                                                     v1::BackwardResponse* response) {
  bool draining = false;
  CallReactor* reactor = StartCall(RpcMethod::kBackward, context, *request, response, &draining);
  if (draining) {  // a shutting-down server validates nothing
    reactor->Complete(kShuttingDown);
    return reactor;
  }
  absl::StatusOr<ValidatedBackward> call = ValidateBackwardRequest(*request, limits_, backend_);
  if (!call.ok()) {
    reactor->Complete(ToGrpc(call.status()));
    return reactor;
  }
  Dispatch(reactor, context,
           [this, call = std::move(*call), request, response](const CallControl& control,
                                                              CallTimings* timings) -> absl::Status {
    return ComputeBackward(call, control, timings, *request, response);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest* request,
                                                          v1::ServerInfo* response) {
  bool draining = false;  // served while draining: it is cheap and tells the client what it reached
  CallReactor* reactor = StartCall(RpcMethod::kGetServerInfo, context, *request, response, &draining);
  *response = info_;
  reactor->Complete(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::GetStats(grpc::CallbackServerContext* context,
                                                     const v1::GetStatsRequest* request, v1::ServerStats* response) {
  bool draining = false;  // served while draining: an operator watches the drain through it
  CallReactor* reactor = StartCall(RpcMethod::kGetStats, context, *request, response, &draining);
  BackendStats engine;
  backend_->CollectStats(engine);
  FillServerStats(engine, latencies_.Snapshot(), absl::ToDoubleSeconds(absl::Now() - started_), response);
  reactor->Complete(grpc::Status::OK);
  return reactor;
}

absl::Status AttentionService::ComputeForward(const ValidatedForward& call, const CallControl& control,
                                              CallTimings* timings, const v1::ForwardRequest& request,
                                              v1::ForwardResponse* response) {
  OutputBytes out(response->mutable_out(), call.dtype, ShapeOf(request.q()), call.shape.q_elements());
  OutputBytes lse(response->mutable_lse(), DType::kFP32, LseShape(call.shape), call.shape.lse_elements());
  ForwardArgs args = call.Args(out.data(), static_cast<float*>(lse.data()));
  args.control = control;
  args.timings = timings;
  absl::Status status = backend_->Forward(args);
  if (!status.ok()) {
    response->Clear();  // never half a result
    return status;
  }
  out.Commit();
  lse.Commit();
  return absl::OkStatus();
}

absl::Status AttentionService::ComputeBackward(const ValidatedBackward& call, const CallControl& control,
                                               CallTimings* timings, const v1::BackwardRequest& request,
                                               v1::BackwardResponse* response) {
  OutputBytes grad_q(response->mutable_grad_q(), call.dtype, ShapeOf(request.q()), call.shape.q_elements());
  OutputBytes grad_k(response->mutable_grad_k(), call.dtype, ShapeOf(request.k()), call.shape.kv_elements());
  OutputBytes grad_v(response->mutable_grad_v(), call.dtype, ShapeOf(request.v()), call.shape.kv_elements());
  BackwardArgs args = call.Args(grad_q.data(), grad_k.data(), grad_v.data());
  args.control = control;
  args.timings = timings;
  absl::Status status = backend_->Backward(args);
  if (!status.ok()) {
    response->Clear();
    return status;
  }
  grad_q.Commit();
  grad_k.Commit();
  grad_v.Commit();
  return absl::OkStatus();
}

}  // namespace attnd
