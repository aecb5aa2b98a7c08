// attnd::Client: the C++ client of the attnd daemon.
//
//   ASSIGN_OR_RETURN(auto client, attnd::Client::Connect({.target = "127.0.0.1:7100"}));
//   ASSIGN_OR_RETURN(auto request, attnd::MakeForwardRequest(shape, DType::kBF16, {}, q, k, v));
//   ASSIGN_OR_RETURN(v1::ForwardResponse response, client->Forward(request));
//
// Every call returns absl::Status / absl::StatusOr carrying the gRPC status code and message
// unchanged (INVALID_ARGUMENT naming the bad field, DEADLINE_EXCEEDED, UNAVAILABLE, ...).
// A Client is thread-safe: one instance may serve many threads, and async calls may be in flight
// from any number of them. Requests of several hundred MiB pass: message size limits are lifted
// on the client side (the daemon's --max_request_bytes still applies).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attnd/v1/attention.grpc.pb.h"
#include "attnd/v1/attention.pb.h"
#include "client/attnd/pending_call.h"

namespace grpc {
class Channel;
class ChannelCredentials;
}  // namespace grpc

namespace attnd {

struct ClientOptions {
  // Any gRPC target: "host:port", "dns:///name:port", "unix:///path".
  std::string target;
  // Deadline of a call that names none in its CallOptions. absl::InfiniteDuration(): no deadline.
  absl::Duration default_timeout = absl::Seconds(60);
  // Connect() waits this long for the channel to reach READY and fails with UNAVAILABLE if it does
  // not. Zero: connect lazily (the first call connects; nothing is checked up front).
  absl::Duration connect_timeout = absl::Seconds(10);
  // Message size limits in bytes; -1 lifts the limit (gRPC's default receive limit is 4 MiB).
  int max_send_message_bytes = -1;
  int max_receive_message_bytes = -1;
  // HTTP/2 keepalive pings while calls are open; zero or infinite disables them. The daemon must
  // permit pings this frequent, or it closes the connection with "too_many_pings".
  absl::Duration keepalive_time = absl::ZeroDuration();
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // Default for every call: wait while the channel is (re)connecting instead of failing fast with
  // UNAVAILABLE. Off by default so that a dead daemon is reported at once.
  bool wait_for_ready = false;
  // Give this client its own TCP connection instead of sharing one with other clients of the same
  // target in this process (gRPC shares them by default). Load generators want their own.
  bool dedicated_connection = false;
  // Null: plaintext (insecure) credentials.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Further channel arguments ("grpc.*" keys), applied after the ones above.
  std::vector<std::pair<std::string, std::variant<int, std::string>>> channel_args;
};

struct CallOptions {
  // Deadline of this call, counted from when it starts; unset: ClientOptions::default_timeout.
  // absl::InfiniteDuration(): no deadline.
  std::optional<absl::Duration> timeout = std::nullopt;
  std::optional<bool> wait_for_ready = std::nullopt;  // unset: ClientOptions::wait_for_ready
};

template <typename Response>
using ResponseCallback = std::function<void(absl::StatusOr<Response>)>;

class Client {
 public:
  // Builds the channel and, when options.connect_timeout > 0, waits for it to be ready:
  // UNAVAILABLE (naming the target) if the daemon cannot be reached in that time,
  // INVALID_ARGUMENT if the target is empty.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  // Blocking calls.
  absl::StatusOr<v1::ForwardResponse> Forward(const v1::ForwardRequest& request,
                                              const CallOptions& call = {});
  absl::StatusOr<v1::BackwardResponse> Backward(const v1::BackwardRequest& request,
                                                const CallOptions& call = {});
  absl::StatusOr<v1::ServerInfo> GetServerInfo(const CallOptions& call = {});

  // Asynchronous calls (gRPC callback API). The call owns its context and keeps the request alive
  // until it completes; pass a shared request to send the same payload many times without copying
  // it. `done` runs exactly once, on a gRPC thread: keep it short and never block in it on another
  // call of this client. The returned PendingCall can cancel the call or wait for it.
  std::shared_ptr<PendingCall> ForwardAsync(std::shared_ptr<const v1::ForwardRequest> request,
                                            ResponseCallback<v1::ForwardResponse> done,
                                            const CallOptions& call = {});
  std::shared_ptr<PendingCall> ForwardAsync(v1::ForwardRequest request,
                                            ResponseCallback<v1::ForwardResponse> done,
                                            const CallOptions& call = {});
  std::shared_ptr<PendingCall> BackwardAsync(std::shared_ptr<const v1::BackwardRequest> request,
                                             ResponseCallback<v1::BackwardResponse> done,
                                             const CallOptions& call = {});
  std::shared_ptr<PendingCall> BackwardAsync(v1::BackwardRequest request,
                                             ResponseCallback<v1::BackwardResponse> done,
                                             const CallOptions& call = {});

  // Waits up to `timeout` for the channel to be READY, connecting if it is idle.
  absl::Status WaitForReady(absl::Duration timeout);

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel);

  // Sets the deadline and wait-for-ready flag of a call on its context.
  void Prepare(const CallOptions& call, grpc::ClientContext* context) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Attention::Stub> stub_;
};

}  // namespace attnd
