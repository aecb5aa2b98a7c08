// AttentionServer: the attnd gRPC server as an embeddable object. main.cc runs one as the daemon;
// tests and the client library's tests start one in-process on a free loopback port.
//
// Besides attnd.v1.Attention it serves the standard grpc.health.v1.Health service (SERVING while
// it accepts calls, NOT_SERVING once it drains) and server reflection (grpcurl, grpc_cli). It
// records metrics (service_metrics.h) and, with options.metrics_listen, serves them to Prometheus;
// the exporter keeps answering while the server drains and stops last.
//
// Security (options.security, server/security/): plaintext by default; TLS, mutual TLS and bearer
// tokens when configured. grpc.health.v1 needs no token; options.health_listen adds a plaintext,
// health-only listener for probes that cannot do TLS at all.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/backend.h"
#include "server/metrics/metrics_registry.h"
#include "server/security/file_change_watcher.h"
#include "server/security/server_credentials.h"
#include "server/service/request_validation.h"

namespace grpc {
class Server;
}

namespace attnd {

class AccessLog;
class HostTensorAllocator;
class TensorAllocator;
class RegionRegistry;
class RegionSocket;
class ResidentStore;
struct CudaRegionHooks;
class AttentionService;
class ServiceMetrics;
class WorkerPool;
namespace metrics {
class MetricsHttpServer;
}

// Calls validated and waiting for a worker, beyond which new calls are refused.
inline constexpr size_t kMaxQueuedCalls = 4096;
// Calls in flight on one client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
inline constexpr int kDefaultMaxConcurrentStreams = 256;

struct ServerOptions {
  // host:port; port 0 picks a free port (see port()/address()). "unix:/path" listens on a Unix
  // domain socket.
  std::string listen = "127.0.0.1:0";
  // Largest request, summed over its tensors' bytes; responses are held to it too. Default and
  // maximum 2 GiB - 1 MiB (kMaxRequestBytesLimit): protobuf cannot carry a message of 2 GiB, and
  // the rest is room for shapes and params.
  int64_t max_request_bytes = kDefaultMaxRequestBytes;
  // Most tokens in q, and in k/v, of one request (total_q, total_k): 16 Mi (2^24). Never more than
  // INT32_MAX, the range of cu_seqlens.
  int64_t max_tokens_per_request = kDefaultMaxTokensPerRequest;
  // Requests computed at once; <= 0: hardware threads. Up to max_queued_calls more wait in a
  // queue, beyond which calls get RESOURCE_EXHAUSTED ("server busy").
  int worker_threads = 0;
  size_t max_queued_calls = kMaxQueuedCalls;
  // Calls in flight on one connection. A client that starts more queues the rest on its side
  // (HTTP/2 flow of streams, no error) until one finishes; they count against their deadlines.
  // 0: gRPC's default (unlimited).
  int max_concurrent_streams = kDefaultMaxConcurrentStreams;
  // TLS, mutual TLS and bearer tokens for the listener (server/security/server_credentials.h).
  ServerSecurityOptions security;
  // host:port of a second listener, plaintext, serving only grpc.health.v1 with the same statuses
  // as the main one: for probes that can present neither a client certificate nor a token
  // (Kubernetes' native gRPC probes). Empty: none. Port 0 picks a free port (health_address()).
  std::string health_listen;
  // host:port of the Prometheus exporter (GET /metrics over HTTP); empty: none. Port 0 picks a
  // free port (see metrics_address()). The metrics are recorded either way (metrics()).
  std::string metrics_listen;
  // One line per finished call: a file appended to, "-" for stderr, empty for none.
  std::string access_log;

  // Transports (server/transport; docs/ARCHITECTURE.md "Transports").
  // Unix socket for co-located clients' shared-memory / CUDA IPC sessions; empty: off.
  std::string region_socket;
  int region_socket_mode = 0660;  // who may connect (the socket file's permissions)
  // Register shared-memory regions with the GPU driver for DMA (a CUDA backend), and accept CUDA
  // IPC regions (a backend that takes device buffers). Ignored where attnd has no CUDA.
  bool pin_shared_memory = false;
  bool cuda_ipc = false;
  // Decode received tensors into the backend's host buffers (Backend::AllocateHostBuffer: pinned
  // for CUDA) and let it write results there, instead of attnd's own cached heap buffers.
  bool backend_host_buffers = false;
  // Resident tensors (ForwardRequest.keep_resident): bytes held at most; 0 turns them off.
  int64_t resident_bytes = int64_t{4} << 30;
  absl::Duration resident_ttl = absl::Seconds(60);
  absl::Duration resident_max_ttl = absl::Minutes(10);
  // Largest request of ForwardStream / BackwardStream (their tensors are not held to 2 GiB).
  // 0: max_request_bytes when that is set below its default (an operator who lowers it means every
  // request, and clients stream anything over a few MiB by default), else 16 GiB.
  int64_t max_stream_request_bytes = 0;
  int64_t stream_chunk_bytes = int64_t{4} << 20;
  // Gather received tensors out of gRPC's slices (and make the transport's other host copies)
  // over the engine's ParallelCopy helper threads instead of on the worker alone.
  bool parallel_copy = true;
  // Host tensor buffers kept for reuse (HostTensorAllocator's cache).
  int64_t tensor_cache_bytes = int64_t{2} << 30;
  // Further gRPC channel arguments ("grpc.*" keys). attnd sets none of HTTP/2's windows, frame or
  // read sizes: on the H100 host, gRPC's defaults moved 12-192 MiB requests 6-29% faster than
  // 64 MiB windows, 16 MiB frames and 1-8 MiB reads (bench/results/2026-11-23_h100_transport.md).
  std::vector<std::pair<std::string, int>> channel_args;
};

class AttentionServer {
 public:
  // Binds, starts serving and logs "attnd listening on <address()>" to stderr. Errors: a null
  // backend or bad limits (INVALID_ARGUMENT), an address that cannot be bound (UNAVAILABLE).
  static absl::StatusOr<std::unique_ptr<AttentionServer>> Start(const ServerOptions& options,
                                                                std::unique_ptr<Backend> backend);

  int port() const { return port_; }
  // A dialable address: the listen host (127.0.0.1 / [::1] for a wildcard host) and the bound port.
  std::string address() const { return address_; }
  // The exporter's dialable host:port, empty without options.metrics_listen.
  std::string metrics_address() const { return metrics_address_; }
  // The health-only listener's dialable host:port, empty without options.health_listen.
  std::string health_address() const { return health_address_; }

  // Reads options.security.auth_tokens_file again (the daemon does on SIGHUP, and the server itself
  // when the file changes): the number of tokens accepted from now on, logged with `reason`.
  // FAILED_PRECONDITION without token auth; on any error the tokens in use stay.
  absl::StatusOr<int> ReloadAuthTokens(absl::string_view reason = "asked");
  // Every series the server records; other layers may add theirs (e.g. a backend's stages).
  metrics::MetricsRegistry& metrics() { return *registry_; }
  // The transport state (tests watch it return to zero). regions()/resident() are null when off.
  const TensorAllocator& tensor_allocator() const;
  RegionRegistry* regions() const { return regions_.get(); }
  ResidentStore* resident() const { return resident_.get(); }
  // The region socket's path, empty when off.
  std::string region_socket() const;

  // Stops accepting new calls (UNAVAILABLE, NOT_SERVING); in-flight calls finish until `grace`
  // passes, then every connection is closed (a call still open ends UNAVAILABLE for its client,
  // never CANCELLED; see CloseConnectionsAndStop). Returns when every call has finished.
  // Thread-safe; later calls wait for the first to finish.
  void Shutdown(absl::Duration grace = absl::Seconds(30));
  // Blocks until Shutdown() has finished.
  void Wait();
  ~AttentionServer();  // Shutdown() if still running

  AttentionServer(const AttentionServer&) = delete;
  AttentionServer& operator=(const AttentionServer&) = delete;

 private:
  AttentionServer();
  void RegisterGauges(size_t max_queued_calls);  // the callback gauges that read the pool and the service
  // The last step of Shutdown(): every connection closed, then the gRPC server stopped.
  void CloseConnectionsAndStop();
  // grpc.health.v1 status of every service, on the main and the health-only listener.
  void SetServing(bool serving);
  absl::Status StartTransports(const ServerOptions& options);  // allocator, regions, resident store

  enum class State { kStarting, kRunning, kDraining, kStopped };

  // Destroyed in reverse: the exporter first, then the gRPC server, the backend, the metrics last.
  std::unique_ptr<metrics::MetricsRegistry> registry_;
  std::unique_ptr<ServiceMetrics> service_metrics_;
  std::unique_ptr<AccessLog> access_log_;
  std::unique_ptr<Backend> backend_;
  // Transport state: used by calls, so it goes after the gRPC server (declared before it).
  std::unique_ptr<HostTensorAllocator> allocator_;
  std::unique_ptr<TensorAllocator> backend_allocator_;  // options.backend_host_buffers
  std::unique_ptr<CudaRegionHooks> cuda_hooks_;
  std::unique_ptr<RegionRegistry> regions_;
  std::unique_ptr<ResidentStore> resident_;
  std::unique_ptr<RegionSocket> region_socket_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<AttentionService> service_;
  std::shared_ptr<CertificateMirror> certificates_;  // the TLS files the listener reads: outlives it
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;  // options.health_listen
  std::shared_ptr<TokenAuthProcessor> tokens_;
  std::unique_ptr<metrics::MetricsHttpServer> metrics_http_;
  int port_ = 0;
  std::string unix_path_;  // "unix:PATH" listeners
  std::string address_;
  std::string metrics_address_;
  std::string health_address_;

  absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kStarting;
  // Reloads the tokens when their file changes (options.security.reload_interval). Declared last:
  // it stops before anything its callback touches is destroyed.
  std::unique_ptr<FileChangeWatcher> token_watcher_;
};

}  // namespace attnd
