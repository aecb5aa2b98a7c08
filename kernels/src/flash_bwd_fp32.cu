// The backward's FP32 path (flash_bwd_fp32.cuh).
//
// Scales, all powers of two (exact to apply and to undo):
//   c_x = 2^-s(max|x|) for x in q, k, v, dO   (fp32_scale.cuh: max|x| c_x in [2^14, 2^15))
//   s_ds = 2^-s(2 max_i ||dO_i|| max_j ||v_j||)
// The bound: |dP_ij| = |dO_i . v_j| <= ||dO_i|| ||v_j||, and |D_i| = |dO_i . out_i| <= ||dO_i||
// max_j ||v_j|| (out_i is a convex combination of the v_j), so |dS_ij| = P_ij |dP_ij - D_i| <=
// 2 max ||dO|| max ||v||, and s_ds dS stays below 2^15 < 65504 when rounded to FP16.
// The kernels then see S' = c_q c_k S, dP' = c_do c_v dP, and use
//   scale_log2' = scale_log2 / (c_q c_k),  dS' = P (dP' s_ds / (c_do c_v) - s_ds D) = s_ds dS
//   dV = (P^T dO') / c_do,  dK = c (dS'^T q') / (s_ds c_q),  dQ = c (dS' k') / (s_ds c_k).
#include "flash_bwd_fp32.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "common/warp_reduce.cuh"
#include "flash_bwd_args.cuh"
#include "fp32_scale.cuh"

namespace attnd::kernels::bwd {
namespace {

constexpr int kThreads = 256;

// One quad (4 lanes) per head vector: blockIdx.y picks the tensor.
__global__ void __launch_bounds__(kThreads) fp32_stats_kernel(const __grid_constant__ BwdFp32Job job) {
  const Fp32Source& t = job.tensor[blockIdx.y];
  const int64_t vectors = t.rows * t.heads;
  const int sub = threadIdx.x % 4;
  float amax = 0.f, norm2 = 0.f;
  const int64_t first = (blockIdx.x * int64_t{kThreads} + threadIdx.x) / 4;
  const int64_t step = int64_t{gridDim.x} * kThreads / 4;
  // Every lane runs the same number of iterations (full-warp quad shuffles inside).
  for (int64_t base = 0; base < vectors; base += step) {
    const int64_t vec = base + first;
    float sq = 0.f;
    if (vec < vectors) {
      const int64_t row = vec / t.heads;
      const int h = static_cast<int>(vec - row * t.heads);
      const float* x = t.src + row * t.row_stride + h * t.head_stride;
      for (int c = sub; c < job.head_dim / 4; c += 4) {
        const float4 f = reinterpret_cast<const float4*>(x)[c];
        amax = fmaxf(amax, fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w))));
        sq = fmaf(f.x, f.x, fmaf(f.y, f.y, fmaf(f.z, f.z, fmaf(f.w, f.w, sq))));
      }
    }
    norm2 = fmaxf(norm2, detail::quad_sum(sq));
  }
  amax = detail::warp_max(amax);
  norm2 = detail::warp_max(norm2);
  __shared__ float s_amax[kThreads / 32], s_norm2[kThreads / 32];
  if (threadIdx.x % 32 == 0) {
    s_amax[threadIdx.x / 32] = amax;
    s_norm2[threadIdx.x / 32] = norm2;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    amax = detail::warp_max(threadIdx.x < kThreads / 32 ? s_amax[threadIdx.x] : 0.f);
    norm2 = detail::warp_max(threadIdx.x < kThreads / 32 ? s_norm2[threadIdx.x] : 0.f);
    if (threadIdx.x == 0) {
      // Non-negative floats order like their bit patterns (NaN above +inf, so NaN wins).
      auto* stats = reinterpret_cast<unsigned*>(job.stats);
      atomicMax(stats + blockIdx.y, __float_as_uint(amax));
      if (blockIdx.y == 2) atomicMax(stats + kStatNormV, __float_as_uint(sqrtf(norm2)));
      if (blockIdx.y == 3) atomicMax(stats + kStatNormDo, __float_as_uint(sqrtf(norm2)));
    }
  }
}

__global__ void fp32_factors_kernel(const __grid_constant__ BwdFp32Job job) {
  const float* st = job.stats;
  const float cq = ldexpf(1.f, -detail::fp16_scale_shift(st[kStatAmaxQ]));
  const float ck = ldexpf(1.f, -detail::fp16_scale_shift(st[kStatAmaxK]));
  const float cv = ldexpf(1.f, -detail::fp16_scale_shift(st[kStatAmaxV]));
  const float cdo = ldexpf(1.f, -detail::fp16_scale_shift(st[kStatAmaxDo]));
  const float sds = ldexpf(1.f, -detail::fp16_scale_shift(2.f * st[kStatNormDo] * st[kStatNormV]));
  float* f = job.factors;
  f[kFactorScaleLog2] = 1.f / (cq * ck);
  f[kFactorDsAlpha] = sds / (cdo * cv);
  f[kFactorDk] = 1.f / (sds * cq);
  f[kFactorDv] = 1.f / cdo;
  f[kFactorDq] = 1.f / (sds * ck);
  f[kFactorDsum] = sds;
  f[kFactorConvQ] = cq;
  f[kFactorConvK] = ck;
  f[kFactorConvV] = cv;
  f[kFactorConvDo] = cdo;
}

__global__ void __launch_bounds__(kThreads) fp32_convert_kernel(const __grid_constant__ BwdFp32Job job) {
  const Fp32Source& t = job.tensor[blockIdx.y];
  const float scale = job.factors[kFactorConvQ + blockIdx.y];
  const int per_head = job.head_dim / 4;
  const int64_t vecs = t.rows * t.heads * per_head;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < vecs; i += int64_t{gridDim.x} * kThreads) {
    const int64_t row_head = i / per_head;
    const int c = static_cast<int>(i - row_head * per_head);
    const int64_t row = row_head / t.heads;
    const int h = static_cast<int>(row_head - row * t.heads);
    const float4 x = reinterpret_cast<const float4*>(t.src + row * t.row_stride + h * t.head_stride)[c];
    const __half2 lo = __floats2half2_rn(x.x * scale, x.y * scale);
    const __half2 hi = __floats2half2_rn(x.z * scale, x.w * scale);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(t.dst)[i] = packed;  // dst is contiguous: vector i is elements 4i..4i+3
  }
}

}  // namespace

cudaError_t PrepareBwdFp32(const BwdFp32Job& job, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(job.stats, 0, kStatCount * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  int64_t largest = 0;
  for (const Fp32Source& t : job.tensor) largest = std::max<int64_t>(largest, t.rows * t.heads * job.head_dim / 4);
  const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>((largest + kThreads - 1) / kThreads, 1, 2048));
  fp32_stats_kernel<<<dim3(blocks, 4), kThreads, 0, stream>>>(job);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  fp32_factors_kernel<<<1, 1, 0, stream>>>(job);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (largest == 0) return cudaSuccess;
  fp32_convert_kernel<<<dim3(blocks, 4), kThreads, 0, stream>>>(job);
  return cudaGetLastError();
}

}  // namespace attnd::kernels::bwd
