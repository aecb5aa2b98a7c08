// attn_loadgen: closed-loop load against an attnd daemon.
//
//   attn_loadgen --target=127.0.0.1:7100 --concurrency=8 --duration=10 --dtype=bf16
//                --batch=1 --seqlen_q=1024 --heads_q=16 --head_dim=128 --check --json
//
// Exit status: 0 on success; 1 when a checked response mismatched, no call succeeded, or (with
// --check) any call failed; 2 on bad flags or when the daemon cannot be reached.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/attnd/tensors.h"
#include "client/loadgen/load_runner.h"
#include "client/loadgen/payloads.h"
#include "client/loadgen/report.h"
#include "server/backend.h"

ABSL_FLAG(std::string, target, "127.0.0.1:7100", "attnd address (host:port or any gRPC target)");
ABSL_FLAG(int, concurrency, 1, "closed-loop clients, each keeping one call in flight");
ABSL_FLAG(int, connections, 0, "gRPC connections the clients share; 0: one per client");
ABSL_FLAG(double, duration, 10, "seconds to send calls for (after --warmup); ignored with --requests");
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
ABSL_FLAG(std::string, direction, "forward", "forward or backward");
ABSL_FLAG(int, payloads, 4, "distinct random requests to rotate through");
ABSL_FLAG(uint64_t, seed, 1, "random seed of the payloads");
ABSL_FLAG(bool, check, false, "verify sampled responses against the local CPU backend");
ABSL_FLAG(int, check_every, 1, "with --check: verify every Nth call");
ABSL_FLAG(double, check_tolerance, 0, "relative L2 bound; 0: bf16 2e-2, fp16 5e-3, fp32 1e-3");
ABSL_FLAG(int, check_threads, 0, "threads of the local CPU backend; 0: all");
ABSL_FLAG(bool, json, false, "print one JSON object instead of the text summary");

namespace attnd::loadgen {
namespace {

absl::Status Positive(const char* flag, int64_t value) {
  if (value < 1) return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be at least 1, got ", value));
  return absl::OkStatus();
}

absl::StatusOr<LoadSpec> SpecFromFlags() {
  LoadSpec s;
  s.target = absl::GetFlag(FLAGS_target);
  s.concurrency = absl::GetFlag(FLAGS_concurrency);
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

  absl::StatusOr<DType> dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message()));
  s.dtype = *dtype;
  const std::string direction = absl::GetFlag(FLAGS_direction);
  if (direction == "forward") {
    s.direction = Direction::kForward;
  } else if (direction == "backward") {
    s.direction = Direction::kBackward;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--direction must be forward or backward, got '", direction, "'"));
  }

  for (auto [flag, value] : {std::pair<const char*, int64_t>{"concurrency", s.concurrency}, {"batch", s.batch},
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

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Closed-loop load generator for attnd. See client/loadgen/main.cc.");
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
  absl::StatusOr<std::vector<Payload>> payloads = BuildPayloads(*spec);
  if (!payloads.ok()) {
    std::fprintf(stderr, "attn_loadgen: building payloads: %s\n", payloads.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<LoadReport> report = RunLoad(*spec, *payloads);
  if (!report.ok()) {
    std::fprintf(stderr, "attn_loadgen: %s\n", report.status().ToString().c_str());
    return 2;
  }
  const std::string text = absl::GetFlag(FLAGS_json) ? FormatJson(*spec, *report) + "\n" : FormatText(*spec, *report);
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
  if (report->mismatches > 0 || report->ok == 0 || (spec->check && report->errors > 0)) return 1;
  return 0;
}

}  // namespace
}  // namespace attnd::loadgen

int main(int argc, char** argv) { return attnd::loadgen::Main(argc, argv); }
