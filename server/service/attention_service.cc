#include "server/service/attention_service.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
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

const grpc::Status kShuttingDown(grpc::StatusCode::UNAVAILABLE, "attnd is shutting down; retry on another server");

}  // namespace

// The reactor of one accepted Forward/Backward call. It remembers a cancellation as soon as gRPC
// reports it (OnCancel runs on a gRPC thread), so a worker can drop a call its client has given up
// on before computing it, and tells the service when the call is done, for draining.
class CallReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit CallReactor(AttentionService* service) : service_(service) {}
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  void OnCancel() override { cancelled_.store(true, std::memory_order_release); }
  void OnDone() override {
    AttentionService* service = service_;
    delete this;
    service->CallDone();
  }

 private:
  AttentionService* const service_;
  std::atomic<bool> cancelled_{false};
};

const char* AttndVersion() { return ATTND_VERSION; }

AttentionService::AttentionService(Backend* backend, WorkerPool* pool, const RequestLimits& limits,
                                   std::vector<std::string> available_backends)
    : backend_(backend), pool_(pool), limits_(limits) {
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

grpc::ServerUnaryReactor* AttentionService::Dispatch(grpc::CallbackServerContext* context,
                                                     absl::AnyInvocable<absl::Status() &&> compute) {
  auto* reactor = new CallReactor(this);  // deletes itself in OnDone
  bool refuse;
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;  // until OnDone
    refuse = draining_;
  }
  if (refuse) {
    reactor->Finish(kShuttingDown);
    return reactor;
  }
  if (context->deadline() <= std::chrono::system_clock::now()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed before the call was computed"));
    return reactor;
  }
  auto run = [context, reactor, compute = std::move(compute)]() mutable {
    // Checked again here: the call may have waited in the queue for a long time. The reactor
    // only hears of a cancellation when gRPC reports it; IsCancelled() also polls the call.
    if (reactor->cancelled() || context->IsCancelled()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before it was computed"));
      return;
    }
    if (context->deadline() <= std::chrono::system_clock::now()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                   "deadline passed before the call was computed"));
      return;
    }
    absl::Status status;
    try {
      status = std::move(compute)();
    } catch (const std::bad_alloc&) {
      // Sizing a large response on a host that is out of memory.
      status = absl::ResourceExhaustedError("out of host memory while computing the response");
    } catch (const std::exception& e) {
      // Backends return absl::Status; should one throw anyway, fail this call, not the daemon.
      status = absl::InternalError(absl::StrCat("backend failure: ", e.what()));
    }
    reactor->Finish(ToGrpc(status));
  };
  // Finish() may run on a worker before this handler returns the reactor: gRPC holds it until the
  // reactor is bound to the call.
  if (!pool_->Submit(std::move(run))) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "server busy: too many calls are waiting for a worker; retry later"));
  }
  return reactor;
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

bool AttentionService::draining() {
  absl::MutexLock lock(&mu_);
  return draining_;
}

bool AttentionService::WaitUntilIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

void AttentionService::CallDone() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

grpc::ServerUnaryReactor* AttentionService::Forward(grpc::CallbackServerContext* context,
                                                    const v1::ForwardRequest* request,
                                                    v1::ForwardResponse* response) {
  if (draining()) {  // a shutting-down server validates nothing (Dispatch checks again)
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(kShuttingDown);
    return reactor;
  }
  absl::StatusOr<ValidatedForward> call = ValidateForwardRequest(*request, limits_, backend_);
  if (!call.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpc(call.status()));
    return reactor;
  }
  return Dispatch(context, [this, call = std::move(*call), request, response]() -> absl::Status {
    return ComputeForward(call, *request, response);
  });
}

grpc::ServerUnaryReactor* AttentionService::Backward(grpc::CallbackServerContext* context,
                                                     const v1::BackwardRequest* request,
                                                     v1::BackwardResponse* response) {
  if (draining()) {  // a shutting-down server validates nothing (Dispatch checks again)
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(kShuttingDown);
    return reactor;
  }
  absl::StatusOr<ValidatedBackward> call = ValidateBackwardRequest(*request, limits_, backend_);
  if (!call.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpc(call.status()));
    return reactor;
  }
  return Dispatch(context, [this, call = std::move(*call), request, response]() -> absl::Status {
    return ComputeBackward(call, *request, response);
  });
}

grpc::ServerUnaryReactor* AttentionService::GetServerInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetServerInfoRequest* /*request*/,
                                                          v1::ServerInfo* response) {
  *response = info_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

absl::Status AttentionService::ComputeForward(const ValidatedForward& call, const v1::ForwardRequest& request,
                                              v1::ForwardResponse* response) {
  OutputBytes out(response->mutable_out(), call.dtype, ShapeOf(request.q()), call.shape.q_elements());
  OutputBytes lse(response->mutable_lse(), DType::kFP32, LseShape(call.shape), call.shape.lse_elements());
  absl::Status status = backend_->Forward(call.Args(out.data(), static_cast<float*>(lse.data())));
  if (!status.ok()) {
    response->Clear();  // never half a result
    return status;
  }
  out.Commit();
  lse.Commit();
  return absl::OkStatus();
}

absl::Status AttentionService::ComputeBackward(const ValidatedBackward& call, const v1::BackwardRequest& request,
                                               v1::BackwardResponse* response) {
  OutputBytes grad_q(response->mutable_grad_q(), call.dtype, ShapeOf(request.q()), call.shape.q_elements());
  OutputBytes grad_k(response->mutable_grad_k(), call.dtype, ShapeOf(request.k()), call.shape.kv_elements());
  OutputBytes grad_v(response->mutable_grad_v(), call.dtype, ShapeOf(request.v()), call.shape.kv_elements());
  absl::Status status = backend_->Backward(call.Args(grad_q.data(), grad_k.data(), grad_v.data()));
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
