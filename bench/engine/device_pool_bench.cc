// device_pool_bench: what one allocate + free costs the host, per allocator, on the GPU:
//   cudaMalloc/cudaFree            the naive per-request path the engine replaced
//   cudaMallocAsync/cudaFreeAsync  a cudaMemPool_t with release threshold = infinity (stream-ordered)
//   DeviceMemoryPool               attnd's caching allocator (server/backends/cuda/device_memory_pool.h)
// for a few request sizes and for a mixed stream of sizes, each allocation used by one small
// memset on a stream (so stream order matters). Prints a markdown table: median microseconds per
// allocate+free pair over several timed rounds, and the driver allocations the pool made; then
// what one cudaPointerGetAttributes costs (the per-tensor driver query host_page_locked avoids).
//
//   device_pool_bench [--rounds=7] [--pairs=2000]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "server/backends/cuda/device_memory_pool.h"

namespace {

#define CHECK_CUDA(expr)                                                              \
  do {                                                                                \
    const cudaError_t e_ = (expr);                                                    \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(e_));                \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

using Clock = std::chrono::steady_clock;

// Median over rounds of the microseconds per pair; each round runs `pairs` pairs then syncs.
double MedianMicros(int rounds, int pairs, cudaStream_t stream, const std::function<void(int)>& pair) {
  pair(0);  // warm-up: first allocations, pool creation
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> per_pair;
  for (int r = 0; r < rounds; ++r) {
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < pairs; ++i) pair(i);
    CHECK_CUDA(cudaStreamSynchronize(stream));
    per_pair.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count() / pairs);
  }
  std::sort(per_pair.begin(), per_pair.end());
  return per_pair[per_pair.size() / 2];
}

}  // namespace

// What a driver query per tensor would cost the engine (the alternative to the front end's
// TensorPlacement::host_page_locked flag): median nanoseconds of one cudaPointerGetAttributes on
// pageable memory, on memory registered with cudaHostRegister, and on cudaHostAlloc memory.
void PointerQueryCost() {
  constexpr size_t kBytes = size_t{16} << 20;
  constexpr int kCalls = 20000;
  void* pageable = std::aligned_alloc(4096, kBytes);
  void* registered = std::aligned_alloc(4096, kBytes);
  void* pinned = nullptr;
  CHECK_CUDA(cudaHostRegister(registered, kBytes, cudaHostRegisterPortable));
  CHECK_CUDA(cudaHostAlloc(&pinned, kBytes, cudaHostAllocPortable));
  std::printf("\n| cudaPointerGetAttributes on | type | median ns per call |\n|---|---|---|\n");
  for (auto [name, p] : {std::pair{"pageable heap", pageable}, {"cudaHostRegister'ed", registered},
                         {"cudaHostAlloc", pinned}}) {
    std::vector<double> ns;
    cudaPointerAttributes a{};
    for (int round = 0; round < 7; ++round) {
      const Clock::time_point t0 = Clock::now();
      for (int i = 0; i < kCalls; ++i) {
        CHECK_CUDA(cudaPointerGetAttributes(&a, static_cast<char*>(p) + (i * 4096) % kBytes));
      }
      ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / kCalls);
    }
    std::sort(ns.begin(), ns.end());
    std::printf("| %s | %d | %.0f |\n", name, static_cast<int>(a.type), ns[ns.size() / 2]);
  }
  CHECK_CUDA(cudaHostUnregister(registered));
  CHECK_CUDA(cudaFreeHost(pinned));
  std::free(registered);
  std::free(pageable);
}

int main(int argc, char** argv) {
  int rounds = 7, pairs = 2000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--rounds=", 0) == 0) rounds = std::atoi(a.c_str() + 9);
    if (a.rfind("--pairs=", 0) == 0) pairs = std::atoi(a.c_str() + 8);
  }
  CHECK_CUDA(cudaSetDevice(0));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaMemPool_t mempool;
  CHECK_CUDA(cudaDeviceGetDefaultMemPool(&mempool, 0));
  uint64_t threshold = UINT64_MAX;  // keep everything: the best case for cudaMallocAsync
  CHECK_CUDA(cudaMemPoolSetAttribute(mempool, cudaMemPoolAttrReleaseThreshold, &threshold));

  struct Workload {
    std::string name;
    std::vector<size_t> sizes;  // cycled through
  };
  const std::vector<Workload> workloads = {
      {"1.5 MiB (B=1 S=128 fwd)", {size_t{1572864} + 4096}},
      {"64 MiB (B=1 S=4096 fwd)", {size_t{64} << 20}},
      {"mixed 0.5-96 MiB", {size_t{1} << 19, size_t{3} << 20, size_t{24} << 20, size_t{7} << 20, size_t{96} << 20,
                           size_t{1536} << 10, size_t{40} << 20, size_t{12} << 20}},
  };
  std::printf("| workload | cudaMalloc+cudaFree us | cudaMallocAsync+FreeAsync us | DeviceMemoryPool us | "
              "pool driver allocations | pool allocations |\n|---|---|---|---|---|---|\n");
  for (const Workload& w : workloads) {
    auto size = [&](int i) { return w.sizes[size_t(i) % w.sizes.size()]; };
    const int n = w.sizes.size() > 1 || w.sizes[0] > (size_t{8} << 20) ? pairs / 10 : pairs;
    const double naive = MedianMicros(rounds, n, stream, [&](int i) {
      void* p = nullptr;
      CHECK_CUDA(cudaMalloc(&p, size(i)));
      CHECK_CUDA(cudaMemsetAsync(p, 1, 256, stream));
      CHECK_CUDA(cudaFree(p));  // synchronizes the device
    });
    const double async = MedianMicros(rounds, n, stream, [&](int i) {
      void* p = nullptr;
      CHECK_CUDA(cudaMallocAsync(&p, size(i), stream));
      CHECK_CUDA(cudaMemsetAsync(p, 1, 256, stream));
      CHECK_CUDA(cudaFreeAsync(p, stream));
    });
    attnd::DeviceMemoryPool pool(0, int64_t{16} << 30);
    const double pooled = MedianMicros(rounds, n, stream, [&](int i) {
      absl::StatusOr<attnd::DeviceMemoryPool::Allocation> a = pool.Allocate(size(i), stream, "bench");
      if (!a.ok()) {
        std::fprintf(stderr, "pool: %s\n", a.status().ToString().c_str());
        std::exit(1);
      }
      CHECK_CUDA(cudaMemsetAsync(a->get(), 1, 256, stream));
    });
    const attnd::MemoryPoolStats s = pool.Stats();
    std::printf("| %s | %.2f | %.2f | %.2f | %lld | %lld |\n", w.name.c_str(), naive, async, pooled,
                static_cast<long long>(s.driver_allocations), static_cast<long long>(s.allocations));
  }
  PointerQueryCost();
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
