// Runs the forward kernels once on each of a few small shapes covering every code path, for
// compute-sanitizer (memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory
// hazards), on every forward kernel the device can run (mma.sync; Hopper on sm_90). Exits non-zero
// on any CUDA error. Usage: flash_fwd_sanitize [hopper]   (hopper: the Hopper kernel only).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "attnd/kernels/flash_fwd.h"

namespace {

using attnd::kernels::ElementType;
using attnd::kernels::FwdKernel;

bool g_only_hopper = false;  // argv[1] == "hopper": skip the mma.sync kernel

#define CHECK(expr)                                                                      \
  do {                                                                                   \
    cudaError_t e = (expr);                                                              \
    if (e != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e)); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

void RunOne(ElementType t, int d, std::vector<int> sq, std::vector<int> sk, bool causal, bool packed) {
  std::vector<int32_t> cu_q{0}, cu_k{0};
  int max_q = 0, max_k = 0;
  for (size_t b = 0; b < sq.size(); ++b) {
    cu_q.push_back(cu_q.back() + sq[b]);
    cu_k.push_back(cu_k.back() + sk[b]);
    max_q = std::max(max_q, sq[b]);
    max_k = std::max(max_k, sk[b]);
  }
  attnd::kernels::FlashFwdParams p;
  p.dtype = t;
  p.batch = static_cast<int>(sq.size());
  p.heads_q = 4;
  p.heads_kv = 2;
  p.head_dim = d;
  p.max_seqlen_q = max_q;
  p.max_seqlen_k = max_k;
  p.total_q = cu_q.back();
  p.total_k = cu_k.back();
  p.lse_packed = packed;
  p.causal = causal;
  p.softmax_scale = 1.f / std::sqrt(float(d));
  attnd::kernels::SetContiguousStrides(p);
  const size_t es = t == ElementType::kFP32 ? 4 : 2;
  // Exact-size allocations, so that memcheck sees any access past the end.
  const size_t q_bytes = size_t(p.total_q) * p.heads_q * d * es, kv_bytes = size_t(p.total_k) * p.heads_kv * d * es;
  const size_t lse_count = packed ? size_t(p.total_q) * p.heads_q : size_t(p.batch) * p.heads_q * max_q;
  void *q, *k, *v, *out, *lse, *cq, *ck, *ws = nullptr;
  CHECK(cudaMalloc(&q, q_bytes));
  CHECK(cudaMalloc(&k, kv_bytes));
  CHECK(cudaMalloc(&v, kv_bytes));
  CHECK(cudaMalloc(&out, q_bytes));
  CHECK(cudaMalloc(&lse, lse_count * 4));
  CHECK(cudaMalloc(&cq, cu_q.size() * 4));
  CHECK(cudaMalloc(&ck, cu_k.size() * 4));
  std::mt19937 rng(d * 131 + int(t));
  std::vector<uint16_t> host16(std::max(q_bytes, kv_bytes) / 2 + 8);
  for (auto& x : host16) x = static_cast<uint16_t>(0x3c00 ^ (rng() & 0x83ff));  // finite fp16/bf16-ish values
  CHECK(cudaMemcpy(q, host16.data(), q_bytes, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(k, host16.data(), kv_bytes, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(v, host16.data(), kv_bytes, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(cq, cu_q.data(), cu_q.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(ck, cu_k.data(), cu_k.size() * 4, cudaMemcpyHostToDevice));
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.lse = static_cast<float*>(lse);
  p.cu_seqlens_q = static_cast<int32_t*>(cq);
  p.cu_seqlens_k = static_cast<int32_t*>(ck);
  const size_t ws_bytes = attnd::kernels::FlashFwdWorkspaceBytes(p);
  if (ws_bytes) CHECK(cudaMalloc(&ws, ws_bytes));
  // Every kernel that can run this problem here: mma.sync always, Hopper on sm_90.
  for (FwdKernel kernel : {FwdKernel::kMmaSync, FwdKernel::kHopper}) {
    if (g_only_hopper && kernel != FwdKernel::kHopper) continue;
    p.kernel = kernel;
    if (attnd::kernels::FlashFwdSelectKernel(p) != kernel) continue;
    CHECK(attnd::kernels::FlashFwd(p, ws, nullptr));
    CHECK(cudaDeviceSynchronize());
    std::printf("ok: %s dtype %d d %d batch %d causal %d packed %d\n", kernel == FwdKernel::kHopper ? "hopper" : "mma_sync",
                int(t), d, p.batch, causal, packed);
  }
  for (void* ptr : {q, k, v, out, lse, cq, ck, ws})
    if (ptr) CHECK(cudaFree(ptr));
}

}  // namespace

int main(int argc, char** argv) {
  g_only_hopper = argc > 1 && std::strcmp(argv[1], "hopper") == 0;
  for (ElementType t : {ElementType::kBF16, ElementType::kFP16, ElementType::kFP32})
    for (int d : {32, 64, 96, 128, 256})
      for (bool causal : {false, true}) RunOne(t, d, {70}, {70}, causal, false);
  for (int d : {64, 128})
    for (bool causal : {false, true}) {
      RunOne(ElementType::kBF16, d, {3, 0, 130, 17, 65}, {5, 9, 130, 0, 200}, causal, true);
      RunOne(ElementType::kBF16, d, {200, 200}, {33, 33}, causal, false);
      RunOne(ElementType::kFP16, d, {1, 17}, {17, 300}, causal, true);
    }
  std::printf("all sanitizer shapes ran\n");
  return 0;
}
