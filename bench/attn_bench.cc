// attn_bench: TFLOP/s of the forward kernel (attnd_kernels only, no gRPC).
//
// Shapes: B*N = 16384 tokens and H*d = 2048 (so every shape moves the same bytes), N over
// --seqlens, d over --dims, causal and not, over --dtypes. FLOPs = 4*B*H*N^2*d, half when causal.
// Timing: CUDA events around each launch, --warmup launches first, median of --iters; inputs rotate
// over --sets copies (each larger than L2) so consecutive launches never find their inputs cached.
// Inputs are random normal values, never zeros. Output: CSV on stdout or --csv FILE, one row per
// shape and implementation, with the bytes this implementation allocates for it (inputs, output,
// lse, workspace). --impls picks the kernels, timed one after the other on each shape: "ours" (the
// default dispatch), "mma_sync", "hopper", or "hopper_sN" (the Hopper kernel with schedule N, set
// through ATTND_HOPPER_SCHEDULE; see kernels/src/hopper/flash_fwd_hopper.h), each optionally with
// ":ATTND_HOPPER_VAR=VALUE" knobs (SelectImpl below).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "attnd/kernels/flash_fwd.h"

namespace {

using attnd::bench::ParseInts;
using attnd::bench::ParseStrings;
using attnd::kernels::ElementType;

struct Options {
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  std::vector<int> dims = {64, 128};
  std::vector<std::string> dtypes = {"bf16", "fp16"};
  std::vector<int> causal = {0, 1};
  std::vector<std::string> impls = {"ours"};
  int tokens = 16384;
  int hidden = 2048;
  int warmup = 5;
  int iters = 30;
  int sets = 3;
  std::string csv;
};

// Random normal values as bf16 or fp16 bits, generated on the host once.
std::vector<uint16_t> RandomHalves(size_t n, bool bf16, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) {
    const float f = normal(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (bf16) {
      x = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    } else {  // |f| < 8 here: a normal fp16, truncated mantissa is fine for benchmark data
      const uint32_t sign = (u >> 16) & 0x8000u;
      const int exp = int((u >> 23) & 0xff) - 127 + 15;
      x = exp <= 0 ? static_cast<uint16_t>(sign) : static_cast<uint16_t>(sign | (exp << 10) | ((u >> 13) & 0x3ff));
    }
  }
  return v;
}

// Points p at the kernel an --impls entry names; false for an unknown name or a kernel this device
// cannot run. An entry is a name with optional ":VAR=VALUE" suffixes that set the Hopper kernel's
// measurement knobs (ATTND_HOPPER_*; kernels/src/hopper/flash_fwd_hopper.cu) for its launches;
// knobs an entry does not name are unset.
bool SelectImpl(const std::string& entry, attnd::kernels::FlashFwdParams& p) {
  using attnd::kernels::FwdKernel;
  for (const char* knob : {"ATTND_HOPPER_SCHEDULE", "ATTND_HOPPER_GRID", "ATTND_HOPPER_TMA_STORE", "ATTND_HOPPER_CONSUMERS",
                           "ATTND_HOPPER_SCHEDULER"})
    unsetenv(knob);
  std::vector<std::string> parts;
  std::stringstream ss(entry);
  for (std::string part; std::getline(ss, part, ':');) parts.push_back(part);
  if (parts.empty()) return false;
  const std::string& impl = parts[0];
  if (impl == "ours") {
    p.kernel = FwdKernel::kAuto;
  } else if (impl == "mma_sync") {
    p.kernel = FwdKernel::kMmaSync;
  } else if (impl == "hopper" || (impl.size() == 9 && impl.rfind("hopper_s", 0) == 0)) {
    p.kernel = FwdKernel::kHopper;
    if (impl.size() == 9) setenv("ATTND_HOPPER_SCHEDULE", impl.substr(8).c_str(), 1);
  } else {
    return false;
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t eq = parts[i].find('=');
    if (eq == std::string::npos || parts[i].rfind("ATTND_HOPPER_", 0) != 0) return false;
    setenv(parts[i].substr(0, eq).c_str(), parts[i].substr(eq + 1).c_str(), 1);
  }
  return attnd::kernels::FlashFwdSelectKernel(p) != FwdKernel::kAuto;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--seqlens") o.seqlens = ParseInts(value());
    else if (a == "--dims") o.dims = ParseInts(value());
    else if (a == "--dtypes") o.dtypes = ParseStrings(value());
    else if (a == "--causal") o.causal = ParseInts(value());
    else if (a == "--impls") o.impls = ParseStrings(value());
    else if (a == "--tokens") o.tokens = std::stoi(value());
    else if (a == "--hidden") o.hidden = std::stoi(value());
    else if (a == "--warmup") o.warmup = std::stoi(value());
    else if (a == "--iters") o.iters = std::stoi(value());
    else if (a == "--sets") o.sets = std::stoi(value());
    else if (a == "--csv") o.csv = value();
    else {
      std::fprintf(stderr,
                   "usage: attn_bench [--seqlens 512,...] [--dims 64,128] [--dtypes bf16,fp16] [--causal 0,1]\n"
                   "                  [--impls ours,mma_sync,hopper,hopper_s0..hopper_s3]\n"
                   "                  [--tokens 16384] [--hidden 2048] [--warmup 5] [--iters 30] [--sets 3] [--csv FILE]\n");
      return 2;
    }
  }

  int device_count = 0;
  if (cudaGetDeviceCount(&device_count) != cudaSuccess || device_count == 0) {
    std::fprintf(stderr, "attn_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::fprintf(stderr, "device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // Every shape has tokens x hidden elements per tensor: allocate the rotated sets once.
  const size_t elems = size_t(o.tokens) * o.hidden;
  const size_t bytes = elems * 2;
  struct Set { void *q, *k, *v, *out; float* lse; };
  std::vector<Set> sets(o.sets);
  for (Set& s : sets) {
    CHECK_CUDA(cudaMalloc(&s.q, bytes));
    CHECK_CUDA(cudaMalloc(&s.k, bytes));
    CHECK_CUDA(cudaMalloc(&s.v, bytes));
    CHECK_CUDA(cudaMalloc(&s.out, bytes));
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&s.lse), size_t(o.tokens) * o.hidden / 32 * sizeof(float)));  // heads >= hidden/256
  }
  int32_t *cu_q = nullptr, *cu_k = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&cu_q), (o.tokens + 1) * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&cu_k), (o.tokens + 1) * sizeof(int32_t)));

  FILE* csv = o.csv.empty() ? stdout : std::fopen(o.csv.c_str(), "w");
  if (!csv) {
    std::fprintf(stderr, "cannot write %s\n", o.csv.c_str());
    return 1;
  }
  std::fprintf(csv, "impl,device,dtype,head_dim,causal,seqlen,batch,heads,median_ms,min_ms,tflops,alloc_bytes\n");


  for (const std::string& dt : o.dtypes) {
    const bool bf16 = dt == "bf16";
    if (!bf16 && dt != "fp16") {
      std::fprintf(stderr, "unknown dtype %s\n", dt.c_str());
      return 2;
    }
    for (size_t si = 0; si < sets.size(); ++si) {
      for (void* t : {sets[si].q, sets[si].k, sets[si].v}) {
        const std::vector<uint16_t> host = RandomHalves(elems, bf16, uint32_t(1000 * si + size_t(t) % 997));
        CHECK_CUDA(cudaMemcpy(t, host.data(), bytes, cudaMemcpyHostToDevice));
      }
    }
    for (int d : o.dims)
      for (int causal : o.causal)
        for (int n : o.seqlens) {
          const int batch = o.tokens / n, heads = o.hidden / d;
          if (batch == 0) continue;
          std::vector<int32_t> cu(batch + 1);
          for (int b = 0; b <= batch; ++b) cu[b] = b * n;
          CHECK_CUDA(cudaMemcpy(cu_q, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
          CHECK_CUDA(cudaMemcpy(cu_k, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
          attnd::kernels::FlashFwdParams p;
          p.dtype = bf16 ? ElementType::kBF16 : ElementType::kFP16;
          p.cu_seqlens_q = cu_q;
          p.cu_seqlens_k = cu_k;
          p.batch = batch;
          p.heads_q = p.heads_kv = heads;
          p.head_dim = d;
          p.max_seqlen_q = p.max_seqlen_k = n;
          p.total_q = p.total_k = int64_t{batch} * n;
          p.causal = causal != 0;
          p.softmax_scale = 1.f / std::sqrt(float(d));
          attnd::kernels::SetContiguousStrides(p);
          for (const std::string& impl : o.impls) {
            if (!SelectImpl(impl, p)) {
              std::fprintf(stderr, "unknown or unavailable implementation %s\n", impl.c_str());
              return 2;
            }
            void* workspace = nullptr;
            if (const size_t ws = attnd::kernels::FlashFwdWorkspaceBytes(p); ws > 0) CHECK_CUDA(cudaMalloc(&workspace, ws));
            auto launch = [&](const Set& s) {
              p.q = s.q;
              p.k = s.k;
              p.v = s.v;
              p.out = s.out;
              p.lse = s.lse;
              CHECK_CUDA(attnd::kernels::FlashFwd(p, workspace, nullptr));
            };
            const attnd::bench::Timing t = attnd::bench::TimeRotated(
                [&](int set) { launch(sets[set]); }, static_cast<int>(sets.size()), o.warmup, o.iters);
            const double median = t.median_ms;
            const double flops = 4.0 * batch * heads * double(n) * n * d * (causal ? 0.5 : 1.0);
            const size_t alloc = 4 * bytes + size_t(batch) * heads * n * sizeof(float) + (batch + 1) * 8;
            std::fprintf(csv, "%s,%s,%s,%d,%d,%d,%d,%d,%.4f,%.4f,%.1f,%zu\n", impl.c_str(), prop.name, dt.c_str(), d, causal,
                         n, batch, heads, median, t.min_ms, flops / (median * 1e-3) / 1e12, alloc);
            std::fflush(csv);
            if (workspace != nullptr) CHECK_CUDA(cudaFree(workspace));
            std::fprintf(stderr, "%-10s %s d=%d causal=%d N=%5d: %8.3f ms  %6.1f TFLOP/s\n", impl.c_str(), dt.c_str(), d,
                         causal, n, median, flops / (median * 1e-3) / 1e12);
          }
        }
  }
  if (csv != stdout) std::fclose(csv);
  return 0;
}
