// CallReactor: the reactor of one unary call of AttentionService, and ToGrpc.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <utility>

#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>
#include <google/protobuf/message.h>

#include "absl/status/status.h"
#include "server/service/attention_service.h"
#include "server/service/service_metrics.h"
#include "server/service/structured_log.h"

namespace attnd {

// absl and gRPC share the canonical code numbering.
inline grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

inline grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "attnd is shutting down; retry on another server");
}

// The reactor of one call. It remembers a cancellation as soon as gRPC reports it (OnCancel runs
// on a gRPC thread), so a worker can drop a call its client has given up on before computing it;
// it carries what the metrics and the access log record of the call, and tells the service when
// the call is done, for draining.
class CallReactor final : public grpc::ServerUnaryReactor {
 public:
  using Clock = std::chrono::steady_clock;

  CallReactor(AttentionService* service, RpcMethod method, int64_t request_bytes,
              const google::protobuf::Message* response_message, const grpc::ByteBuffer* response_buffer,
              std::string peer, std::string client)
      : service_(service),
        method_(method),
        request_bytes_(request_bytes),
        response_message_(response_message),
        response_buffer_(response_buffer),
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
    if (status.ok() && response_message_ != nullptr) {
      response_bytes_ = static_cast<int64_t>(response_message_->ByteSizeLong());
    }
    if (status.ok() && response_buffer_ != nullptr) response_bytes_ = static_cast<int64_t>(response_buffer_->Length());
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
  const google::protobuf::Message* const response_message_;
  const grpc::ByteBuffer* const response_buffer_;
  const std::string peer_;
  const std::string client_;  // the authenticated caller (AuthenticatedCaller), for the access log
  const Clock::time_point start_;
  std::atomic<bool> cancelled_{false};
  grpc::StatusCode code_ = grpc::StatusCode::UNKNOWN;
  int64_t response_bytes_ = 0;
  double queue_wait_s_ = -1;
  double compute_s_ = -1;
  double total_s_ = 0;
  CallTimings timings_;  // the engine's stages, when it computed the call
};

}  // namespace attnd
