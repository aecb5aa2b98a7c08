// attnd_soak: soak and fault test of a real attnd process on loopback, bounded and self-stopping.
//
//   attnd_soak --attnd=build/bin/attnd [--duration=60s] [--concurrency=64] [--backend=cpu]
//              [--transport=grpc] [--sigterm_rounds=3] [--json=soak.json] [--daemon_flags="..."]
//
// 1. Soak: `concurrency` callers send a mix of good calls (answers checked against the float64
//    oracle), malformed ones (status and field checked), calls cancelled mid-flight and calls with
//    0.5-5 ms deadlines, for `duration` after a warm-up. The daemon must not crash, every outcome
//    must be one its kind may have, and once idle again its heap in use (malloc's count: the leak
//    check), its resident memory (looser: the allocator keeps pages) and the --flat_series (calls
//    in flight, queue depth, device pool bytes in use when the backend has a pool) must be back
//    where they were before the soak.
// 2. SIGTERM under load, `sigterm_rounds` times (the first on the soaked daemon, then on fresh
//    ones): every call ends with a checked answer or UNAVAILABLE (or its kind's own CANCELLED /
//    DEADLINE_EXCEEDED), none without an answer, and the daemon exits 0.
// Prints a table, writes --json, exits 1 if any promise was broken.
//
// --backend and --transport select what is soaked. Today --transport=grpc (protobuf bytes) is the
// only transport; the shared-memory and CUDA IPC paths of the transport issue add their values
// here, and --backend=cuda with a --daemon_flags="--gpu_memory_bytes=..." cap soaks the device pool.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/reliability/soak/daemon_process.h"
#include "tests/reliability/soak/soak_load.h"
#include "tests/reliability/soak/soak_report.h"

ABSL_FLAG(std::string, attnd, "", "the attnd binary to soak (required)");
ABSL_FLAG(std::string, backend, "cpu", "attnd --backend");
ABSL_FLAG(std::string, transport, "grpc", "how tensors travel: grpc (protobuf bytes; the only one today)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(60), "length of the soak, after the warm-up");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(5), "load before the memory baseline is taken");
ABSL_FLAG(int, concurrency, 64, "callers sending at once");
ABSL_FLAG(std::string, weights, "70,10,10,10", "relative weights of good, malformed, cancelled, short-deadline calls");
ABSL_FLAG(int, sigterm_rounds, 3, "SIGTERM-under-load rounds after the soak (0: none)");
ABSL_FLAG(absl::Duration, sigterm_after, absl::Seconds(2), "load before each SIGTERM");
ABSL_FLAG(std::string, daemon_flags, "", "more attnd flags, space separated");
ABSL_FLAG(int64_t, max_tokens, 4096, "attnd --max_tokens (one malformed request exceeds it)");
ABSL_FLAG(std::string, flat_series, "attnd_calls_in_flight;attnd_queue_depth;attnd_gpu_memory_bytes{device=\"0\",state=\"in_use\"}",
          "Prometheus series (';'-separated) that must be back to their pre-soak value once idle; absent ones are "
          "reported, not failed");
ABSL_FLAG(int64_t, heap_growth_limit, int64_t{8} << 20,
          "most the daemon's heap in use (attnd_heap_in_use_bytes, malloc's count) may grow over the soak, idle "
          "before vs idle after (bytes): the leak check. Under load it moves by a few MiB (calls in flight, gRPC's "
          "buffers); 8 MiB over a 60 s soak of ~250k calls flags leaks of ~32 bytes per call and more");
ABSL_FLAG(int64_t, rss_growth_limit, int64_t{32} << 20,
          "most the daemon's resident memory may grow over the soak, idle before vs idle after (bytes); looser than "
          "the heap, since the allocator keeps freed pages after a peak");
ABSL_FLAG(std::string, log, "attnd_soak_daemon.log", "where the daemons' stderr goes");
ABSL_FLAG(std::string, json, "", "write the report here too");
ABSL_FLAG(uint64_t, seed, 1, "random seed of the workload and the callers");

namespace attnd::soak {
namespace {

std::vector<std::string> DaemonArgs() {
  std::vector<std::string> args = {absl::StrCat("--backend=", absl::GetFlag(FLAGS_backend)),
                                   absl::StrCat("--max_tokens=", absl::GetFlag(FLAGS_max_tokens))};
  for (absl::string_view f : absl::StrSplit(absl::GetFlag(FLAGS_daemon_flags), ' ', absl::SkipEmpty())) {
    args.emplace_back(f);
  }
  return args;
}

absl::StatusOr<std::unique_ptr<Client>> ConnectTo(const DaemonProcess& daemon) {
  ClientOptions options;
  options.target = daemon.address();
  options.retry_unavailable = false;  // the statuses the daemon sends, unretried
  options.retry_cancelled_by_server = false;
  options.dedicated_connection = true;
  return Client::Connect(options);
}

LoadOptions MakeLoadOptions(bool draining) {
  LoadOptions o;
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.draining_allowed = draining;
  o.seed = absl::GetFlag(FLAGS_seed);
  std::vector<std::string> w = absl::StrSplit(absl::GetFlag(FLAGS_weights), ',');
  for (size_t i = 0; i < 4 && i < w.size(); ++i) (void)absl::SimpleAtoi(w[i], &o.weights[i]);
  return o;
}

// Idle values of the flat series; NaN for a series this daemon does not export.
std::map<std::string, double> FlatSeries(const DaemonProcess& daemon) {
  std::map<std::string, double> values;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_flat_series), ';', absl::SkipEmpty())) {
    absl::StatusOr<double> v = ScrapeSeries(daemon.metrics_address(), std::string(s));
    values[std::string(s)] = v.ok() ? *v : std::numeric_limits<double>::quiet_NaN();
  }
  return values;
}

// Waits until the daemon reports no call in flight (the callers have stopped; answers drain).
void WaitIdle(const DaemonProcess& daemon) {
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::Now() < give_up) {
    absl::StatusOr<double> in_flight = ScrapeSeries(daemon.metrics_address(), "attnd_calls_in_flight");
    if (in_flight.ok() && *in_flight == 0) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::SleepFor(absl::Milliseconds(500));  // let freed memory settle
}

void Soak(const Workload& workload, DaemonProcess& daemon, Client& client, SoakReport& report) {
  {
    SoakLoad warmup(&client, &workload, MakeLoadOptions(false));
    warmup.Start();
    absl::SleepFor(absl::GetFlag(FLAGS_warmup));
    report.stuck_calls += warmup.Stop();
    report.AddLoad(warmup.Result());
  }
  WaitIdle(daemon);
  report.rss_before = daemon.ResidentBytes();
  report.heap_before = ScrapeSeries(daemon.metrics_address(), "attnd_heap_in_use_bytes").value_or(-1);
  report.series_before = FlatSeries(daemon);

  SoakLoad load(&client, &workload, MakeLoadOptions(false));
  const absl::Time start = absl::Now();
  load.Start();
  while (absl::Now() - start < absl::GetFlag(FLAGS_duration) && daemon.running()) {
    absl::SleepFor(absl::Seconds(1));
    report.rss_samples.push_back(daemon.ResidentBytes());
    report.heap_samples.push_back(ScrapeSeries(daemon.metrics_address(), "attnd_heap_in_use_bytes").value_or(-1));
    std::fprintf(stderr, "soak: %4.0f s, %lld calls, daemon rss %.1f MiB, heap in use %.2f MiB\n",
                 absl::ToDoubleSeconds(absl::Now() - start), static_cast<long long>(load.calls()),
                 report.rss_samples.back() / 1048576.0, report.heap_samples.back() / 1048576.0);
  }
  report.soak_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  report.stuck_calls += load.Stop();
  const LoadResult result = load.Result();
  report.soak_calls = result.calls;
  report.AddLoad(result);
  report.daemon_alive_after_soak = daemon.Wait(absl::ZeroDuration()).status().code() == absl::StatusCode::kDeadlineExceeded;
  if (!report.daemon_alive_after_soak) return;
  WaitIdle(daemon);
  report.rss_after = daemon.ResidentBytes();
  report.heap_after = ScrapeSeries(daemon.metrics_address(), "attnd_heap_in_use_bytes").value_or(-1);
  report.series_after = FlatSeries(daemon);
}

// One SIGTERM-under-load round on `daemon` (consumed).
void SigtermRound(const Workload& workload, std::unique_ptr<DaemonProcess> daemon, Client& client,
                  SoakReport& report) {
  SoakLoad load(&client, &workload, MakeLoadOptions(/*draining=*/true));
  load.Start();
  absl::SleepFor(absl::GetFlag(FLAGS_sigterm_after));
  daemon->Signal(SIGTERM);
  absl::StatusOr<int> exit = daemon->Wait(absl::Seconds(60));
  SigtermOutcome round;
  round.exit_code = exit.ok() ? *exit : -1;
  round.stuck_calls = load.Stop();
  round.load = load.Result();
  report.AddSigterm(std::move(round));
}

int Main() {
  const std::string binary = absl::GetFlag(FLAGS_attnd);
  if (binary.empty()) {
    std::fprintf(stderr, "attnd_soak: --attnd is required\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_transport) != "grpc") {
    std::fprintf(stderr, "attnd_soak: --transport=%s is not available yet (grpc is)\n",
                 absl::GetFlag(FLAGS_transport).c_str());
    return 2;
  }
  const Workload workload = MakeWorkload(absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_max_tokens));
  SoakReport report;
  report.backend = absl::GetFlag(FLAGS_backend);
  report.transport = absl::GetFlag(FLAGS_transport);
  report.concurrency = absl::GetFlag(FLAGS_concurrency);
  report.rss_growth_limit = absl::GetFlag(FLAGS_rss_growth_limit);
  report.heap_growth_limit = absl::GetFlag(FLAGS_heap_growth_limit);

  // The soak, then SIGTERM under load on the soaked daemon (round 1) and on fresh ones.
  const int rounds = absl::GetFlag(FLAGS_sigterm_rounds);
  for (int round = 0; round < std::max(rounds, 1); ++round) {
    absl::StatusOr<std::unique_ptr<DaemonProcess>> daemon =
        DaemonProcess::Start(binary, DaemonArgs(), absl::GetFlag(FLAGS_log));
    if (!daemon.ok()) {
      std::fprintf(stderr, "attnd_soak: %s\n", daemon.status().ToString().c_str());
      return 1;
    }
    absl::StatusOr<std::unique_ptr<Client>> client = ConnectTo(**daemon);
    if (!client.ok()) {
      std::fprintf(stderr, "attnd_soak: %s\n", client.status().ToString().c_str());
      return 1;
    }
    if (round == 0) {
      Soak(workload, **daemon, **client, report);
      if (!report.daemon_alive_after_soak) break;
    }
    if (rounds > 0) {
      SigtermRound(workload, *std::move(daemon), **client, report);
    } else {
      (*daemon)->Signal(SIGTERM);
      absl::StatusOr<int> exit = (*daemon)->Wait(absl::Seconds(60));
      report.AddSigterm(SigtermOutcome{.exit_code = exit.ok() ? *exit : -1});
    }
  }
  std::printf("%s", report.Table().c_str());
  if (!absl::GetFlag(FLAGS_json).empty()) std::ofstream(absl::GetFlag(FLAGS_json)) << report.Json();
  return report.Passed() ? 0 : 1;
}

}  // namespace
}  // namespace attnd::soak

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return attnd::soak::Main();
}
