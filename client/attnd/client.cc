#include "client/attnd/client.h"

#include <grpcpp/channel.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/str_cat.h"
#include "client/attnd/channel_credentials.h"
#include "client/attnd/grpc_status.h"

namespace attnd {
namespace {

constexpr char kUserAgent[] = "attnd-client/0.1";

bool Finite(absl::Duration d) { return d != absl::InfiniteDuration() && d < absl::Hours(24 * 365 * 100); }

int Milliseconds(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  return ms > INT32_MAX ? INT32_MAX : static_cast<int>(ms);
}

// A non-negative duration in gRPC's service-config (protobuf JSON) form: "0.050000000s".
std::string ProtoDuration(absl::Duration d) {
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  return absl::StrCat(ns / 1000000000, ".", absl::Dec(ns % 1000000000, absl::kZeroPad9), "s");
}

grpc::ChannelArguments ChannelArgumentsFor(const ClientOptions& options, const std::string& service_config) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(service_config);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.retry_unavailable ? 1 : 0);
  if (options.retry_unavailable) args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, options.retry_buffer_bytes);
  args.SetMaxSendMessageSize(options.max_send_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  if (options.keepalive_time > absl::ZeroDuration() && Finite(options.keepalive_time)) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, Milliseconds(options.keepalive_time));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Milliseconds(options.keepalive_timeout));
  }
  // A channel with its own subchannel pool does not reuse another channel's connection.
  if (options.dedicated_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetUserAgentPrefix(kUserAgent);
  if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  for (const auto& [key, value] : options.channel_args) {
    if (const int* i = std::get_if<int>(&value)) {
      args.SetInt(key, *i);
    } else {
      args.SetString(key, std::get<std::string>(value));
    }
  }
  return args;
}

const char* StateName(grpc_connectivity_state state) {
  switch (state) {
    case GRPC_CHANNEL_IDLE: return "IDLE";
    case GRPC_CHANNEL_CONNECTING: return "CONNECTING";
    case GRPC_CHANNEL_READY: return "READY";
    case GRPC_CHANNEL_TRANSIENT_FAILURE: return "TRANSIENT_FAILURE";
    case GRPC_CHANNEL_SHUTDOWN: return "SHUTDOWN";
  }
  return "?";
}

// One asynchronous call: its context (in PendingCall), request, response and callback, kept alive
// by the gRPC completion lambda until the call finishes.
template <typename Request, typename Response>
class AsyncCall final : public PendingCall {
 public:
  AsyncCall(std::shared_ptr<grpc::Channel> channel, std::shared_ptr<const Request> request,
            ResponseCallback<Response> done)
      : channel_(std::move(channel)), request_(std::move(request)), done_(std::move(done)) {}

  const Request* request() const { return request_.get(); }
  Response* response() { return &response_; }

  void Finish(const grpc::Status& status) {
    ResponseCallback<Response> done = std::move(done_);
    request_.reset();  // the payload is no longer needed; free it before the callback runs
    if (done) {
      if (status.ok()) {
        done(std::move(response_));
      } else {
        done(FromGrpcStatus(status));
      }
    }
    MarkDone();
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;  // the call must not outlive its channel
  std::shared_ptr<const Request> request_;
  Response response_;
  ResponseCallback<Response> done_;
};

template <typename Request, typename Response, typename StartFn>
std::shared_ptr<PendingCall> StartAsync(std::shared_ptr<grpc::Channel> channel,
                                        std::shared_ptr<const Request> request,
                                        ResponseCallback<Response> done, StartFn&& prepare_and_start) {
  auto call = std::make_shared<AsyncCall<Request, Response>>(std::move(channel), std::move(request),
                                                             std::move(done));
  if (call->request() == nullptr) {
    call->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request is null"));
    return call;
  }
  prepare_and_start(call.get(), [call](grpc::Status status) { call->Finish(status); });
  return call;
}

}  // namespace

absl::StatusOr<std::string> ServiceConfigJson(const ClientOptions& options) {
  if (options.load_balancing_policy != "round_robin" && options.load_balancing_policy != "pick_first") {
    return absl::InvalidArgumentError(absl::StrCat("ClientOptions.load_balancing_policy must be round_robin or "
                                                   "pick_first, not \"", options.load_balancing_policy, "\""));
  }
  std::string config = absl::StrCat("{\"loadBalancingConfig\":[{\"", options.load_balancing_policy, "\":{}}]");
  if (options.retry_unavailable) {
    if (options.retry_max_attempts < 2 || options.retry_max_attempts > 5) {
      return absl::InvalidArgumentError(absl::StrCat("ClientOptions.retry_max_attempts must be in [2, 5], not ",
                                                     options.retry_max_attempts));
    }
    if (options.retry_initial_backoff <= absl::ZeroDuration() ||
        options.retry_max_backoff < options.retry_initial_backoff || !Finite(options.retry_max_backoff)) {
      return absl::InvalidArgumentError(
          "ClientOptions.retry_initial_backoff must be > 0 and <= retry_max_backoff, which must be finite");
    }
    if (options.retry_buffer_bytes < 0) {
      return absl::InvalidArgumentError("ClientOptions.retry_buffer_bytes must be >= 0");
    }
    absl::StrAppend(&config, ",\"methodConfig\":[{\"name\":[{\"service\":\"", v1::Attention::service_full_name(),
                    "\"}],\"retryPolicy\":{\"maxAttempts\":", options.retry_max_attempts,
                    ",\"initialBackoff\":\"", ProtoDuration(options.retry_initial_backoff),
                    "\",\"maxBackoff\":\"", ProtoDuration(options.retry_max_backoff),
                    "\",\"backoffMultiplier\":2,\"retryableStatusCodes\":[\"UNAVAILABLE\"",
                    options.retry_cancelled_by_server ? ",\"CANCELLED\"" : "", "]}}]");
  }
  absl::StrAppend(&config, "}");
  return config;
}

Client::Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)), channel_(std::move(channel)), stub_(v1::Attention::NewStub(channel_)) {}

Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = ChannelCredentialsFor(options);
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::string> service_config = ServiceConfigJson(options);
  if (!service_config.ok()) return service_config.status();
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, *credentials, ChannelArgumentsFor(options, *service_config));
  if (channel == nullptr) return absl::InternalError(absl::StrCat("could not create a channel to ", options.target));
  std::unique_ptr<Client> client(new Client(options, std::move(channel)));
  if (options.connect_timeout > absl::ZeroDuration()) {
    if (absl::Status ready = client->WaitForReady(options.connect_timeout); !ready.ok()) return ready;
  }
  return client;
}

absl::Status Client::WaitForReady(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_SHUTDOWN || absl::Now() >= deadline ||
        !channel_->WaitForStateChange(state, absl::ToChronoTime(deadline))) {
      return absl::UnavailableError(absl::StrCat("attnd at ", options_.target, " is not reachable: channel ",
                                                 StateName(channel_->GetState(false)), " after ",
                                                 absl::FormatDuration(timeout)));
    }
    state = channel_->GetState(/*try_to_connect=*/true);
  }
  return absl::OkStatus();
}

void Client::Prepare(const CallOptions& call, grpc::ClientContext* context) const {
  const absl::Duration timeout = call.timeout.value_or(options_.default_timeout);
  if (Finite(timeout)) context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  context->set_wait_for_ready(call.wait_for_ready.value_or(options_.wait_for_ready));
}

absl::StatusOr<v1::ForwardResponse> Client::Forward(const v1::ForwardRequest& request, const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::ForwardResponse response;
  grpc::Status status = stub_->Forward(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::BackwardResponse> Client::Backward(const v1::BackwardRequest& request, const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::BackwardResponse response;
  grpc::Status status = stub_->Backward(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ServerInfo> Client::GetServerInfo(const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::ServerInfo info;
  grpc::Status status = stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) return FromGrpcStatus(status);
  return info;
}

absl::StatusOr<v1::ServerStats> Client::GetStats(const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::ServerStats stats;
  grpc::Status status = stub_->GetStats(&context, v1::GetStatsRequest(), &stats);
  if (!status.ok()) return FromGrpcStatus(status);
  return stats;
}

std::shared_ptr<PendingCall> Client::ForwardAsync(std::shared_ptr<const v1::ForwardRequest> request,
                                                  ResponseCallback<v1::ForwardResponse> done,
                                                  const CallOptions& call) {
  return StartAsync<v1::ForwardRequest, v1::ForwardResponse>(
      channel_, std::move(request), std::move(done), [&](auto* async_call, auto on_done) {
        Prepare(call, async_call->context());
        stub_->async()->Forward(async_call->context(), async_call->request(), async_call->response(),
                                std::move(on_done));
      });
}

std::shared_ptr<PendingCall> Client::ForwardAsync(v1::ForwardRequest request,
                                                  ResponseCallback<v1::ForwardResponse> done,
                                                  const CallOptions& call) {
  return ForwardAsync(std::make_shared<const v1::ForwardRequest>(std::move(request)), std::move(done), call);
}

std::shared_ptr<PendingCall> Client::BackwardAsync(std::shared_ptr<const v1::BackwardRequest> request,
                                                   ResponseCallback<v1::BackwardResponse> done,
                                                   const CallOptions& call) {
  return StartAsync<v1::BackwardRequest, v1::BackwardResponse>(
      channel_, std::move(request), std::move(done), [&](auto* async_call, auto on_done) {
        Prepare(call, async_call->context());
        stub_->async()->Backward(async_call->context(), async_call->request(), async_call->response(),
                                 std::move(on_done));
      });
}

std::shared_ptr<PendingCall> Client::BackwardAsync(v1::BackwardRequest request,
                                                   ResponseCallback<v1::BackwardResponse> done,
                                                   const CallOptions& call) {
  return BackwardAsync(std::make_shared<const v1::BackwardRequest>(std::move(request)), std::move(done), call);
}

}  // namespace attnd
