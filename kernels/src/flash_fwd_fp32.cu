#include "flash_fwd_fp32.cuh"

#include <cuda_runtime.h>

#include <algorithm>

#include "common/warp_reduce.cuh"
#include "fp32_scale.cuh"

namespace attnd::kernels::detail {
namespace {

constexpr int kThreads = 256;

// Elements are visited as float4 vectors: head_dim is a multiple of 8 and strides of 4, so a
// vector never straddles two heads.
__device__ __forceinline__ const float4* vector_at(const Fp32Tensor& t, int head_dim, int64_t vec) {
  const int per_head = head_dim / 4;
  const int64_t row_head = vec / per_head;
  const int c = static_cast<int>(vec - row_head * per_head);
  const int64_t row = row_head / t.heads;
  const int h = static_cast<int>(row_head - row * t.heads);
  return reinterpret_cast<const float4*>(t.src + row * t.row_stride + h * t.head_stride) + c;
}

__global__ void __launch_bounds__(kThreads) amax_kernel(const Fp32ToFp16Job job) {
  const Fp32Tensor& t = job.tensor[blockIdx.y];
  const int64_t vecs = t.rows * t.heads * job.head_dim / 4;
  float m = 0.f;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < vecs; i += int64_t{gridDim.x} * kThreads) {
    const float4 x = *vector_at(t, job.head_dim, i);
    m = fmaxf(m, fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w))));
  }
  m = warp_max(m);
  __shared__ float warp_maxima[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_maxima[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < kThreads / 32 ? warp_maxima[threadIdx.x] : 0.f;
    m = warp_max(m);
    // Non-negative floats order like their bit patterns (NaN above +inf, so NaN wins).
    if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned*>(job.amax) + blockIdx.y, __float_as_uint(m));
  }
}

__global__ void __launch_bounds__(kThreads) convert_kernel(const Fp32ToFp16Job job) {
  const Fp32Tensor& t = job.tensor[blockIdx.y];
  const float scale = ldexpf(1.f, -fp16_scale_shift(job.amax[blockIdx.y]));
  const int64_t vecs = t.rows * t.heads * job.head_dim / 4;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < vecs; i += int64_t{gridDim.x} * kThreads) {
    const float4 x = *vector_at(t, job.head_dim, i);
    const __half2 lo = __floats2half2_rn(x.x * scale, x.y * scale);
    const __half2 hi = __floats2half2_rn(x.z * scale, x.w * scale);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(t.dst)[i] = packed;  // dst is contiguous: vector i is elements 4i..4i+3
  }
}

}  // namespace

cudaError_t ConvertFp32ToFp16(const Fp32ToFp16Job& job, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(job.amax, 0, 3 * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  int64_t largest = 0;
  for (const Fp32Tensor& t : job.tensor) largest = std::max<int64_t>(largest, t.rows * t.heads * job.head_dim / 4);
  if (largest == 0) return cudaSuccess;
  // Enough blocks to fill any current GPU several times; grid-stride loops cover the rest.
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((largest + kThreads - 1) / kThreads, 2048));
  const dim3 grid(blocks, 3);
  amax_kernel<<<grid, kThreads, 0, stream>>>(job);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  convert_kernel<<<grid, kThreads, 0, stream>>>(job);
  return cudaGetLastError();
}

}  // namespace attnd::kernels::detail
