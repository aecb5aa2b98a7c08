// transport_bench: the transport baselines on loopback, in one run: raw TCP (one stream, and a
// request/response round trip of each payload) and a plain gRPC unary echo of protobuf `bytes`
// (stock settings; then with attnd's HTTP/2 tuning, to separate tuning from codec work).
//
//   transport_bench [--payloads=fwd_s1024,fwd_s4096,fwd_s16384,echo_32MiB,echo_128MiB]
//                   [--modes=tcp,grpc_echo] [--min_seconds=1] [--csv=FILE]
//
// Payload GB/s = (request + response bytes) / median call time. attnd's own paths are measured by
// attn_loadgen against a running attnd (bench/transport/run_on_device.sh runs both in one call).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/transport/attnd_roundtrip.h"
#include "bench/transport/gather_bench.h"
#include "bench/transport/grpc_echo.h"
#include "bench/transport/raw_tcp.h"
#include "server/transport/malloc_tuning.h"

ABSL_FLAG(std::string, payloads, "fwd_s1024,fwd_s4096,fwd_s16384,echo_32MiB,echo_128MiB",
          "payloads to move: fwd_sN (attnd Forward bytes of B=1,H=16,d=128,bf16 at seqlen N) or echo_NMiB");
ABSL_FLAG(std::string, modes, "tcp,grpc_echo,attnd_proto", "tcp (raw socket round trip), grpc_echo (stock gRPC "
          "echo), grpc_echo_callback (the same served on gRPC's callback API, like attnd), attnd_proto (attnd client + server, transport-only backend, tensors in the messages; over "
          "ForwardStream above --stream_above_mib), gather (the server's "
          "decode + gather of a Forward request from 64 KiB slices alone, no sockets; request bytes only)");
ABSL_FLAG(bool, parallel_copy, true, "attnd_* modes: gather received tensors over ParallelCopy's helper threads "
          "(false: on one thread, as before)");
ABSL_FLAG(double, stream_above_mib, 8, "attnd_proto: requests above this many MiB of tensors go over ForwardStream "
          "(ClientOptions.stream_above_bytes); 0: always one unary message");
ABSL_FLAG(bool, engine, false, "attnd_proto: the daemon's engine (batcher with default flags, stage timing) over the "
          "transport-only backend");
ABSL_FLAG(bool, lone_calls_on_caller, true, "--engine: the batcher computes a lone call on the worker that "
          "submitted it (attnd --lone_calls_on_caller)");
ABSL_FLAG(std::string, access_log, "", "attnd_proto: the in-process server's access log (per-call queue, compute and "
          "total times) is appended to this file");
ABSL_FLAG(double, stream_chunk_mib, 4, "attnd_proto: chunk size of streamed requests, MiB");
ABSL_FLAG(double, min_seconds, 1.0, "time each payload at least this long (after 2 warm-up calls)");
ABSL_FLAG(int, min_calls, 5, "and at least this many calls");
ABSL_FLAG(int, max_calls, 1000, "and at most this many calls");
ABSL_FLAG(int64_t, stream_mib, 2048, "raw TCP single-stream transfer size (MiB); 0 skips it");
ABSL_FLAG(std::string, channel_args, "", "extra channel arguments key=int,... for both ends of grpc_echo_args and "
          "attnd_* modes (attnd: after its own tuning)");
ABSL_FLAG(bool, mutex_deadlock_detection, true, "keep Abseil's mutex deadlock detection (on in Debian's "
          "Abseil, which is built without NDEBUG); false: off, as attnd and attn_loadgen run");
ABSL_FLAG(std::string, csv, "", "also append the rows as CSV to this file");
ABSL_FLAG(bool, tune_malloc, false, "apply attnd's heap settings (malloc_tuning.h), as attnd and attn_loadgen do; "
          "run the plain baselines without it, in a process of their own");

namespace attnd::bench {
namespace {

absl::StatusOr<PayloadSize> ParsePayload(const std::string& name) {
  int64_t n = 0;
  absl::string_view v(name);
  if (absl::ConsumePrefix(&v, "fwd_s") && absl::SimpleAtoi(v, &n) && n > 0) return ForwardPayload(static_cast<int>(n));
  v = name;
  if (absl::ConsumePrefix(&v, "echo_") && absl::ConsumeSuffix(&v, "MiB") && absl::SimpleAtoi(v, &n) && n > 0) {
    return SymmetricPayload(n);
  }
  return absl::InvalidArgumentError(absl::StrCat("--payloads: '", name, "' is not fwd_sN or echo_NMiB"));
}

struct Row {
  std::string mode, payload;
  PayloadSize size;
  CallTimes times;
  double gbps() const { return size.total() / times.median_s / 1e9; }
};

int Main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // attnd tunes its heap (server/transport/malloc_tuning.h); the plain baselines must not be.
  if (absl::GetFlag(FLAGS_tune_malloc)) TuneMallocForLargeMessages();
  if (!absl::GetFlag(FLAGS_mutex_deadlock_detection)) {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }
  TimingRule rule;
  rule.min_seconds = absl::GetFlag(FLAGS_min_seconds);
  rule.min_calls = absl::GetFlag(FLAGS_min_calls);
  rule.max_calls = std::max(absl::GetFlag(FLAGS_max_calls), rule.min_calls);
  std::vector<PayloadSize> sizes;
  for (const std::string& name : std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_payloads), ',', absl::SkipEmpty()))) {
    absl::StatusOr<PayloadSize> size = ParsePayload(name);
    if (!size.ok()) {
      std::fprintf(stderr, "transport_bench: %s\n", std::string(size.status().message()).c_str());
      return 2;
    }
    sizes.push_back(*size);
  }
  if (const int64_t mib = absl::GetFlag(FLAGS_stream_mib); mib > 0) {
    absl::StatusOr<double> bps = RawTcpStreamBytesPerSecond(mib << 20);
    if (!bps.ok()) {
      std::fprintf(stderr, "transport_bench: tcp stream: %s\n", bps.status().ToString().c_str());
      return 1;
    }
    std::printf("raw TCP single stream, %lld MiB one way: %.2f GB/s\n\n", static_cast<long long>(mib), *bps / 1e9);
  }
  ChannelArgList args;
  for (absl::string_view kv : absl::StrSplit(absl::GetFlag(FLAGS_channel_args), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, '=');
    int value = 0;
    if (!absl::SimpleAtoi(p.second, &value)) {
      std::fprintf(stderr, "transport_bench: --channel_args: '%s' is not key=int\n", std::string(kv).c_str());
      return 2;
    }
    args.emplace_back(p.first, value);
  }
  std::vector<Row> rows;
  for (const std::string& mode : std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty()))) {
    for (const PayloadSize& size : sizes) {
      absl::StatusOr<CallTimes> times;
      PayloadSize moved = size;  // the bytes the GB/s count
      if (mode == "tcp") {
        times = RawTcpRoundTrip(size, rule);
      } else if (mode == "grpc_echo") {
        times = GrpcEchoRoundTrip(size, rule);
      } else if (mode == "grpc_echo_callback") {
        times = GrpcEchoRoundTrip(size, rule, {}, /*callback_api=*/true);
      } else if (mode == "attnd_proto") {  // attnd moves Forward payloads only
        if (size.name.rfind("fwd_s", 0) != 0) continue;
        AttndRoundTripOptions attnd;
        attnd.stream_above_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_stream_above_mib) * 1048576);
        attnd.parallel_copy = absl::GetFlag(FLAGS_parallel_copy);
        attnd.engine = absl::GetFlag(FLAGS_engine);
        attnd.access_log = absl::GetFlag(FLAGS_access_log);
        attnd.lone_calls_on_caller = absl::GetFlag(FLAGS_lone_calls_on_caller);
        attnd.stream_chunk_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_stream_chunk_mib) * 1048576);
        attnd.channel_args = args;
        times = AttndForwardRoundTrip(std::stoi(size.name.substr(5)), attnd, rule);
      } else if (mode == "gather") {  // the request's bytes only
        if (size.name.rfind("fwd_s", 0) != 0) continue;
        moved.response_bytes = 0;
        times = GatherForwardRequest(std::stoi(size.name.substr(5)), absl::GetFlag(FLAGS_parallel_copy), rule);
      } else if (mode == "grpc_echo_args") {
        times = GrpcEchoRoundTrip(size, rule, args);
      } else {
        std::fprintf(stderr, "transport_bench: unknown mode '%s'\n", mode.c_str());
        return 2;
      }
      if (!times.ok()) {
        std::fprintf(stderr, "transport_bench: %s %s: %s\n", mode.c_str(), size.name.c_str(),
                     times.status().ToString().c_str());
        return 1;
      }
      rows.push_back({mode, size.name, moved, *times});
      std::fprintf(stderr, "%s %s: %.2f GB/s, %.1f CPU ms/call, min %.1f ms\n", mode.c_str(), size.name.c_str(),
                   rows.back().gbps(), rows.back().times.cpu_s * 1e3, rows.back().times.min_s * 1e3);
    }
  }
  std::printf("| mode | payload | request MiB | response MiB | calls | median ms | min ms | CPU ms/call | "
              "payload GB/s (median) | GB/s (min) | p10 ms |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::string csv;
  for (const Row& r : rows) {
    std::printf("| %s | %s | %.2f | %.2f | %d | %.3f | %.3f | %.3f | %.2f | %.2f | %.3f |\n", r.mode.c_str(),
                r.payload.c_str(), r.size.request_bytes / 1048576.0, r.size.response_bytes / 1048576.0, r.times.calls,
                r.times.median_s * 1e3, r.times.min_s * 1e3, r.times.cpu_s * 1e3, r.gbps(),
                r.size.total() / r.times.min_s / 1e9, r.times.p10_s * 1e3);
    absl::StrAppendFormat(&csv, "%s,%s,%d,%d,%d,%.6f,%.6f,%.6f,%.4f,%.6f\n", r.mode, r.payload, r.size.request_bytes,
                          r.size.response_bytes, r.times.calls, r.times.median_s, r.times.min_s, r.times.cpu_s,
                          r.gbps(), r.times.p10_s);
  }
  if (const std::string path = absl::GetFlag(FLAGS_csv); !path.empty()) {
    std::FILE* f = std::fopen(path.c_str(), "a");
    if (f == nullptr || std::fputs(csv.c_str(), f) < 0 || std::fclose(f) != 0) {
      std::fprintf(stderr, "transport_bench: cannot write %s\n", path.c_str());
      return 2;
    }
  }
  return 0;
}

}  // namespace
}  // namespace attnd::bench

int main(int argc, char** argv) { return attnd::bench::Main(argc, argv); }
