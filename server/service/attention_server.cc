#include "server/service/attention_server.h"

#include <malloc.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <mutex>
#include <utility>

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/backends/backend_factory.h"
#include "server/metrics/metrics_http_server.h"
#include "server/service/attention_service.h"
#include "server/service/listening_sockets.h"
#include "server/service/service_metrics.h"
#include "server/service/structured_log.h"
#include "server/service/worker_pool.h"
#include "server/transport/backend_host_allocator.h"
#include "server/transport/cuda_region_hooks.h"
#include "server/transport/host_tensor_allocator.h"
#include "server/transport/parallel_range_copier.h"
#include "server/transport/region_registry.h"
#include "server/transport/region_socket.h"
#include "server/transport/resident_store.h"

namespace attnd {
namespace {

// Room in a received message for what is not tensor bytes: shapes, params, cu_seqlens.
constexpr int64_t kMessageOverheadBytes = int64_t{1} << 20;
// The end of a drain (CloseConnectionsAndStop): how long open connections keep working once the
// listener is stopped, and how long closing them takes effect before gRPC's Shutdown().
constexpr absl::Duration kFinalLinger = absl::Milliseconds(100);
constexpr absl::Duration kCloseSettle = absl::Milliseconds(50);

// Process-wide switches for every server built from here on: the standard health service and
// reflection. EnableDefaultHealthCheckService is not thread-safe, hence once.
void InitGrpcOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
}

// VmRSS of this process in bytes, or -1.
int64_t ResidentBytes() {
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (statm == nullptr) return -1;
  long pages = 0, resident = 0;
  const int read = std::fscanf(statm, "%ld %ld", &pages, &resident);
  std::fclose(statm);
  return read == 2 ? static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE) : -1;
}

// "0.0.0.0:0" + 43211 -> "127.0.0.1:43211"; "[::]:0" -> "[::1]:43211"; "host:0" -> "host:43211".
std::string DialableAddress(const std::string& listen, int port) {
  if (absl::StartsWith(listen, "unix:")) return listen;
  const size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "[::]") host = "[::1]";
  return absl::StrCat(host, ":", port);
}

// "host:port" with a port in 0..65535 (gRPC would silently wrap 99999 to 34463), or a unix: path.
absl::Status CheckListenAddress(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) return absl::OkStatus();
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? "" : listen.substr(0, colon);
  const std::string port = colon == std::string::npos ? "" : listen.substr(colon + 1);
  if (host.empty() || port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen: '", listen,
        "' is not host:port with a port in 0..65535 (e.g. 127.0.0.1:50051, 0.0.0.0:0, [::]:50051)"));
  }
  return absl::OkStatus();
}

struct HealthOnlyServer {
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

// A plaintext listener that serves only the default grpc.health.v1 service (no attention calls,
// no reflection): what a probe may reach without credentials.
absl::StatusOr<HealthOnlyServer> StartHealthOnlyServer(const std::string& listen) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(4096);  // a HealthCheckRequest names a service, nothing more
  HealthOnlyServer health;
  health.server = builder.BuildAndStart();
  if (health.server == nullptr || (!absl::StartsWith(listen, "unix:") && port == 0)) {
    return absl::UnavailableError(absl::StrCat("cannot listen on health_listen '", listen, "' (address in use?)"));
  }
  health.address = DialableAddress(listen, port);
  return health;
}

}  // namespace

AttentionServer::AttentionServer() = default;

absl::StatusOr<std::unique_ptr<AttentionServer>> AttentionServer::Start(const ServerOptions& options,
                                                                        std::unique_ptr<Backend> backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("AttentionServer::Start: backend is null");
  if (options.max_request_bytes <= 0 || options.max_request_bytes > kMaxRequestBytesLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_request_bytes: must be in 1..", kMaxRequestBytesLimit,
                     " (protobuf's 2 GiB message limit less 1 MiB for framing), got ", options.max_request_bytes));
  }
  if (options.max_tokens_per_request <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens_per_request: must be positive, got ", options.max_tokens_per_request));
  }
  if (options.max_concurrent_streams < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrent_streams: must be >= 0 (0: no limit), got ", options.max_concurrent_streams));
  }
  if (absl::Status s = CheckListenAddress(options.listen); !s.ok()) return s;
  if (!options.health_listen.empty()) {
    if (absl::Status s = CheckListenAddress(options.health_listen); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("health_", s.message()));
    }
  }
  ServerSecurityOptions security_options = options.security;
  security_options.on_certificate_change = [](const absl::Status& status) {
    if (status.ok()) {
      LogLine(LogLevel::kInfo, "TLS certificate files changed; new handshakes use them");
    } else {
      LogLine(LogLevel::kWarning, "TLS certificate files changed but not used; the previous ones stay in use")
          .Kv("error", status.ToString());
    }
  };
  absl::StatusOr<ServerSecurity> security = MakeServerSecurity(security_options);
  if (!security.ok()) return security.status();
  InitGrpcOnce();

  RequestLimits limits;
  limits.max_request_bytes = options.max_request_bytes;
  limits.max_tokens_per_request = options.max_tokens_per_request;

  std::unique_ptr<AttentionServer> server(new AttentionServer);
  server->registry_ = std::make_unique<metrics::MetricsRegistry>();
  server->service_metrics_ = std::make_unique<ServiceMetrics>(server->registry_.get());
  if (!options.access_log.empty()) {
    absl::StatusOr<std::unique_ptr<AccessLog>> log = AccessLog::Open(options.access_log);
    if (!log.ok()) return log.status();
    server->access_log_ = *std::move(log);
  }
  server->backend_ = std::move(backend);
  if (absl::Status s = server->StartTransports(options); !s.ok()) return s;
  TransportContext transport;
  transport.allocator = &const_cast<TensorAllocator&>(server->tensor_allocator());
  transport.regions = server->regions_.get();
  transport.resident = server->resident_.get();
  transport.backend_takes_device_memory = options.cuda_ipc;
  if (options.parallel_copy) transport.copier = CopyRangesInParallel;
  TransportSettings settings;
  settings.region_socket = options.region_socket;
  const bool follow_unary = options.max_stream_request_bytes == 0 && options.max_request_bytes < kDefaultMaxRequestBytes;
  settings.max_stream_request_bytes = options.max_stream_request_bytes > 0 ? options.max_stream_request_bytes
                                      : follow_unary                       ? options.max_request_bytes
                                                                           : kDefaultMaxStreamRequestBytes;
  settings.stream_limit_flag = follow_unary ? "max_request_bytes" : "max_stream_request_bytes";
  limits.larger_streams = settings.max_stream_request_bytes > std::min(limits.max_request_bytes, kMaxRequestBytesLimit);
  settings.stream_chunk_bytes = options.stream_chunk_bytes;
  server->pool_ = std::make_unique<WorkerPool>(options.worker_threads, options.max_queued_calls);
  server->service_ = std::make_unique<AttentionService>(server->backend_.get(), server->pool_.get(), limits,
                                                        AvailableBackends(), transport, settings,
                                                        server->service_metrics_.get(), server->access_log_.get());
  server->RegisterGauges(options.max_queued_calls);
  server->tokens_ = security->tokens;
  server->certificates_ = security->certificates;
  if (server->tokens_ != nullptr) {
    metrics::MetricsRegistry* registry = server->registry_.get();
    server->tokens_->OnRefused([registry](grpc::StatusCode code) {
      registry
          ->GetCounter("attnd_auth_refused_total", "Calls refused by token authentication, by status.",
                       {{"code", std::string(StatusCodeName(code))}})
          .Increment();
    });
  }
  if (server->tokens_ != nullptr && options.security.reload_interval > absl::ZeroDuration()) {
    AttentionServer* self = server.get();
    server->token_watcher_ = std::make_unique<FileChangeWatcher>(
        options.security.auth_tokens_file, options.security.reload_interval,
        [self] { (void)self->ReloadAuthTokens("file changed"); });
  }
  if (!options.metrics_listen.empty()) {
    // Before the gRPC port: a bad or busy metrics address fails the start before any call is taken.
    absl::StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> http =
        metrics::MetricsHttpServer::Start(options.metrics_listen, server->registry_.get());
    if (!http.ok()) return http.status();
    server->metrics_http_ = *std::move(http);
    server->metrics_address_ = server->metrics_http_->address();
  }

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, security->credentials, &port);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(limits.max_request_bytes + kMessageOverheadBytes, INT_MAX)));
  builder.SetMaxSendMessageSize(-1);
  // gRPC sets SO_REUSEPORT by default, which would let a second daemon bind the same port and
  // silently split the traffic; a port in use must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (options.max_concurrent_streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  }
  for (const auto& [key, value] : options.channel_args) builder.AddChannelArgument(key, value);
  server->server_ = builder.BuildAndStart();
  const bool unix_socket = absl::StartsWith(options.listen, "unix:");
  if (server->server_ == nullptr || (!unix_socket && port == 0)) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen,
                                               "' (address in use, or not host:port / unix:path)"));
  }
  if (!options.health_listen.empty()) {
    absl::StatusOr<HealthOnlyServer> health = StartHealthOnlyServer(options.health_listen);
    if (!health.ok()) return health.status();
    server->health_server_ = std::move(health->server);
    server->health_address_ = health->address;
  }
  server->SetServing(true);
  server->port_ = unix_socket ? 0 : port;
  if (unix_socket) {  // "unix:relative", "unix:/absolute" or "unix:///absolute"
    server->unix_path_ = options.listen.substr(std::string_view("unix:").size());
    if (absl::StartsWith(server->unix_path_, "//")) server->unix_path_.erase(0, 2);
  }
  server->address_ = DialableAddress(options.listen, port);
  {
    absl::MutexLock lock(&server->mu_);
    server->state_ = State::kRunning;
  }
  // This exact line is the readiness signal scripts and tests parse; everything else is logfmt.
  std::fprintf(stderr, "attnd listening on %s\n", server->address_.c_str());
  std::fflush(stderr);
  LogLine(LogLevel::kInfo, "transport security")
      .Kv("tls", !security->tls ? "off" : security->mutual_tls ? "mutual" : "on")
      .Kv("auth_tokens", server->tokens_ != nullptr ? "on" : "off")
      .Kv("health_address", server->health_address_.empty() ? "-" : server->health_address_);
  if (server->metrics_http_ != nullptr) {
    LogLine(LogLevel::kInfo, "metrics exporter listening")
        .Kv("metrics_address", server->metrics_address_)
        .Kv("path", "/metrics");
  }
  return server;
}

void AttentionServer::SetServing(bool serving) {
  for (grpc::Server* s : {server_.get(), health_server_.get()}) {
    grpc::HealthCheckServiceInterface* health = s != nullptr ? s->GetHealthCheckService() : nullptr;
    if (health == nullptr) continue;
    if (serving) {
      health->SetServingStatus("", true);
      health->SetServingStatus(std::string(v1::Attention::service_full_name()), true);
    } else {
      health->SetServingStatus(false);  // every service
    }
  }
}

absl::StatusOr<int> AttentionServer::ReloadAuthTokens(absl::string_view reason) {
  if (tokens_ == nullptr) {
    return absl::FailedPreconditionError("token authentication is off (no auth_tokens_file): nothing to reload");
  }
  absl::StatusOr<int> tokens = tokens_->Reload();
  if (tokens.ok()) {
    LogLine(LogLevel::kInfo, "auth tokens reloaded").Kv("reason", reason).Kv("tokens", *tokens);
  } else {
    LogLine(LogLevel::kWarning, "auth tokens not reloaded; the previous ones stay in use")
        .Kv("reason", reason)
        .Kv("error", tokens.status().ToString());
  }
  return tokens;
}

absl::Status AttentionServer::StartTransports(const ServerOptions& options) {
  if (options.max_stream_request_bytes < 0 || options.stream_chunk_bytes <= 0 || options.resident_bytes < 0) {
    return absl::InvalidArgumentError("max_stream_request_bytes >= 0 (0: automatic), stream_chunk_bytes > 0, "
                                      "resident_bytes >= 0");
  }
  allocator_ = std::make_unique<HostTensorAllocator>(options.tensor_cache_bytes);
  if (options.backend_host_buffers) backend_allocator_ = std::make_unique<BackendHostAllocator>(backend_.get());
  cuda_hooks_ = std::make_unique<CudaRegionHooks>(MakeCudaRegionHooks());
  if (options.resident_bytes > 0) {
    ResidentStore::Options r;
    r.capacity_bytes = options.resident_bytes;
    r.default_ttl = options.resident_ttl;
    r.max_ttl = std::max(options.resident_max_ttl, options.resident_ttl);
    resident_ = std::make_unique<ResidentStore>(r);
  }
  if (!options.region_socket.empty()) {
    regions_ = std::make_unique<RegionRegistry>(RegionRegistry::Limits{},
                                                options.pin_shared_memory ? cuda_hooks_->pinner.get() : nullptr,
                                                options.cuda_ipc ? cuda_hooks_->importer.get() : nullptr);
    absl::StatusOr<std::unique_ptr<RegionSocket>> socket =
        RegionSocket::Start(options.region_socket, options.region_socket_mode, regions_.get());
    if (!socket.ok()) return socket.status();
    region_socket_ = *std::move(socket);
  }
  return absl::OkStatus();
}

const TensorAllocator& AttentionServer::tensor_allocator() const {
  return backend_allocator_ ? *backend_allocator_ : static_cast<const TensorAllocator&>(*allocator_);
}

std::string AttentionServer::region_socket() const { return region_socket_ ? region_socket_->path() : ""; }

void AttentionServer::RegisterGauges(size_t max_queued_calls) {
  WorkerPool* pool = pool_.get();
  AttentionService* service = service_.get();
  registry_->AddCallbackGauge("attnd_queue_depth", "Validated calls waiting for a worker.", {},
                              [pool] { return static_cast<double>(pool->queued()); });
  registry_->AddCallbackGauge("attnd_workers_busy", "Workers computing a call now.", {},
                              [pool] { return static_cast<double>(pool->busy()); });
  registry_->GetGauge("attnd_workers", "Worker threads (calls computed at once).")
      .Set(static_cast<double>(pool->threads()));
  registry_->GetGauge("attnd_queue_capacity", "Calls that may wait for a worker before new ones are refused.")
      .Set(static_cast<double>(max_queued_calls));
  registry_->AddCallbackGauge("attnd_calls_in_flight", "Calls received and not yet done (queued, computing, sending).",
                              {}, [service] { return static_cast<double>(service->calls_in_flight()); });
  // The process's memory, for leak checks and capacity planning (tests/reliability/soak): resident
  // pages, and the heap bytes malloc has handed out and not had back, which unlike the resident size
  // does not keep what the allocator caches after a peak.
  registry_->AddCallbackGauge("process_resident_memory_bytes", "Resident memory of the attnd process.", {},
                              [] { return static_cast<double>(ResidentBytes()); });
  registry_->AddCallbackGauge("attnd_heap_in_use_bytes", "Heap bytes allocated and not freed (malloc's count).", {},
                              [] {
                                const struct mallinfo2 m = mallinfo2();
                                return static_cast<double>(m.uordblks + m.hblkhd);
                              });
  const TensorAllocator* tensors = &tensor_allocator();
  HostTensorAllocator* allocator = allocator_.get();
  registry_->AddCallbackGauge("attnd_tensor_buffer_bytes", "Host tensor buffers handed out (decoded requests, outputs, "
                              "resident tensors).", {}, [tensors] { return static_cast<double>(tensors->bytes_in_use()); });
  registry_->AddCallbackGauge("attnd_tensor_buffer_cached_bytes", "Host tensor buffers kept for reuse.", {},
                              [allocator] { return static_cast<double>(allocator->bytes_cached()); });
  if (RegionRegistry* regions = regions_.get()) {
    registry_->AddCallbackGauge("attnd_region_sessions", "Open sessions on the region socket.", {},
                                [regions] { return static_cast<double>(regions->sessions()); });
    registry_->AddCallbackGauge("attnd_regions", "Shared-memory / CUDA IPC regions mapped.", {},
                                [regions] { return static_cast<double>(regions->regions()); });
    registry_->AddCallbackGauge("attnd_region_bytes", "Bytes of the regions mapped.", {},
                                [regions] { return static_cast<double>(regions->mapped_bytes()); });
  }
  if (ResidentStore* resident = resident_.get()) {
    registry_->AddCallbackGauge("attnd_resident_handles", "Resident handles held.", {},
                                [resident] { return static_cast<double>(resident->handles()); });
    registry_->AddCallbackGauge("attnd_resident_bytes", "Bytes of resident tensors held.", {},
                                [resident] { return static_cast<double>(resident->bytes()); });
  }
  registry_->GetGauge("attnd_build_info", "Always 1; the labels tell the version and the backend.",
                      {{"backend", std::string(backend_->name())}, {"version", AttndVersion()}})
      .Set(1);
}

void AttentionServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (state_ != State::kRunning) {
      // Starting (never served), or another thread is draining: wait for it to finish.
      if (state_ == State::kDraining) mu_.Await(absl::Condition(
          +[](State* s) { return *s == State::kStopped; }, &state_));
      return;
    }
    state_ = State::kDraining;
  }
  // Health checkers and watchers see NOT_SERVING; new attention calls are refused (UNAVAILABLE)
  // while those accepted (queued for a worker or running) complete, until the last is done or
  // the grace has passed. A running backend call still returns before Shutdown does; a cancelled
  // queued one is dropped by its worker.
  SetServing(false);
  service_->StartDraining();
  service_->WaitUntilIdle(absl::Now() + std::max(grace, absl::ZeroDuration()));
  for (grpc::Server* s : {server_.get(), health_server_.get()}) {
    grpc::HealthCheckServiceInterface* health = s != nullptr ? s->GetHealthCheckService() : nullptr;
    if (health != nullptr) health->Shutdown();
  }
  CloseConnectionsAndStop();
  // Probes on the health-only listener saw NOT_SERVING for the whole drain; it goes last.
  if (health_server_ != nullptr) health_server_->Shutdown(absl::ToChronoTime(absl::Now()));
  pool_->Stop();
  // Last: a scrape during the drain still answers, and sees the calls finish.
  if (metrics_http_ != nullptr) metrics_http_->Stop();
  absl::MutexLock lock(&mu_);
  state_ = State::kStopped;
}

// The end of a drain. gRPC's own Server::Shutdown() refuses, from its first instant, every call
// that has not reached a handler yet: a call a client starts on an open connection before it has
// read the server's GOAWAY, or whose request is still arriving, is dropped inside gRPC and the
// client sees CANCELLED, a status that tells it nothing it may act on. Clients keep sending to a
// draining server up to the last instant (each refusal is retried, or followed by the next call),
// so some calls always land there: tests/reliability/shutdown_under_load_test saw 5 to 122
// CANCELLED calls in each of 3 runs of 8 rounds. So Shutdown() must find no connection left:
//  1. the listening sockets stop admitting connections (clients: "connection refused");
//  2. for kFinalLinger the open connections still work: answers already sent reach their
//     clients, and calls still arriving get the handler's UNAVAILABLE ("shutting down");
//  3. every connection is closed (a call caught on the wire fails UNAVAILABLE, retriable), and
//     kCloseSettle later, when the transports have closed, gRPC's Shutdown() finds nothing to drop.
void AttentionServer::CloseConnectionsAndStop() {
  absl::StatusOr<int> stopped = StopListening(port_, unix_path_);
  if (!stopped.ok() || *stopped == 0) {
    LogLine(LogLevel::kWarning, "could not stop the listener before closing connections")
        .Kv("error", stopped.ok() ? "no listening socket found" : stopped.status().ToString());
  }
  absl::SleepFor(kFinalLinger);
  grpc_server_cancel_all_calls(server_->c_server());
  absl::SleepFor(kCloseSettle);
  server_->Shutdown(absl::ToChronoTime(absl::Now()));
}

void AttentionServer::Wait() {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kStarting) return;
  mu_.Await(absl::Condition(+[](State* s) { return *s == State::kStopped; }, &state_));
}

AttentionServer::~AttentionServer() {
  // A server that failed to start never reached kRunning; grpc::Server's destructor stops it.
  Shutdown();
}

}  // namespace attnd
