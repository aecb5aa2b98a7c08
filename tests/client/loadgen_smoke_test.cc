// attn_loadgen, the real executable, against an in-process daemon on loopback: it must measure
// something, check what it measured, report it as JSON, and fail loudly when the daemon is wrong
// or absent.
#include <sys/wait.h>

#include <cstdio>
#include <regex>
#include <string>

#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/transport/region_registry.h"
#include "server/transport/resident_store.h"
#include "tests/client/client_test_util.h"
#include "tests/client/test_backends.h"

#ifndef LOADGEN_SWEEP_CSV  // set by tests/client/CMakeLists.txt for plot_sweep_makes_a_png
#define LOADGEN_SWEEP_CSV (::testing::TempDir() + "loadgen_sweep.csv")
#endif
#ifndef ATTN_LOADGEN_PATH
#error "ATTN_LOADGEN_PATH must name the attn_loadgen executable"
#endif

namespace attnd::testing {
namespace {

struct LoadgenRun {
  int exit_code = -1;
  std::string stdout_text;
};

LoadgenRun RunLoadgen(const std::string& args) {
  const std::string command = std::string(ATTN_LOADGEN_PATH) + " " + args;
  LoadgenRun run;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return run;
  }
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) run.stdout_text.append(buffer, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// The number after "key": in the JSON object (-1 when absent).
double JsonNumber(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\":(-?[0-9.eE+-]+)"))) return -1;
  return std::stod(m[1]);
}

TEST(LoadgenSmoke, ForwardForTwoSecondsWithCheck) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(2), 2, &lb);
  const LoadgenRun run = RunLoadgen("--target=" + lb.server->address() +
                             " --duration=2 --concurrency=4 --batch=2 --seqlen_q=64 --seqlen_k=80 --heads_q=4"
                             " --heads_kv=2 --head_dim=64 --dtype=bf16 --causal --check --check_every=2 --json");
  SCOPED_TRACE(run.stdout_text);
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_GT(JsonNumber(run.stdout_text, "requests"), 0);
  EXPECT_GT(JsonNumber(run.stdout_text, "ok"), 0);
  EXPECT_EQ(JsonNumber(run.stdout_text, "errors"), 0);
  EXPECT_GT(JsonNumber(run.stdout_text, "checked"), 0);
  EXPECT_EQ(JsonNumber(run.stdout_text, "mismatches"), 0);
  EXPECT_GT(JsonNumber(run.stdout_text, "requests_per_s"), 0);
  EXPECT_GT(JsonNumber(run.stdout_text, "payload_gb_per_s"), 0);
  EXPECT_GT(JsonNumber(run.stdout_text, "p99"), 0);
  EXPECT_GE(JsonNumber(run.stdout_text, "elapsed_s"), 1.9);
}

TEST(LoadgenSmoke, BackwardVarlenCountedRequestsAllChecked) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(2), 2, &lb);
  const LoadgenRun run = RunLoadgen("--target=" + lb.server->address() +
                             " --requests=12 --concurrency=3 --direction=backward --varlen --batch=3 --seqlen_q=40"
                             " --heads_q=2 --head_dim=32 --dtype=fp16 --causal --check --json");
  SCOPED_TRACE(run.stdout_text);
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_EQ(JsonNumber(run.stdout_text, "ok"), 12);
  EXPECT_EQ(JsonNumber(run.stdout_text, "checked"), 12);
  EXPECT_EQ(JsonNumber(run.stdout_text, "mismatches"), 0);
}

TEST(LoadgenSmoke, CheckCatchesADaemonReturningWrongNumbers) {
  Loopback lb;
  StartLoopback(std::make_unique<CorruptingBackend>(CreateCpuBackend(2)), 2, &lb);
  const LoadgenRun run = RunLoadgen("--target=" + lb.server->address() +
                             " --requests=4 --batch=1 --seqlen_q=32 --heads_q=2 --head_dim=32 --check --json");
  SCOPED_TRACE(run.stdout_text);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(JsonNumber(run.stdout_text, "mismatches"), 4);
  EXPECT_NE(run.stdout_text.find("relative L2 error"), std::string::npos);
}

TEST(LoadgenSmoke, TextSummaryNamesTheNumbers) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(2), 2, &lb);
  const LoadgenRun run = RunLoadgen("--target=" + lb.server->address() +
                             " --requests=5 --batch=1 --seqlen_q=16 --heads_q=2 --head_dim=16 --dtype=fp32");
  SCOPED_TRACE(run.stdout_text);
  EXPECT_EQ(run.exit_code, 0);
  for (const char* word : {"requests/s", "GB/s", "p50", "p90", "p99", "max"}) {
    EXPECT_NE(run.stdout_text.find(word), std::string::npos) << word;
  }
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::string ReadFile(const std::string& path) {
  std::string text;
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) text.append(buffer, n);
    std::fclose(f);
  }
  return text;
}

// A closed-loop sweep of two steps, each measured in windows: JSON {"steps":[2 objects]} and a CSV
// of a header and two rows, which the plot test (plot_sweep_makes_a_png) then draws.
TEST(LoadgenSmoke, ConcurrencySweepOfTwoStepsWritesJsonAndCsv) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(2), 2, &lb);
  const std::string csv = LOADGEN_SWEEP_CSV;
  std::remove(csv.c_str());
  const LoadgenRun run = RunLoadgen("--target=" + lb.server->address() +
                                    " --concurrency=1,2 --window=0.3 --stable_windows=2 --stability=0.5"
                                    " --duration=1.5 --warmup=0.2 --batch=1 --seqlen_q=64 --heads_q=2 --head_dim=32"
                                    " --check --check_every=10 --json --csv=" + csv);
  SCOPED_TRACE(run.stdout_text);
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_EQ(run.stdout_text.rfind("{\"steps\":[", 0), 0u);
  EXPECT_EQ(Count(run.stdout_text, "\"mode\":\"closed\""), 2);
  EXPECT_EQ(Count(run.stdout_text, "\"concurrency\":1,"), 1);
  EXPECT_EQ(Count(run.stdout_text, "\"concurrency\":2,"), 1);
  EXPECT_EQ(Count(run.stdout_text, "\"mismatches\":0"), 2);
  EXPECT_GT(JsonNumber(run.stdout_text, "windows"), 0);
  const std::string rows = ReadFile(csv);
  SCOPED_TRACE(rows);
  EXPECT_EQ(Count(rows, "\n"), 3);
  EXPECT_EQ(rows.rfind("mode,concurrency,rate,", 0), 0u);
  EXPECT_NE(rows.find("p99_ms"), std::string::npos);
  EXPECT_NE(rows.find("\nclosed,1,"), std::string::npos);
  EXPECT_NE(rows.find("\nclosed,2,"), std::string::npos);
}

// Open loop at a constant 40 calls/s for 2 s: about 80 calls whatever the latency, latency from the
// scheduled send time; a Poisson step alongside in the same sweep.
TEST(LoadgenSmoke, OpenLoopAtAFixedRateSendsThatRate) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(2), 2, &lb);
  const LoadgenRun run = RunLoadgen("--target=" + lb.server->address() +
                                    " --rate=40 --arrival=constant --duration=2 --batch=1 --seqlen_q=64 --heads_q=2"
                                    " --head_dim=32 --check --check_every=4 --json");
  SCOPED_TRACE(run.stdout_text);
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_NE(run.stdout_text.find("\"mode\":\"open\""), std::string::npos);
  EXPECT_NE(run.stdout_text.find("\"arrival\":\"constant\""), std::string::npos);
  EXPECT_GE(JsonNumber(run.stdout_text, "ok"), 76);
  EXPECT_LE(JsonNumber(run.stdout_text, "ok"), 81);
  EXPECT_NEAR(JsonNumber(run.stdout_text, "requests_per_s"), 40, 4);
  EXPECT_GT(JsonNumber(run.stdout_text, "checked"), 0);
  EXPECT_EQ(JsonNumber(run.stdout_text, "mismatches"), 0);
  EXPECT_GT(JsonNumber(run.stdout_text, "p95"), 0);
}

TEST(LoadgenSmoke, BadSweepFlagsExitTwo) {
  EXPECT_EQ(RunLoadgen("--concurrency=1,x").exit_code, 2);
  EXPECT_EQ(RunLoadgen("--rate=-5").exit_code, 2);
  EXPECT_EQ(RunLoadgen("--arrival=bursty --rate=5").exit_code, 2);
  EXPECT_EQ(RunLoadgen("--window=1 --requests=5").exit_code, 2);
}

TEST(LoadgenSmoke, UnreachableDaemonExitsTwo) {
  const LoadgenRun run = RunLoadgen("--target=127.0.0.1:1 --connect_timeout=0.5 --requests=1 --seqlen_q=8 --heads_q=1"
                             " --head_dim=8 --json");
  EXPECT_EQ(run.exit_code, 2);
}

TEST(LoadgenSmoke, BadFlagsExitTwo) {
  EXPECT_EQ(RunLoadgen("--heads_q=6 --heads_kv=4").exit_code, 2);
  EXPECT_EQ(RunLoadgen("--dtype=fp8").exit_code, 2);
  EXPECT_EQ(RunLoadgen("--direction=sideways").exit_code, 2);
}

}  // namespace
}  // namespace attnd::testing

// Transports (--transport, --direction=train --resident, --workload_file) against a daemon that
// serves shared memory and resident tensors.
namespace attnd::testing {
namespace {

struct RegionDaemon {
  std::string dir;
  std::unique_ptr<AttentionServer> server;
  explicit RegionDaemon() {
    char tmpl[] = "/tmp/attnd-loadgen-XXXXXX";
    dir = mkdtemp(tmpl);
    ServerOptions options;
    options.worker_threads = 2;
    options.region_socket = dir + "/regions.sock";
    server = *AttentionServer::Start(options, CreateCpuBackend(2));
  }
  ~RegionDaemon() {
    server.reset();
    rmdir(dir.c_str());
  }
};

constexpr char kSmallShape[] = " --batch=1 --seqlen_q=48 --seqlen_k=64 --heads_q=4 --heads_kv=2 --head_dim=32";

TEST(LoadgenTransports, SharedMemoryForwardAndBackwardAreCheckedAndCrossNoTensorBytes) {
  RegionDaemon d;
  for (const char* direction : {"forward", "backward"}) {
    const LoadgenRun run = RunLoadgen("--target=" + d.server->address() + kSmallShape +
                                      " --requests=8 --concurrency=2 --transport=shm --check --json --direction=" +
                                      direction);
    SCOPED_TRACE(run.stdout_text);
    EXPECT_EQ(run.exit_code, 0);
    EXPECT_EQ(JsonNumber(run.stdout_text, "checked"), 8);
    EXPECT_EQ(JsonNumber(run.stdout_text, "mismatches"), 0);
    EXPECT_LT(JsonNumber(run.stdout_text, "wire_bytes_per_call"), 2000);  // headers only
    EXPECT_GT(JsonNumber(run.stdout_text, "wire_bytes_per_call"), 0);
  }
  EXPECT_EQ(d.server->regions()->regions(), 0);  // the loadgen's sessions ended with it
}

TEST(LoadgenTransports, ResidentTrainingStepsPutFewerBytesOnTheWire) {
  RegionDaemon d;
  const std::string args = "--target=" + d.server->address() + kSmallShape + " --requests=6 --direction=train --json";
  const LoadgenRun full = RunLoadgen(args);
  const LoadgenRun resident = RunLoadgen(args + " --resident");
  SCOPED_TRACE(full.stdout_text + resident.stdout_text);
  EXPECT_EQ(full.exit_code, 0);
  EXPECT_EQ(resident.exit_code, 0);
  EXPECT_EQ(JsonNumber(resident.stdout_text, "ok"), 6);
  // forward q,k,v + out,lse, then grad_out + grads, against resending q,k,v,out,lse with grad_out.
  EXPECT_LT(JsonNumber(resident.stdout_text, "wire_bytes_per_call"),
            0.75 * JsonNumber(full.stdout_text, "wire_bytes_per_call"));
  EXPECT_EQ(d.server->resident()->handles(), 0);  // each backward released its handle
}

TEST(LoadgenTransports, AMixedWorkloadFileSendsEveryWorkload) {
  RegionDaemon d;
  const std::string file = d.dir + "/workloads.txt";
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("# three kinds of calls\n"
        "name=decode seqlen_q=1 seqlen_k=64 transport=shm weight=2\n"
        "name=prefill seqlen_q=40 causal=true weight=1   # proto by default\n"
        "name=step seqlen_q=24 direction=train resident=true weight=1\n", f);
  fclose(f);
  const LoadgenRun run = RunLoadgen("--target=" + d.server->address() + kSmallShape +
                                    " --requests=60 --concurrency=2 --json --workload_file=" + file);
  SCOPED_TRACE(run.stdout_text);
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_EQ(JsonNumber(run.stdout_text, "errors"), 0);
  for (const char* name : {"decode", "prefill", "step"}) {
    std::smatch m;
    ASSERT_TRUE(std::regex_search(run.stdout_text, m,
                                  std::regex(std::string("\"name\":\"") + name + "\",\"ok\":([0-9]+)")))
        << name;
    EXPECT_GT(std::stoi(m[1]), 0) << name;
  }
  unlink(file.c_str());
}

TEST(LoadgenTransports, ABadWorkloadFileExitsTwoNamingTheLine) {
  const std::string file = ::testing::TempDir() + "bad_workloads.txt";
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("name=ok seqlen_q=8\nname=bad transport=carrier-pigeon\n", f);
  fclose(f);
  const std::string command = std::string(ATTN_LOADGEN_PATH) + " --workload_file=" + file + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  char buffer[4096] = {};
  const size_t n = fread(buffer, 1, sizeof buffer - 1, pipe);
  const int status = pclose(pipe);
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(std::string(buffer, n).find("line 2: transport"), std::string::npos) << buffer;
}

}  // namespace
}  // namespace attnd::testing
