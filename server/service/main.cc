// attnd: the attention daemon.
//
//   attnd [--listen=127.0.0.1:50051] [--backend=auto|cpu|cuda] [--threads=N] [--workers=N]
//         [--max_request_bytes=N] [--max_tokens=N] [--deterministic] [--shutdown_grace=30s]
//         [--metrics_listen=HOST:PORT] [--access_log=PATH|-] [--log_level=info]
//         [--tls_cert=PEM --tls_key=PEM [--tls_client_ca=PEM]] [--auth_tokens_file=PATH] [--security_reload_interval=60s]
//         [--health_listen=HOST:PORT] [--max_concurrent_streams=N] [--max_queued_calls=N]
//
// Prints "attnd listening on HOST:PORT" on stderr once it serves (with --listen=...:0 the port is
// the one the kernel picked, so scripts parse that line). Every other line on stderr is logfmt
// (ts=... level=... msg=... key=value), see structured_log.h; docs/OPERATIONS.md lists the flags. SIGTERM or SIGINT: stop accepting calls,
// let in-flight calls finish (up to --shutdown_grace, then their connections are closed), exit 0. A second
// signal (one second or more after the first) exits at once with status 1. SIGHUP reloads
// --auth_tokens_file (a file that fails to load leaves the tokens in use unchanged); so does a change of
// that file, and changed TLS files serve new handshakes (--security_reload_interval).
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/backends/backend_factory.h"
#include "server/engine/engine_flags.h"
#include "server/engine/engine_metrics.h"
#include "server/service/attention_server.h"
#include "server/service/attention_service.h"
#include "server/service/grpc_log.h"
#include "server/service/structured_log.h"
#include "server/transport/malloc_tuning.h"

// Loopback by default: without --tls_cert and --auth_tokens_file attnd authenticates no one, so
// serving other hosts is an explicit choice (--listen=0.0.0.0:50051, as the container does).
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "host:port to serve on (port 0 picks a free port; the chosen address is logged), or unix:/path");
ABSL_FLAG(std::string, backend, "auto", "auto (cuda when a GPU is visible, else cpu), cpu or cuda");
ABSL_FLAG(int, threads, 0, "CPU backend threads; <= 0: one per hardware thread");
ABSL_FLAG(int, workers, 0, "requests computed at once; <= 0: one per hardware thread");
ABSL_FLAG(int64_t, max_request_bytes, attnd::kDefaultMaxRequestBytes,
          "largest request (sum of its tensors' bytes); responses are held to it too. At most (and by "
          "default) 2 GiB - 1 MiB");
ABSL_FLAG(int64_t, max_tokens, attnd::kDefaultMaxTokensPerRequest,
          "most tokens in q, and in k/v, of one request (batch x seqlen, or total for packed)");
ABSL_FLAG(bool, deterministic, false, "bitwise reproducible backward on every request (no float atomics)");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(30),
          "on SIGTERM/SIGINT, how long in-flight calls may run before they are cancelled");
ABSL_FLAG(std::string, metrics_listen, "",
          "host:port to serve Prometheus metrics on (GET /metrics over HTTP); empty: no exporter. Port 0 "
          "picks a free port (logged as metrics_address=)");
ABSL_FLAG(std::string, access_log, "",
          "one logfmt line per finished call (method, code, bytes, latencies): a file to append to, - for "
          "stderr, empty for none");
ABSL_FLAG(std::string, log_level, "info", "least severe log level written: debug, info, warning or error");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of this server: serve TLS (needs --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert (unencrypted)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates: mutual TLS, a client must present a certificate they signed or its handshake fails");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens, one '<name> <token>' per line (needs TLS): a call without a token gets UNAUTHENTICATED, "
          "with an unknown one PERMISSION_DENIED; grpc.health.v1 needs none. SIGHUP reloads the file");
ABSL_FLAG(absl::Duration, security_reload_interval, absl::Seconds(60),
          "how often --tls_cert, --tls_key, --tls_client_ca and --auth_tokens_file are checked for changes: new "
          "certificates serve new handshakes, a changed token file is reloaded (as on SIGHUP); whole seconds, 0: "
          "read once at start");
ABSL_FLAG(std::string, health_listen, "",
          "host:port of a second, plaintext listener serving only grpc.health.v1 (for probes that can do neither TLS "
          "nor tokens, e.g. Kubernetes' gRPC probes); empty: none");
ABSL_FLAG(int, max_concurrent_streams, attnd::kDefaultMaxConcurrentStreams,
          "calls in flight per client connection; a client queues more on its side until one finishes. 0: no limit");
ABSL_FLAG(int64_t, max_queued_calls, static_cast<int64_t>(attnd::kMaxQueuedCalls),
          "validated calls waiting for a worker; one more gets RESOURCE_EXHAUSTED (\"server busy\")");
// Transports (docs/ARCHITECTURE.md "Transports").
ABSL_FLAG(std::string, region_socket, "",
          "Unix socket path for co-located clients' shared-memory (and CUDA IPC) sessions; empty: off");
ABSL_FLAG(std::string, region_socket_mode, "0660", "permissions of the region socket file (octal): who may connect");
ABSL_FLAG(int64_t, resident_bytes, int64_t{4} << 30,
          "most bytes of resident tensors (ForwardRequest.keep_resident) held at once; 0: resident tensors off");
ABSL_FLAG(absl::Duration, resident_ttl, absl::Seconds(60), "default lifetime of a resident handle");
ABSL_FLAG(absl::Duration, resident_max_ttl, absl::Minutes(10), "longest lifetime a client may ask for");
ABSL_FLAG(int64_t, max_stream_request_bytes, 0,
          "largest request of ForwardStream / BackwardStream (tensors beyond the unary 2 GiB limit); 0: "
          "--max_request_bytes when that is set below its default, else 16 GiB");
ABSL_FLAG(int64_t, tensor_cache_bytes, int64_t{2} << 30, "host tensor buffers kept for reuse between calls");

namespace {

using attnd::LogLevel;
using attnd::LogLine;

// From the first call on, a thread reloads `server`'s bearer tokens on every SIGHUP in `signals`;
// a later call with another server (null: none, before it is destroyed) retargets it. The thread
// and its mutex live as long as the process, so a late signal never touches a destroyed server.
void ReloadTokensOnSighup(const sigset_t& signals, attnd::AttentionServer* server) {
  static absl::Mutex* const mu = new absl::Mutex;
  static attnd::AttentionServer* target ABSL_GUARDED_BY(mu) = nullptr;
  static std::once_flag started;
  {
    absl::MutexLock lock(mu);
    target = server;
  }
  std::call_once(started, [signals] {
    std::thread([signals] {
      for (;;) {
        int sig = 0;
        sigwait(&signals, &sig);
        absl::MutexLock lock(mu);
        if (target == nullptr) continue;
        (void)target->ReloadAuthTokens("SIGHUP");  // logs what happened
      }
    }).detach();
  });
}

// "0660" -> 0660. False for anything that is not 1 to 4 octal digits.
bool ParseOctal(const std::string& text, int* mode) {
  if (text.empty() || text.size() > 4 || text.find_first_not_of("01234567") != std::string::npos) return false;
  *mode = std::stoi(text, nullptr, 8);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  attnd::TuneMallocForLargeMessages();
  // Debian's Abseil is built without NDEBUG, so every absl::Mutex lock also updated a deadlock
  // graph under one process-wide lock: 12% of the instructions of a small call (bench/results/
  // 2026-11-23_devbox_transport2.md). A debugging aid; the tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::FlagsUsageConfig usage;
  // --help lists this file's flags (absl's default looks for a file named after the program).
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/service/main.cc") || absl::StrContains(file, "server/engine/");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return absl::StrCat("attnd ", attnd::AttndVersion(), "\n"); };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage("attention over gRPC (attnd.v1.Attention, grpc.health.v1, reflection)");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    LogLine(LogLevel::kError, absl::StrCat("unexpected argument '", rest[1], "' (see --help)"));
    return 2;
  }
  absl::StatusOr<LogLevel> level = attnd::ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  if (!level.ok()) {
    LogLine(LogLevel::kError, "bad flag").Kv("error", level.status().message());
    return 2;
  }
  attnd::SetLogLevel(*level);
  attnd::RouteGrpcLogsToLogfmt();

  // Signals are taken by a dedicated sigwait thread, never in a handler. Block them before any
  // other thread exists (backend pools, gRPC) so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigset_t reload_signals;
  sigemptyset(&reload_signals);
  sigaddset(&reload_signals, SIGHUP);
  sigset_t blocked = signals;
  sigaddset(&blocked, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &blocked, nullptr);

  attnd::BackendOptions backend_options;
  backend_options.cpu_threads = absl::GetFlag(FLAGS_threads);
  backend_options.deterministic = absl::GetFlag(FLAGS_deterministic);
  // The engine: one backend per device (--devices), each behind its dynamic batcher (compatible
  // calls that queue together become one packed-varlen launch: --batching, --max_queue_delay_us,
  // ...), routed to the least loaded device, timed per stage (server/engine/engine_flags.h).
  absl::StatusOr<std::unique_ptr<attnd::Backend>> backend =
      attnd::CreateEngineFromFlags(absl::GetFlag(FLAGS_backend), backend_options);
  if (!backend.ok()) {
    LogLine(LogLevel::kError, "cannot create the backend")
        .Kv("flag", absl::StrCat("--backend=", absl::GetFlag(FLAGS_backend)))
        .Kv("error", backend.status().ToString());
    return 1;
  }
  const std::string backend_name((*backend)->name());
  const attnd::Backend* engine = backend->get();  // owned by the server from here on

  attnd::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  options.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens);
  options.worker_threads = absl::GetFlag(FLAGS_workers);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.access_log = absl::GetFlag(FLAGS_access_log);
  options.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.security.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.security.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.security.reload_interval = absl::GetFlag(FLAGS_security_reload_interval);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  options.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  if (absl::GetFlag(FLAGS_max_queued_calls) < 0) {
    LogLine(LogLevel::kError, "bad flag").Kv("error", "--max_queued_calls must be >= 0");
    return 2;
  }
  options.max_queued_calls = static_cast<size_t>(absl::GetFlag(FLAGS_max_queued_calls));
  options.region_socket = absl::GetFlag(FLAGS_region_socket);
  if (!ParseOctal(absl::GetFlag(FLAGS_region_socket_mode), &options.region_socket_mode)) {
    LogLine(LogLevel::kError, "bad flag").Kv("flag", "--region_socket_mode").Kv("error", "not an octal mode like 0660");
    return 2;
  }
  // With the CUDA backend: shared memory pinned for DMA, CUDA IPC regions run in place
  // (TensorPlacement), received tensors decoded into the backend's pinned buffers.
  options.pin_shared_memory = backend_name == "cuda";
  options.cuda_ipc = backend_name == "cuda";
  options.backend_host_buffers = backend_name == "cuda";
  options.resident_bytes = absl::GetFlag(FLAGS_resident_bytes);
  options.resident_ttl = absl::GetFlag(FLAGS_resident_ttl);
  options.resident_max_ttl = absl::GetFlag(FLAGS_resident_max_ttl);
  options.max_stream_request_bytes = absl::GetFlag(FLAGS_max_stream_request_bytes);
  options.tensor_cache_bytes = absl::GetFlag(FLAGS_tensor_cache_bytes);
  absl::StatusOr<std::unique_ptr<attnd::AttentionServer>> server =
      attnd::AttentionServer::Start(options, *std::move(backend));
  if (!server.ok()) {
    LogLine(LogLevel::kError, "cannot start").Kv("error", server.status().ToString());
    return 1;
  }
  attnd::RegisterEngineMetrics((*server)->metrics(), engine);  // batch sizes, GPU pools, streams
  LogLine(LogLevel::kInfo, "attnd serving")
      .Kv("version", attnd::AttndVersion())
      .Kv("address", (*server)->address())
      .Kv("backend", backend_name)
      .Kv("workers", options.worker_threads > 0
                         ? options.worker_threads
                         : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())))
      .Kv("max_request_bytes", options.max_request_bytes)
      .Kv("max_tokens", options.max_tokens_per_request)
      .Kv("max_concurrent_streams", options.max_concurrent_streams)
      .Kv("max_queued_calls", static_cast<int64_t>(options.max_queued_calls))
      .Kv("shutdown_grace", absl::FormatDuration(absl::GetFlag(FLAGS_shutdown_grace)))
      .Kv("access_log", options.access_log.empty() ? "off" : options.access_log)
      .Kv("region_socket", options.region_socket.empty() ? "off" : options.region_socket)
      .Kv("resident_bytes", options.resident_bytes);

  const absl::Duration grace = absl::GetFlag(FLAGS_shutdown_grace);
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    LogLine(LogLevel::kInfo, "draining in-flight calls")
        .Kv("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT")
        .Kv("grace", absl::FormatDuration(grace));
    // A second signal forces the exit. Ignore copies that arrive together with the first (tools
    // like timeout(1) signal both the process and its group).
    const absl::Time first = absl::Now();
    std::thread([signals, first] {
      for (;;) {
        int again = 0;
        sigwait(&signals, &again);
        if (absl::Now() - first < absl::Seconds(1)) continue;
        LogLine(LogLevel::kWarning, "second signal while draining, exiting now");
        std::_Exit(1);
      }
    }).detach();
    (*server)->Shutdown(grace);
  });
  ReloadTokensOnSighup(reload_signals, server->get());
  (*server)->Wait();
  signal_thread.join();
  ReloadTokensOnSighup(reload_signals, nullptr);
  server->reset();
  LogLine(LogLevel::kInfo, "attnd: stopped");
  return 0;
}
