// attn_loadgen: load against an attnd daemon, closed loop (a concurrency sweep) or open loop (a
// request-rate sweep, Poisson or constant arrivals), one step after another.
//
//   attn_loadgen --target=127.0.0.1:7100 --concurrency=1,2,4,8 --window=1 --duration=20 --dtype=bf16
//                --batch=1 --seqlen_q=1024 --heads_q=16 --head_dim=128 --check --csv=sweep.csv
//   attn_loadgen --target=127.0.0.1:7100 --rate=50,100,200 --arrival=poisson --window=2 --json
//
// Output: a text summary (one step) or a table (a sweep); --json: one JSON object (one step) or
// {"steps":[...]}; --csv=FILE: one row per step. A progress line per window goes to stderr.
//
// Exit status: 0 on success; 1 when a checked response mismatched, no call succeeded, or (with
// --check) any call failed; 2 on bad flags or when the daemon cannot be reached.
#include <cstdio>
#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/attnd/client.h"
#include "client/attnd/tensors.h"
#include "client/loadgen/load_runner.h"
#include "client/loadgen/payloads.h"
#include "client/loadgen/report.h"
#include "client/loadgen/server_breakdown.h"
#include "client/loadgen/workload_file.h"
#include "server/backend.h"
#include "server/transport/malloc_tuning.h"

ABSL_FLAG(std::string, target, "127.0.0.1:7100", "attnd address (host:port or any gRPC target)");
ABSL_FLAG(std::string, concurrency, "1", "closed-loop clients, each keeping one call in flight; a list "
          "(1,2,4,8) sweeps them, one step each");
ABSL_FLAG(std::string, rate, "", "open loop: calls per second offered (a list sweeps them); latency counts from "
          "each call's scheduled send time");
ABSL_FLAG(std::string, arrival, "poisson", "open loop: poisson or constant gaps between sends");
ABSL_FLAG(int, max_in_flight, 4096, "open loop: most calls open at once (later sends wait, their latency counting)");
ABSL_FLAG(double, window, 0, "seconds per measurement window; > 0: a step ends when --stable_windows windows in a "
          "row agree within --stability in requests/s and p99, or after --duration (the step's cap)");
ABSL_FLAG(int, stable_windows, 3, "windows that must agree");
ABSL_FLAG(double, stability, 0.10, "relative spread allowed between the agreeing windows");
ABSL_FLAG(double, max_time, 0, "cap in seconds on the whole run (all steps, warm-ups included); 0: none");
ABSL_FLAG(std::string, csv, "", "also write one CSV row per step to this file");
ABSL_FLAG(bool, progress, true, "a progress line per window/step on stderr");
ABSL_FLAG(int, connections, 0, "gRPC connections the clients share; 0: one per client");
ABSL_FLAG(double, duration, 10, "seconds to send calls for per step (after --warmup); with --window the step's "
          "cap; ignored with --requests");
ABSL_FLAG(int64_t, requests, 0, "total measured calls to send; overrides --duration when > 0");
ABSL_FLAG(double, warmup, 0, "seconds of unmeasured calls before measuring");
ABSL_FLAG(double, timeout, 60, "per-call deadline in seconds");
ABSL_FLAG(double, connect_timeout, 10, "seconds to wait for the daemon to accept connections");
ABSL_FLAG(int, batch, 1, "sequences per request");
ABSL_FLAG(int, seqlen_q, 1024, "query length (with --varlen: the longest)");
ABSL_FLAG(int, seqlen_k, 0, "key length (with --varlen: the longest); 0: --seqlen_q");
ABSL_FLAG(int, heads_q, 16, "query heads");
ABSL_FLAG(int, heads_kv, 0, "key/value heads (GQA when fewer than --heads_q); 0: --heads_q");
ABSL_FLAG(int, head_dim, 128, "head dimension");
ABSL_FLAG(std::string, dtype, "bf16", "bf16, fp16 or fp32");
ABSL_FLAG(bool, causal, false, "causal mask (bottom-right aligned)");
ABSL_FLAG(bool, varlen, false, "packed variable-length layout with random sequence lengths");
ABSL_FLAG(std::string, direction, "forward", "forward, backward, or train (a forward then its backward per call)");
ABSL_FLAG(std::string, transport, "proto", "how tensors reach the daemon: proto (in the messages), shm (a shared-memory "
          "region per client thread; daemon with --region_socket), cuda_ipc (GPU memory shared by CUDA IPC)");
ABSL_FLAG(bool, resident, false, "with --direction=train: the forward keeps its tensors in the daemon and the backward "
          "sends grad_out alone (a resident handle)");
ABSL_FLAG(std::string, workload_file, "", "mixed workloads: one per line, key=value (shape, dtype, causal, direction, "
          "transport, resident, weight; see client/loadgen/workload_file.h)");
ABSL_FLAG(int, cuda_device, 0, "GPU of the --transport=cuda_ipc regions");
ABSL_FLAG(double, stream_above_mib, 8, "--transport=proto: requests carrying more MiB of tensors go over ForwardStream / "
          "BackwardStream (the daemon copies chunks while the rest arrives); 0: one unary message always");
ABSL_FLAG(int, payloads, 4, "distinct random requests to rotate through");
ABSL_FLAG(uint64_t, seed, 1, "random seed of the payloads");
ABSL_FLAG(bool, check, false, "verify sampled responses against the local CPU backend");
ABSL_FLAG(int, check_every, 1, "with --check: verify every Nth call");
ABSL_FLAG(double, check_tolerance, 0, "relative L2 bound; 0: bf16 2e-2, fp16 5e-3, fp32 1e-3");
ABSL_FLAG(int, check_threads, 0, "threads of the local CPU backend; 0: all");
ABSL_FLAG(bool, json, false, "print one JSON object instead of the text summary");
ABSL_FLAG(bool, server_stats, true, "read the daemon's GetStats before and after each step and report its "
          "breakdown (queue, H2D, kernel, D2H, requests per launch)");

namespace attnd::loadgen {
namespace {

absl::Status Positive(const char* flag, int64_t value) {
  if (value < 1) return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be at least 1, got ", value));
  return absl::OkStatus();
}

absl::StatusOr<LoadSpec> SpecFromFlags() {
  LoadSpec s;
  s.target = absl::GetFlag(FLAGS_target);
  s.connections = absl::GetFlag(FLAGS_connections);
  s.duration_s = absl::GetFlag(FLAGS_duration);
  s.requests = absl::GetFlag(FLAGS_requests);
  s.warmup_s = absl::GetFlag(FLAGS_warmup);
  s.timeout_s = absl::GetFlag(FLAGS_timeout);
  s.connect_timeout_s = absl::GetFlag(FLAGS_connect_timeout);
  s.batch = absl::GetFlag(FLAGS_batch);
  s.seqlen_q = absl::GetFlag(FLAGS_seqlen_q);
  s.seqlen_k = absl::GetFlag(FLAGS_seqlen_k);
  s.heads_q = absl::GetFlag(FLAGS_heads_q);
  s.heads_kv = absl::GetFlag(FLAGS_heads_kv);
  s.head_dim = absl::GetFlag(FLAGS_head_dim);
  s.causal = absl::GetFlag(FLAGS_causal);
  s.varlen = absl::GetFlag(FLAGS_varlen);
  s.payloads = absl::GetFlag(FLAGS_payloads);
  s.seed = absl::GetFlag(FLAGS_seed);
  s.check = absl::GetFlag(FLAGS_check);
  s.check_every = absl::GetFlag(FLAGS_check_every);
  s.check_tolerance = absl::GetFlag(FLAGS_check_tolerance);
  s.check_threads = absl::GetFlag(FLAGS_check_threads);
  s.window_s = absl::GetFlag(FLAGS_window);
  s.stable_windows = absl::GetFlag(FLAGS_stable_windows);
  s.stability = absl::GetFlag(FLAGS_stability);
  s.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  const std::string arrival = absl::GetFlag(FLAGS_arrival);
  if (arrival == "poisson") {
    s.arrival = Arrival::kPoisson;
  } else if (arrival == "constant") {
    s.arrival = Arrival::kConstant;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--arrival must be poisson or constant, got '", arrival, "'"));
  }
  if (!(s.window_s >= 0) || !(s.stability >= 0) || s.stable_windows < 1 || s.max_in_flight < 1) {
    return absl::InvalidArgumentError("--window and --stability must be >= 0, --stable_windows and --max_in_flight >= 1");
  }
  if (s.window_s > 0 && s.requests > 0) return absl::InvalidArgumentError("--window and --requests exclude each other");

  absl::StatusOr<DType> dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message()));
  s.dtype = *dtype;
  absl::StatusOr<Direction> direction = ParseDirection(absl::GetFlag(FLAGS_direction));
  if (!direction.ok()) return absl::InvalidArgumentError(absl::StrCat("--direction: ", direction.status().message()));
  s.direction = *direction;
  absl::StatusOr<Transport> transport = ParseTransport(absl::GetFlag(FLAGS_transport));
  if (!transport.ok()) return absl::InvalidArgumentError(absl::StrCat("--transport: ", transport.status().message()));
  s.transport = *transport;
  s.resident = absl::GetFlag(FLAGS_resident);
  s.cuda_device = absl::GetFlag(FLAGS_cuda_device);
  s.stream_above_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_stream_above_mib) * 1048576);
  if (s.resident && s.direction != Direction::kTrain) {
    return absl::InvalidArgumentError("--resident needs --direction=train (a forward and the backward of it)");
  }

  for (auto [flag, value] : {std::pair<const char*, int64_t>{"batch", s.batch},
                             {"seqlen_q", s.seqlen_q}, {"heads_q", s.heads_q}, {"head_dim", s.head_dim},
                             {"payloads", s.payloads}, {"check_every", s.check_every}}) {
    if (absl::Status st = Positive(flag, value); !st.ok()) return st;
  }
  if (s.seqlen_k < 0 || s.heads_kv < 0 || s.connections < 0 || s.requests < 0 || s.check_threads < 0) {
    return absl::InvalidArgumentError("--seqlen_k, --heads_kv, --connections, --requests, --check_threads must be >= 0");
  }
  if (s.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("--head_dim must be at most ", kMaxHeadDim));
  }
  if (s.heads_q % s.resolved_heads_kv() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--heads_q (", s.heads_q, ") must be a multiple of --heads_kv (",
                                                   s.resolved_heads_kv(), ")"));
  }
  if (!(s.duration_s > 0) && s.requests == 0) return absl::InvalidArgumentError("--duration must be > 0");
  if (!(s.warmup_s >= 0) || !(s.timeout_s > 0) || !(s.connect_timeout_s > 0) || !(s.check_tolerance >= 0)) {
    return absl::InvalidArgumentError("--warmup and --check_tolerance must be >= 0, --timeout and --connect_timeout > 0");
  }
  return s;
}

// "1,2,4" -> {1, 2, 4}; every entry must parse and be > 0.
template <typename T>
absl::StatusOr<std::vector<T>> ParseList(const char* flag, const std::string& text) {
  std::vector<T> values;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    T value{};
    const absl::string_view text_value = absl::StripAsciiWhitespace(part);
    bool parsed;
    if constexpr (std::is_floating_point_v<T>) {
      parsed = absl::SimpleAtod(text_value, &value);
    } else {
      parsed = absl::SimpleAtoi(text_value, &value);
    }
    if (!parsed || !(value > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", part, "' is not a positive number"));
    }
    values.push_back(value);
  }
  return values;
}

// The steps: one per --rate (open loop) or else one per --concurrency (closed loop).
absl::StatusOr<std::vector<LoadSpec>> Steps(const LoadSpec& base) {
  absl::StatusOr<std::vector<double>> rates = ParseList<double>("rate", absl::GetFlag(FLAGS_rate));
  if (!rates.ok()) return rates.status();
  absl::StatusOr<std::vector<int>> concurrency = ParseList<int>("concurrency", absl::GetFlag(FLAGS_concurrency));
  if (!concurrency.ok()) return concurrency.status();
  if (rates->empty() && concurrency->empty()) return absl::InvalidArgumentError("--concurrency must name a step");
  std::vector<LoadSpec> steps;
  if (!rates->empty()) {
    for (double rate : *rates) {
      steps.push_back(base);
      steps.back().rate = rate;
    }
  } else {
    for (int c : *concurrency) {
      steps.push_back(base);
      steps.back().concurrency = c;
    }
  }
  return steps;
}

// The daemon's cumulative statistics, or an error (--noserver_stats, an old daemon without GetStats,
// a daemon that does not answer): the step is then reported without the server's breakdown.
absl::StatusOr<v1::ServerStats> FetchServerStats(const LoadSpec& spec) {
  if (!absl::GetFlag(FLAGS_server_stats)) return absl::UnavailableError("--noserver_stats");
  static absl::StatusOr<std::unique_ptr<Client>> client = [&] {
    ClientOptions options;
    options.target = spec.target;
    options.connect_timeout = absl::Seconds(spec.connect_timeout_s);
    return Client::Connect(options);
  }();
  if (!client.ok()) return client.status();
  CallOptions call;
  call.timeout = absl::Seconds(10);
  return (*client)->GetStats(call);
}

// The payloads of every workload (--workload_file), or of the command line's one.
absl::StatusOr<std::vector<Payload>> BuildAllPayloads(LoadSpec* spec) {
  const std::string file = absl::GetFlag(FLAGS_workload_file);
  if (file.empty()) return BuildPayloads(*spec);
  absl::StatusOr<std::vector<Workload>> workloads = ReadWorkloadFile(file, *spec);
  if (!workloads.ok()) return workloads.status();
  std::vector<Payload> all;
  for (size_t i = 0; i < workloads->size(); ++i) {
    const Workload& w = (*workloads)[i];
    absl::StatusOr<std::vector<Payload>> payloads = BuildPayloads(w.spec);
    if (!payloads.ok()) {
      return absl::Status(payloads.status().code(), absl::StrCat("workload ", w.name, ": ", payloads.status().message()));
    }
    for (Payload& p : *payloads) {
      p.workload = static_cast<int>(i);
      all.push_back(std::move(p));
    }
    spec->workload_names.push_back(w.name);
    spec->workload_weights.push_back(w.weight);
  }
  return all;
}

std::string StepName(const LoadSpec& s) {
  return s.rate > 0 ? absl::StrCat("rate ", s.rate, "/s") : absl::StrCat("concurrency ", s.concurrency);
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Load generator for attnd (closed/open loop sweeps). See client/loadgen/main.cc.");
  // --help lists this file's flags (by default Abseil looks for a file named after the program).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return absl::StrContains(file, "client/loadgen/"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<LoadSpec> spec = SpecFromFlags();
  if (!spec.ok()) {
    std::fprintf(stderr, "attn_loadgen: %s\n", std::string(spec.status().message()).c_str());
    return 2;
  }
  absl::StatusOr<std::vector<Payload>> payloads = BuildAllPayloads(&*spec);
  if (!payloads.ok()) {
    std::fprintf(stderr, "attn_loadgen: building payloads: %s\n", payloads.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<std::vector<LoadSpec>> steps = Steps(*spec);
  if (!steps.ok()) {
    std::fprintf(stderr, "attn_loadgen: %s\n", std::string(steps.status().message()).c_str());
    return 2;
  }
  const bool progress = absl::GetFlag(FLAGS_progress);
  const double max_time = absl::GetFlag(FLAGS_max_time);
  const absl::Time run_start = absl::Now();
  std::vector<StepResult> results;
  for (size_t i = 0; i < steps->size(); ++i) {
    LoadSpec step = (*steps)[i];
    if (max_time > 0) {  // the cap: shorten this step, skip the rest
      const double left = max_time - absl::ToDoubleSeconds(absl::Now() - run_start) - step.warmup_s;
      if (left <= 0 || (step.window_s > 0 && left < step.window_s)) {
        std::fprintf(stderr, "attn_loadgen: --max_time=%g spent; %zu step(s) not run\n", max_time, steps->size() - i);
        break;
      }
      step.duration_s = std::min(step.duration_s, left);
    }
    const std::string name = absl::StrCat("step ", i + 1, "/", steps->size(), " ", StepName(step));
    WindowProgress on_window = nullptr;
    if (progress) {
      on_window = [&name](int window, const LoadReport& w) {
        std::fprintf(stderr, "%s: window %d: %.1f req/s, p99 %.3f ms, %lld errors\n", name.c_str(), window,
                     w.requests_per_s(), w.latency.p99_ms, static_cast<long long>(w.errors));
      };
    }
    absl::StatusOr<v1::ServerStats> before = FetchServerStats(step);
    absl::StatusOr<LoadReport> report = RunLoad(step, *payloads, on_window);
    if (!report.ok()) {
      std::fprintf(stderr, "attn_loadgen: %s\n", report.status().ToString().c_str());
      return 2;
    }
    if (progress) {
      std::fprintf(stderr, "%s: %.1f req/s, p50 %.3f ms, p99 %.3f ms, %lld ok, %lld errors%s\n", name.c_str(),
                   report->requests_per_s(), report->latency.p50_ms, report->latency.p99_ms,
                   static_cast<long long>(report->ok), static_cast<long long>(report->errors),
                   report->windows_run == 0 ? "" : report->stable ? " (stable)" : " (not stable)");
    }
    if (absl::StatusOr<v1::ServerStats> after = FetchServerStats(step); before.ok() && after.ok()) {
      report->server = SubtractStats(*before, *after);
    }
    results.push_back({step, *std::move(report)});
  }
  if (results.empty()) return 2;
  std::string text;
  if (absl::GetFlag(FLAGS_json)) {
    text = (results.size() == 1 ? FormatJson(results[0].spec, results[0].report) : FormatSweepJson(results)) + "\n";
  } else {
    text = results.size() == 1 ? FormatText(results[0].spec, results[0].report) : FormatTable(results);
  }
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
  if (const std::string csv = absl::GetFlag(FLAGS_csv); !csv.empty()) {
    std::FILE* f = std::fopen(csv.c_str(), "w");
    const std::string rows = FormatCsv(results);
    if (f == nullptr || std::fwrite(rows.data(), 1, rows.size(), f) != rows.size() || std::fclose(f) != 0) {
      std::fprintf(stderr, "attn_loadgen: cannot write --csv=%s\n", csv.c_str());
      return 2;
    }
  }
  for (const StepResult& r : results) {
    if (r.report.mismatches > 0 || r.report.ok == 0 || (spec->check && r.report.errors > 0)) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace attnd::loadgen

int main(int argc, char** argv) {
  attnd::TuneMallocForLargeMessages();  // as the daemon does: large messages reuse warm heap pages
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);  // as the daemon does (its main.cc)
  return attnd::loadgen::Main(argc, argv);
}
