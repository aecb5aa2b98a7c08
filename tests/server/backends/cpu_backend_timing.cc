// Times the CPU backend's forward and backward on one dense shape: warm-up, then the median of
// several runs (wall time and process CPU time), inputs rotated between runs so caches do not
// flatter the result. Outputs are allocated once; only the backend's calls are timed.
//   cpu_backend_timing [batch=1] [seqlen=1024] [heads=16] [heads_kv=16] [dim=128] [dtype=bf16]
//                      [causal=0] [threads=0] [isa=best|baseline|avx2|avx512] [runs=7]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "server/backends/cpu/cpu_backend_options.h"
#include "tests/server/backends/attention_case.h"

namespace attnd::testing {
namespace {

int Main(int argc, char** argv) {
  std::map<std::string, std::string> kv = {{"batch", "1"},   {"seqlen", "1024"}, {"heads", "16"},
                                           {"heads_kv", ""},  {"dim", "128"},     {"dtype", "bf16"},
                                           {"causal", "0"},   {"threads", "0"},   {"isa", "best"},
                                           {"runs", "7"}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (eq == std::string::npos || !kv.count(arg.substr(0, eq))) {
      std::fprintf(stderr, "usage: %s [key=value ...], keys:", argv[0]);
      for (const auto& [k, v] : kv) std::fprintf(stderr, " %s", k.c_str());
      std::fprintf(stderr, "\n");
      return 2;
    }
    kv[arg.substr(0, eq)] = arg.substr(eq + 1);
  }
  const int batch = std::stoi(kv["batch"]), seqlen = std::stoi(kv["seqlen"]), heads = std::stoi(kv["heads"]);
  const int heads_kv = kv["heads_kv"].empty() ? heads : std::stoi(kv["heads_kv"]);
  const int dim = std::stoi(kv["dim"]), runs = std::max(1, std::stoi(kv["runs"]));
  const bool causal = kv["causal"] == "1";
  const DType dtype = kv["dtype"] == "fp32" ? DType::kFP32 : kv["dtype"] == "fp16" ? DType::kFP16 : DType::kBF16;

  CpuBackendOptions options;
  options.threads = std::stoi(kv["threads"]);
  for (cpu::CpuIsa isa : cpu::AvailableCpuIsas()) {
    if (kv["isa"] == cpu::CpuIsaName(isa)) options.isa = isa;
  }
  if (kv["isa"] != "best" && !options.isa.has_value()) {
    std::fprintf(stderr, "isa=%s is not available on this CPU\n", kv["isa"].c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackendWithOptions(options);
  if (!backend.ok()) {
    std::fprintf(stderr, "%s\n", backend.status().ToString().c_str());
    return 1;
  }
  const AttentionCase c{"timing", std::vector<int>(batch, seqlen), std::vector<int>(batch, seqlen), heads,
                        heads_kv, dim, causal, false, 0.f};
  std::vector<Problem> inputs;
  for (int i = 0; i < 3; ++i) inputs.push_back(MakeProblem(c, dtype, 1000 + i));

  // Median wall time and median process CPU time (all threads) of `runs` calls. On a shared
  // machine the CPU time is the steadier figure: other jobs stretch the wall time, not the work.
  using Clock = std::chrono::steady_clock;
  auto cpu_ms = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  };
  struct Timing {
    double wall_ms, cpu_ms;
  };
  auto median_ms = [&](auto&& run) {
    run(size_t{0});  // warm-up: threads started, pages touched
    std::vector<double> wall, cpu;
    for (int i = 0; i < runs; ++i) {
      const auto t0 = Clock::now();
      const double c0 = cpu_ms();
      run(size_t(i) % inputs.size());
      cpu.push_back(cpu_ms() - c0);
      wall.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    std::sort(wall.begin(), wall.end());
    std::sort(cpu.begin(), cpu.end());
    return Timing{wall[wall.size() / 2], cpu[cpu.size() / 2]};
  };
  // Outputs allocated once: only the backend's own work is timed.
  std::vector<ForwardOutputs> fwd;
  std::vector<BackwardOutputs> bwd;
  for (const Problem& p : inputs) {
    fwd.push_back(RunForward(**backend, p));
    bwd.push_back(RunBackward(**backend, p, fwd.back().out, fwd.back().lse));
  }
  auto forward_args = [&](size_t i) {
    ForwardArgs a;
    a.shape = &inputs[i].shape;
    a.options = inputs[i].options;
    a.dtype = dtype;
    a.q = inputs[i].q.data();
    a.k = inputs[i].k.data();
    a.v = inputs[i].v.data();
    a.out = fwd[i].out.data();
    a.lse = fwd[i].lse.data();
    return a;
  };
  auto backward_args = [&](size_t i) {
    BackwardArgs a;
    a.shape = &inputs[i].shape;
    a.options = inputs[i].options;
    a.dtype = dtype;
    a.q = inputs[i].q.data();
    a.k = inputs[i].k.data();
    a.v = inputs[i].v.data();
    a.out = fwd[i].out.data();
    a.lse = fwd[i].lse.data();
    a.grad_out = inputs[i].dout.data();
    a.grad_q = bwd[i].dq.data();
    a.grad_k = bwd[i].dk.data();
    a.grad_v = bwd[i].dv.data();
    return a;
  };
  bool ok = true;
  const Timing fwd_ms = median_ms([&](size_t i) { ok &= (*backend)->Forward(forward_args(i)).ok(); });
  const Timing bwd_ms = median_ms([&](size_t i) { ok &= (*backend)->Backward(backward_args(i)).ok(); });
  if (!ok) {
    std::fprintf(stderr, "a call failed\n");
    return 1;
  }
  const double flops = 4.0 * batch * heads * double(seqlen) * seqlen * dim * (causal ? 0.5 : 1.0);
  const std::vector<DeviceDescription> dev = (*backend)->Devices();
  std::printf("cpu backend, %s: batch %d seqlen %d heads %d/%d dim %d %s%s\n", dev[0].name.c_str(), batch,
              seqlen, heads, heads_kv, dim, std::string(DTypeName(dtype)).c_str(), causal ? " causal" : "");
  std::printf("forward  %9.2f ms  %7.1f GFLOP/s   cpu %9.2f ms (median of %d)\n", fwd_ms.wall_ms,
              flops / fwd_ms.wall_ms / 1e6, fwd_ms.cpu_ms, runs);
  std::printf("backward %9.2f ms  %7.1f GFLOP/s   cpu %9.2f ms (median of %d)\n", bwd_ms.wall_ms,
              2.5 * flops / bwd_ms.wall_ms / 1e6, bwd_ms.cpu_ms, runs);
  return 0;
}

}  // namespace
}  // namespace attnd::testing

int main(int argc, char** argv) { return attnd::testing::Main(argc, argv); }
