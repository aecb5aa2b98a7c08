// What every kernel benchmark shares: CUDA error checks, list flags, and the timing rule
// (warm-up launches, then CUDA events around each launch, inputs rotated over several copies so
// that no launch finds its inputs in L2, median and minimum of the runs).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#define CHECK_CUDA(expr)                                                                         \
  do {                                                                                           \
    cudaError_t e_ = (expr);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

namespace attnd::bench {

// "a,b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> ParseStrings(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(item);
  return v;
}

inline std::vector<int> ParseInts(const std::string& s) {
  std::vector<int> v;
  for (const std::string& item : ParseStrings(s)) v.push_back(std::stoi(item));
  return v;
}

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
};

// Times launch(set) for set = i % sets over `iters` runs after `warmup` unmeasured ones.
template <typename Launch>
Timing TimeRotated(Launch&& launch, int sets, int warmup, int iters) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) launch(i % sets);
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(start));
    launch(i % sets);
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], start, stop));
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

}  // namespace attnd::bench
