// attnd: the attention daemon.
//
//   attnd [--listen=127.0.0.1:50051] [--backend=auto|cpu|cuda] [--threads=N] [--workers=N]
//         [--max_request_bytes=N] [--max_tokens=N] [--deterministic] [--shutdown_grace=30s]
//         [--metrics_listen=HOST:PORT] [--access_log=PATH|-] [--log_level=info]
//
// Prints "attnd listening on HOST:PORT" on stderr once it serves (with --listen=...:0 the port is
// the one the kernel picked, so scripts parse that line). Every other line on stderr is logfmt
// (ts=... level=... msg=... key=value), see structured_log.h; docs/OPERATIONS.md lists the flags. SIGTERM or SIGINT: stop accepting calls,
// let in-flight calls finish (up to --shutdown_grace, then they are cancelled), exit 0. A second
// signal (one second or more after the first) exits at once with status 1.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/backends/backend_factory.h"
#include "server/engine/engine_flags.h"
#include "server/engine/engine_metrics.h"
#include "server/service/attention_server.h"
#include "server/service/attention_service.h"
#include "server/service/structured_log.h"
#include "server/transport/malloc_tuning.h"

// Loopback by default: attnd has no authentication, so serving other hosts is an explicit choice
// (--listen=0.0.0.0:50051, as the container does).
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
// Transports (docs/ARCHITECTURE.md "Transports").
ABSL_FLAG(std::string, region_socket, "",
          "Unix socket path for co-located clients' shared-memory (and CUDA IPC) sessions; empty: off");
ABSL_FLAG(std::string, region_socket_mode, "0660", "permissions of the region socket file (octal): who may connect");
ABSL_FLAG(int64_t, resident_bytes, int64_t{4} << 30,
          "most bytes of resident tensors (ForwardRequest.keep_resident) held at once; 0: resident tensors off");
ABSL_FLAG(absl::Duration, resident_ttl, absl::Seconds(60), "default lifetime of a resident handle");
ABSL_FLAG(absl::Duration, resident_max_ttl, absl::Minutes(10), "longest lifetime a client may ask for");
ABSL_FLAG(int64_t, max_stream_request_bytes, int64_t{16} << 30,
          "largest request of ForwardStream / BackwardStream (tensors beyond the unary 2 GiB limit)");
ABSL_FLAG(int64_t, tensor_cache_bytes, int64_t{2} << 30, "host tensor buffers kept for reuse between calls");

namespace {

using attnd::LogLevel;
using attnd::LogLine;

// "0660" -> 0660. False for anything that is not 1 to 4 octal digits.
bool ParseOctal(const std::string& text, int* mode) {
  if (text.empty() || text.size() > 4 || text.find_first_not_of("01234567") != std::string::npos) return false;
  *mode = std::stoi(text, nullptr, 8);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  attnd::TuneMallocForLargeMessages();
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

  // Signals are taken by a dedicated sigwait thread, never in a handler. Block them before any
  // other thread exists (backend pools, gRPC) so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

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
  (*server)->Wait();
  signal_thread.join();
  server->reset();
  LogLine(LogLevel::kInfo, "attnd: stopped");
  return 0;
}
