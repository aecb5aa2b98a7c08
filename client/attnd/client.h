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
//
// Tensor bytes are never copied into or out of protobuf on the way: Forward/Backward send a
// request's tensor `data` strings, or caller buffers (ForwardBuffers / BackwardBuffers), as slices
// over that memory, and copy a response's tensor bytes once from the received slices, into the
// response message or straight into caller buffers. The wire is plain attnd.v1 protobuf. Tensors
// beyond 2 GiB go through ForwardStream / BackwardStream; co-located clients can skip the socket
// altogether with shared-memory regions (region_session.h), and a training step can keep its
// forward's tensors in the daemon (ForwardRequest.keep_resident, then a Backward naming the handle).
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
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include "attnd/v1/attention.grpc.pb.h"
#include "attnd/v1/attention.pb.h"
#include "client/attnd/pending_call.h"
#include "client/attnd/tensor_buffers.h"
#include "server/transport/range_copier.h"

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
  // Scale-out. The target may name several daemons: "ipv4:127.0.0.1:7100,127.0.0.1:7101" or a DNS
  // name with several A records, e.g. a Kubernetes headless Service, "dns:///attnd:7100".
  // "round_robin" keeps a connection to every address and spreads calls over the ready ones;
  // "pick_first" uses one address at a time. Both are set through the channel's service config
  // (so a "grpc.service_config" in channel_args replaces them).
  std::string load_balancing_policy = "round_robin";
  // Calls of attnd.v1.Attention that fail with UNAVAILABLE (a daemon draining or gone, a
  // connection lost before the daemon answered) are retried on a ready address, up to
  // retry_max_attempts attempts in all (2..5; gRPC caps it at 5), with exponential backoff from
  // retry_initial_backoff to retry_max_backoff. Every retry stays within the call's deadline; the
  // last attempt's status is returned. A call the daemon has begun answering is never retried.
  bool retry_unavailable = true;
  // Also retry CANCELLED when the daemon, not this client, cancelled the call: a server that stops
  // its gRPC server with calls still arriving cancels them (attnd did until it learned to close its
  // connections first, docs/RELIABILITY.md; other servers and proxies may still). attnd's calls are pure
  // functions of their request, so computing one again elsewhere is safe. A call this client
  // cancels (PendingCall::Cancel) or whose deadline passes is never retried.
  bool retry_cancelled_by_server = true;
  int retry_max_attempts = 4;
  absl::Duration retry_initial_backoff = absl::Milliseconds(50);
  absl::Duration retry_max_backoff = absl::Seconds(1);
  // gRPC keeps a copy of each request so that it can be sent again, up to this many bytes per call;
  // a larger request is sent once and not retried (gRPC's default, 256 KiB, would exclude almost
  // every attention payload).
  int retry_buffer_bytes = 64 << 20;
  // Null: plaintext (insecure) credentials, unless the TLS options below ask for TLS.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Transport security (with `credentials` null): TLS when use_tls is set or any tls_* file is
  // named. tls_ca_file: PEM roots that signed the daemon's certificate (empty: the system's
  // roots). tls_cert_file + tls_key_file: this client's certificate and key, for a daemon that
  // requires mutual TLS (--tls_client_ca). tls_server_name: the name the daemon's certificate must
  // carry, instead of the target's host.
  bool use_tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_server_name;
  // Sent as "authorization: Bearer <token>" with every call, for a daemon with --auth_tokens_file.
  // Needs TLS: gRPC never sends such a token over a plaintext connection.
  std::string bearer_token;
  // Copy response tensors out of the received slices over a few helper threads shared by the
  // process (the engine's ParallelCopy; responses under 1 MiB are copied on the calling thread).
  bool parallel_copy = true;
  // Forward / Backward (blocking, with or without caller buffers) whose request tensors carry more
  // than this many bytes go over ForwardStream / BackwardStream, in chunks of stream_chunk_bytes:
  // the daemon copies each chunk out of gRPC's buffers while the next is on the wire, and sends the
  // response the same way, instead of copying a whole message once it has arrived (measured faster
  // from 12 MiB up: bench/results/2026-11-23_devbox_transport2.md). The call and its result are the
  // same; the daemon holds it to --max_stream_request_bytes. 0: always one unary message.
  int64_t stream_above_bytes = int64_t{8} << 20;
  size_t stream_chunk_bytes = size_t{4} << 20;
  // Further channel arguments ("grpc.*" keys), applied after the ones above.
  std::vector<std::pair<std::string, std::variant<int, std::string>>> channel_args;
};

struct CallOptions {
  // Deadline of this call, counted from when it starts; unset: ClientOptions::default_timeout.
  // absl::InfiniteDuration(): no deadline.
  std::optional<absl::Duration> timeout = std::nullopt;
  std::optional<bool> wait_for_ready = std::nullopt;  // unset: ClientOptions::wait_for_ready
};

// The gRPC service config (JSON) that `options` asks for: load_balancing_policy and, when
// retry_unavailable, the retry policy of attnd.v1.Attention. INVALID_ARGUMENT names a bad option.
absl::StatusOr<std::string> ServiceConfigJson(const ClientOptions& options);

template <typename Response>
using ResponseCallback = std::function<void(absl::StatusOr<Response>)>;

class Client {
 public:
  // Builds the channel and, when options.connect_timeout > 0, waits for it to be ready:
  // UNAVAILABLE (naming the target) if the daemon cannot be reached in that time (a failed TLS
  // handshake included), INVALID_ARGUMENT if the target is empty or the load-balancing, retry or
  // TLS options are invalid, NOT_FOUND for a TLS file that cannot be read.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  // Blocking calls.
  absl::StatusOr<v1::ForwardResponse> Forward(const v1::ForwardRequest& request,
                                              const CallOptions& call = {});
  absl::StatusOr<v1::BackwardResponse> Backward(const v1::BackwardRequest& request,
                                                const CallOptions& call = {});
  // With caller buffers: an InputBytes replaces the tensor's bytes in the request (whose `data` must
  // be empty); an output tensor with an OutputBytes is copied there and its `data` left empty in the
  // returned response (DATA_LOSS if the sizes disagree).
  absl::StatusOr<v1::ForwardResponse> Forward(const v1::ForwardRequest& request, const ForwardBuffers& buffers,
                                              const CallOptions& call = {});
  absl::StatusOr<v1::BackwardResponse> Backward(const v1::BackwardRequest& request, const BackwardBuffers& buffers,
                                                const CallOptions& call = {});
  absl::StatusOr<v1::ServerInfo> GetServerInfo(const CallOptions& call = {});
  // The daemon's cumulative measurements (engine stages, batcher, GPU pools); see ServerStats.
  absl::StatusOr<v1::ServerStats> GetStats(const CallOptions& call = {});

  // Streamed calls for tensors beyond 2 GiB (stream_call.h): the request's tensors go as chunks
  // of `chunk_bytes`, from buffers or from the request's `data`.
  absl::StatusOr<v1::ForwardResponse> ForwardStream(const v1::ForwardRequest& request, const ForwardBuffers& buffers,
                                                    const CallOptions& call = {}, size_t chunk_bytes = 4 << 20);
  absl::StatusOr<v1::BackwardResponse> BackwardStream(const v1::BackwardRequest& request,
                                                      const BackwardBuffers& buffers, const CallOptions& call = {},
                                                      size_t chunk_bytes = 4 << 20);

  // Transports: regions (see region_session.h for the whole sequence) and resident handles.
  absl::StatusOr<v1::RegionInfo> RegisterSharedMemory(const v1::RegisterSharedMemoryRequest& request,
                                                      const CallOptions& call = {});
  absl::StatusOr<v1::RegionInfo> RegisterCudaMemory(const v1::RegisterCudaMemoryRequest& request,
                                                    const CallOptions& call = {});
  absl::Status UnregisterRegion(const std::string& region_id, const std::string& key, const CallOptions& call = {});
  absl::StatusOr<int64_t> ReleaseResident(const std::string& handle, const CallOptions& call = {});

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
  // With caller buffers (which must live until `done` has run).
  std::shared_ptr<PendingCall> ForwardAsync(std::shared_ptr<const v1::ForwardRequest> request,
                                            const ForwardBuffers& buffers, ResponseCallback<v1::ForwardResponse> done,
                                            const CallOptions& call = {});
  std::shared_ptr<PendingCall> BackwardAsync(std::shared_ptr<const v1::BackwardRequest> request,
                                             const BackwardBuffers& buffers,
                                             ResponseCallback<v1::BackwardResponse> done,
                                             const CallOptions& call = {});

  // Waits up to `timeout` for the channel to be READY, connecting if it is idle.
  absl::Status WaitForReady(absl::Duration timeout);

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  Client(ClientOptions options, std::shared_ptr<grpc::Channel> channel);

  // Whether a request whose tensors carry `inline_bytes` goes as a stream (stream_above_bytes).
  bool Streams(int64_t inline_bytes) const {
    return options_.stream_above_bytes > 0 && inline_bytes > options_.stream_above_bytes;
  }
  // Sets the deadline and wait-for-ready flag of a call on its context.
  void Prepare(const CallOptions& call, grpc::ClientContext* context) const;
  // One blocking raw call of `method` ("/attnd.v1.Attention/Forward").
  absl::StatusOr<grpc::ByteBuffer> RawCall(const char* method, const grpc::ByteBuffer& request,
                                           const CallOptions& call);
  template <typename Request, typename Response, typename Buffers>
  std::shared_ptr<PendingCall> RawAsync(const char* method, std::shared_ptr<const Request> request,
                                        const Buffers& buffers, ResponseCallback<Response> done,
                                        const CallOptions& call);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Attention::Stub> stub_;
  std::unique_ptr<grpc::GenericStub> generic_;
  RangeCopier copier_;  // how response tensors are copied out (options_.parallel_copy)
};

}  // namespace attnd
