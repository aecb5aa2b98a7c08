#include "client/attnd/client.h"

#include <grpcpp/channel.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/rpc_method.h>

#include "absl/strings/str_cat.h"
#include "client/attnd/channel_credentials.h"
#include "client/attnd/grpc_status.h"
#include "client/attnd/wire_messages.h"
#include "server/transport/parallel_range_copier.h"

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

constexpr char kForwardMethod[] = "/attnd.v1.Attention/Forward";
constexpr char kBackwardMethod[] = "/attnd.v1.Attention/Backward";

absl::StatusOr<grpc::ByteBuffer> Encode(const v1::ForwardRequest& r, const ForwardBuffers& b,
                                        std::shared_ptr<const void> owner) {
  return EncodeForward(r, InputsOf(b), std::move(owner));
}
absl::StatusOr<grpc::ByteBuffer> Encode(const v1::BackwardRequest& r, const BackwardBuffers& b,
                                        std::shared_ptr<const void> owner) {
  return EncodeBackward(r, InputsOf(b), std::move(owner));
}
absl::Status Decode(const grpc::ByteBuffer& in, const ForwardBuffers& b, v1::ForwardResponse* r,
                    const RangeCopier& copy) {
  return DecodeForward(in, OutputsOf(b), r, copy);
}
absl::Status Decode(const grpc::ByteBuffer& in, const BackwardBuffers& b, v1::BackwardResponse* r,
                    const RangeCopier& copy) {
  return DecodeBackward(in, OutputsOf(b), r, copy);
}

// One asynchronous call: its context (in PendingCall), encoded request, received response, the
// caller's buffers and callback, kept alive by the gRPC completion lambda until the call finishes.
template <typename Response, typename Buffers>
class RawAsyncCall final : public PendingCall {
 public:
  RawAsyncCall(std::shared_ptr<grpc::Channel> channel, Buffers buffers, ResponseCallback<Response> done,
               RangeCopier copier)
      : channel_(std::move(channel)), buffers_(buffers), done_(std::move(done)), copier_(std::move(copier)) {}

  grpc::ByteBuffer* request() { return &request_; }
  grpc::ByteBuffer* response() { return &response_; }

  void Finish(absl::Status status) {
    ResponseCallback<Response> done = std::move(done_);
    request_.Clear();  // the payload's slices (and the request they reference) go before the callback runs
    Response response;
    if (status.ok()) status = Decode(response_, buffers_, &response, copier_);
    response_.Clear();
    if (done) {
      if (status.ok()) {
        done(std::move(response));
      } else {
        done(status);
      }
    }
    MarkDone();
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;  // the call must not outlive its channel
  Buffers buffers_;
  grpc::ByteBuffer request_, response_;
  ResponseCallback<Response> done_;
  RangeCopier copier_;
};

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
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::Attention::NewStub(channel_)),
      generic_(std::make_unique<grpc::GenericStub>(channel_)),
      copier_(options_.parallel_copy ? RangeCopier(CopyRangesInParallel) : RangeCopier(CopyRangesSerially)) {}

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

absl::StatusOr<v1::ServerStats> Client::GetStats(const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::ServerStats stats;
  grpc::Status status = stub_->GetStats(&context, v1::GetStatsRequest(), &stats);
  if (!status.ok()) return FromGrpcStatus(status);
  return stats;
}

absl::StatusOr<grpc::ByteBuffer> Client::RawCall(const char* method, const grpc::ByteBuffer& request,
                                                 const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  grpc::ByteBuffer response;
  const grpc::internal::RpcMethod rpc(method, grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel_.get(), rpc, &context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ForwardResponse> Client::Forward(const v1::ForwardRequest& request, const CallOptions& call) {
  return Forward(request, ForwardBuffers{}, call);
}

absl::StatusOr<v1::BackwardResponse> Client::Backward(const v1::BackwardRequest& request, const CallOptions& call) {
  return Backward(request, BackwardBuffers{}, call);
}

absl::StatusOr<v1::ForwardResponse> Client::Forward(const v1::ForwardRequest& request, const ForwardBuffers& buffers,
                                                    const CallOptions& call) {
  absl::StatusOr<int64_t> inline_bytes = InlineTensorBytes(request, InputsOf(buffers));
  if (!inline_bytes.ok()) return inline_bytes.status();
  if (Streams(*inline_bytes)) return ForwardStream(request, buffers, call, options_.stream_chunk_bytes);
  // The request outlives the blocking call: its strings are referenced without an owner.
  absl::StatusOr<grpc::ByteBuffer> encoded = Encode(request, buffers, nullptr);
  if (!encoded.ok()) return encoded.status();
  absl::StatusOr<grpc::ByteBuffer> received = RawCall(kForwardMethod, *encoded, call);
  if (!received.ok()) return received.status();
  v1::ForwardResponse response;
  if (absl::Status s = Decode(*received, buffers, &response, copier_); !s.ok()) return s;
  return response;
}

absl::StatusOr<v1::BackwardResponse> Client::Backward(const v1::BackwardRequest& request,
                                                      const BackwardBuffers& buffers, const CallOptions& call) {
  absl::StatusOr<int64_t> inline_bytes = InlineTensorBytes(request, InputsOf(buffers));
  if (!inline_bytes.ok()) return inline_bytes.status();
  if (Streams(*inline_bytes)) return BackwardStream(request, buffers, call, options_.stream_chunk_bytes);
  absl::StatusOr<grpc::ByteBuffer> encoded = Encode(request, buffers, nullptr);
  if (!encoded.ok()) return encoded.status();
  absl::StatusOr<grpc::ByteBuffer> received = RawCall(kBackwardMethod, *encoded, call);
  if (!received.ok()) return received.status();
  v1::BackwardResponse response;
  if (absl::Status s = Decode(*received, buffers, &response, copier_); !s.ok()) return s;
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

template <typename Request, typename Response, typename Buffers>
std::shared_ptr<PendingCall> Client::RawAsync(const char* method, std::shared_ptr<const Request> request,
                                              const Buffers& buffers, ResponseCallback<Response> done,
                                              const CallOptions& call) {
  auto async = std::make_shared<RawAsyncCall<Response, Buffers>>(channel_, buffers, std::move(done), copier_);
  if (request == nullptr) {
    async->Finish(absl::InvalidArgumentError("request is null"));
    return async;
  }
  // The slices keep the request alive until gRPC has sent them.
  absl::StatusOr<grpc::ByteBuffer> encoded = Encode(*request, buffers, request);
  if (!encoded.ok()) {
    async->Finish(encoded.status());
    return async;
  }
  *async->request() = *std::move(encoded);
  Prepare(call, async->context());
  generic_->UnaryCall(async->context(), method, grpc::StubOptions(), async->request(), async->response(),
                      [async](grpc::Status status) { async->Finish(FromGrpcStatus(status)); });
  return async;
}

std::shared_ptr<PendingCall> Client::ForwardAsync(std::shared_ptr<const v1::ForwardRequest> request,
                                                  ResponseCallback<v1::ForwardResponse> done,
                                                  const CallOptions& call) {
  return ForwardAsync(std::move(request), ForwardBuffers{}, std::move(done), call);
}

std::shared_ptr<PendingCall> Client::ForwardAsync(v1::ForwardRequest request,
                                                  ResponseCallback<v1::ForwardResponse> done,
                                                  const CallOptions& call) {
  return ForwardAsync(std::make_shared<const v1::ForwardRequest>(std::move(request)), std::move(done), call);
}

std::shared_ptr<PendingCall> Client::ForwardAsync(std::shared_ptr<const v1::ForwardRequest> request,
                                                  const ForwardBuffers& buffers,
                                                  ResponseCallback<v1::ForwardResponse> done,
                                                  const CallOptions& call) {
  return RawAsync<v1::ForwardRequest, v1::ForwardResponse>(kForwardMethod, std::move(request), buffers,
                                                           std::move(done), call);
}

std::shared_ptr<PendingCall> Client::BackwardAsync(std::shared_ptr<const v1::BackwardRequest> request,
                                                   ResponseCallback<v1::BackwardResponse> done,
                                                   const CallOptions& call) {
  return BackwardAsync(std::move(request), BackwardBuffers{}, std::move(done), call);
}

std::shared_ptr<PendingCall> Client::BackwardAsync(v1::BackwardRequest request,
                                                   ResponseCallback<v1::BackwardResponse> done,
                                                   const CallOptions& call) {
  return BackwardAsync(std::make_shared<const v1::BackwardRequest>(std::move(request)), std::move(done), call);
}

std::shared_ptr<PendingCall> Client::BackwardAsync(std::shared_ptr<const v1::BackwardRequest> request,
                                                   const BackwardBuffers& buffers,
                                                   ResponseCallback<v1::BackwardResponse> done,
                                                   const CallOptions& call) {
  return RawAsync<v1::BackwardRequest, v1::BackwardResponse>(kBackwardMethod, std::move(request), buffers,
                                                             std::move(done), call);
}

absl::StatusOr<v1::RegionInfo> Client::RegisterSharedMemory(const v1::RegisterSharedMemoryRequest& request,
                                                            const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::RegionInfo info;
  grpc::Status status = stub_->RegisterSharedMemory(&context, request, &info);
  if (!status.ok()) return FromGrpcStatus(status);
  return info;
}

absl::StatusOr<v1::RegionInfo> Client::RegisterCudaMemory(const v1::RegisterCudaMemoryRequest& request,
                                                          const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::RegionInfo info;
  grpc::Status status = stub_->RegisterCudaMemory(&context, request, &info);
  if (!status.ok()) return FromGrpcStatus(status);
  return info;
}

absl::Status Client::UnregisterRegion(const std::string& region_id, const std::string& key, const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::UnregisterRegionRequest request;
  request.set_region_id(region_id);
  request.set_key(key);
  v1::UnregisterRegionResponse response;
  return FromGrpcStatus(stub_->UnregisterRegion(&context, request, &response));
}

absl::StatusOr<int64_t> Client::ReleaseResident(const std::string& handle, const CallOptions& call) {
  grpc::ClientContext context;
  Prepare(call, &context);
  v1::ReleaseResidentRequest request;
  request.set_handle(handle);
  v1::ReleaseResidentResponse response;
  grpc::Status status = stub_->ReleaseResident(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.bytes_freed();
}

}  // namespace attnd
