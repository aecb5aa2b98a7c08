// attn_bench_bwd: TFLOP/s of the backward pass (attnd_kernels_bwd only, no gRPC).
//
// Shapes: B*N = 16384 tokens and H*d = 2048, N over --seqlens, d over --dims, causal and not.
// FLOPs = 2.5 * 4*B*H*N^2*d (the five N^2 d products of the backward against the forward's two),
// half when causal. Timing: the whole FlashBwd call (dQ accumulator clear, pre-pass, main kernel,
// dQ conversion) between CUDA events, --warmup calls first, median of --iters; inputs rotate over
// --sets copies (each larger than L2). Inputs are random normal values generated on the device,
// never zeros; lse is set to log(visible keys) + 1/2, the expected logsumexp of unit-variance
// scores, so that P has realistic magnitudes (no forward kernel needed).
// Output: CSV (impl, device, dtype, head_dim, causal, deterministic, seqlen, batch, heads,
// median_ms, min_ms, tflops).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "attnd/kernels/flash_bwd.h"

namespace {

using attnd::bench::ParseInts;
using attnd::bench::ParseStrings;
using attnd::kernels::ElementType;

struct Options {
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  std::vector<int> dims = {64, 128};
  std::vector<int> causal = {0, 1};
  std::vector<int> deterministic = {0};
  std::string dtype = "bf16";
  int tokens = 16384;
  int hidden = 2048;
  int warmup = 5;
  int iters = 30;
  int sets = 3;
  std::string csv;
};

__device__ uint32_t Hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Standard normal values (Box-Muller on two hashes) as 16-bit floats.
template <typename T>
__global__ void FillNormal(T* x, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float u1 = (Hash(seed * 0x9e3779b97f4a7c15ull + 2 * i) + 1.f) * 2.3283064e-10f;
    const float u2 = Hash(seed * 0x9e3779b97f4a7c15ull + 2 * i + 1) * 2.3283064e-10f;
    const float z = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    x[i] = T(z);
  }
}

// lse[b, h, i] (dense layout) = log(number of keys query i sees) + 1/2.
__global__ void FillLse(float* lse, int batch_heads, int n, bool causal) {
  const size_t total = size_t(batch_heads) * n;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total; idx += size_t(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % n);
    lse[idx] = logf(causal ? float(i + 1) : float(n)) + 0.5f;
  }
}

template <typename T>
void Fill(void* p, size_t n, uint64_t seed) {
  FillNormal<T><<<1024, 256>>>(static_cast<T*>(p), n, seed);
  CHECK_CUDA(cudaGetLastError());
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
    else if (a == "--causal") o.causal = ParseInts(value());
    else if (a == "--deterministic") o.deterministic = ParseInts(value());
    else if (a == "--dtype") o.dtype = value();
    else if (a == "--tokens") o.tokens = std::stoi(value());
    else if (a == "--hidden") o.hidden = std::stoi(value());
    else if (a == "--warmup") o.warmup = std::stoi(value());
    else if (a == "--iters") o.iters = std::stoi(value());
    else if (a == "--sets") o.sets = std::stoi(value());
    else if (a == "--csv") o.csv = value();
    else {
      std::fprintf(stderr,
                   "usage: attn_bench_bwd [--seqlens 512,...] [--dims 64,128] [--causal 0,1] [--deterministic 0,1]\n"
                   "                      [--dtype bf16|fp16] [--tokens 16384] [--hidden 2048] [--warmup 5]\n"
                   "                      [--iters 30] [--sets 3] [--csv FILE]\n");
      return 2;
    }
  }
  const bool bf16 = o.dtype == "bf16";
  if (!bf16 && o.dtype != "fp16") {
    std::fprintf(stderr, "unknown dtype %s\n", o.dtype.c_str());
    return 2;
  }

  int device_count = 0;
  if (cudaGetDeviceCount(&device_count) != cudaSuccess || device_count == 0) {
    std::fprintf(stderr, "attn_bench_bwd: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::fprintf(stderr, "device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // Every shape has tokens x hidden elements per tensor: allocate the rotated sets once.
  const size_t elems = size_t(o.tokens) * o.hidden;
  const size_t bytes = elems * 2;
  struct Set {
    void *q, *k, *v, *out, *dout, *dq, *dk, *dv;
    float* lse;
  };
  std::vector<Set> sets(o.sets);
  uint64_t seed = 1;
  for (Set& s : sets) {
    for (void** t : {&s.q, &s.k, &s.v, &s.out, &s.dout, &s.dq, &s.dk, &s.dv}) {
      CHECK_CUDA(cudaMalloc(t, bytes));
      if (bf16) Fill<__nv_bfloat16>(*t, elems, seed++);
      else Fill<__half>(*t, elems, seed++);
    }
    CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&s.lse), size_t(o.tokens) * (o.hidden / 32) * sizeof(float)));
  }
  int32_t* cu = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&cu), (o.tokens + 1) * sizeof(int32_t)));

  FILE* csv = o.csv.empty() ? stdout : std::fopen(o.csv.c_str(), "w");
  if (!csv) {
    std::fprintf(stderr, "cannot write %s\n", o.csv.c_str());
    return 1;
  }
  std::fprintf(csv, "impl,device,dtype,head_dim,causal,deterministic,seqlen,batch,heads,median_ms,min_ms,tflops\n");


  for (int d : o.dims)
    for (int causal : o.causal)
      for (int det : o.deterministic)
        for (int n : o.seqlens) {
          const int batch = o.tokens / n, heads = o.hidden / d;
          if (batch == 0) continue;
          std::vector<int32_t> h_cu(batch + 1);
          for (int b = 0; b <= batch; ++b) h_cu[b] = b * n;
          CHECK_CUDA(cudaMemcpy(cu, h_cu.data(), h_cu.size() * 4, cudaMemcpyHostToDevice));
          for (Set& s : sets) {
            FillLse<<<1024, 256>>>(s.lse, batch * heads, n, causal != 0);
            CHECK_CUDA(cudaGetLastError());
          }
          attnd::kernels::FlashBwdParams p;
          p.dtype = bf16 ? ElementType::kBF16 : ElementType::kFP16;
          p.cu_seqlens_q = p.cu_seqlens_k = cu;
          p.batch = batch;
          p.heads_q = p.heads_kv = heads;
          p.head_dim = d;
          p.max_seqlen_q = p.max_seqlen_k = n;
          p.total_q = p.total_k = int64_t{batch} * n;
          p.causal = causal != 0;
          p.deterministic = det != 0;
          p.softmax_scale = 1.f / std::sqrt(float(d));
          attnd::kernels::SetContiguousStrides(p);
          void* ws = nullptr;
          const size_t ws_bytes = attnd::kernels::FlashBwdWorkspaceBytes(p);
          CHECK_CUDA(cudaMalloc(&ws, std::max<size_t>(ws_bytes, 256)));
          auto launch = [&](const Set& s) {
            p.q = s.q;
            p.k = s.k;
            p.v = s.v;
            p.out = s.out;
            p.grad_out = s.dout;
            p.lse = s.lse;
            p.grad_q = s.dq;
            p.grad_k = s.dk;
            p.grad_v = s.dv;
            CHECK_CUDA(attnd::kernels::FlashBwd(p, ws, nullptr));
          };
          const attnd::bench::Timing t = attnd::bench::TimeRotated(
              [&](int set) { launch(sets[set]); }, static_cast<int>(sets.size()), o.warmup, o.iters);
          CHECK_CUDA(cudaFree(ws));
          const double median = t.median_ms;
          const double flops = 2.5 * 4.0 * batch * heads * double(n) * n * d * (causal ? 0.5 : 1.0);
          std::fprintf(csv, "ours,%s,%s,%d,%d,%d,%d,%d,%d,%.4f,%.4f,%.1f\n", prop.name, o.dtype.c_str(), d, causal, det, n,
                       batch, heads, median, t.min_ms, flops / (median * 1e-3) / 1e12);
          std::fflush(csv);
          std::fprintf(stderr, "%s d=%d causal=%d det=%d N=%5d: %8.3f ms  %6.1f TFLOP/s  (workspace %.1f MiB)\n",
                       o.dtype.c_str(), d, causal, det, n, median, flops / (median * 1e-3) / 1e12, ws_bytes / 1048576.0);
        }
  if (csv != stdout) std::fclose(csv);
  return 0;
}
