// The backward pre-pass (flash_bwd_preprocess.cuh). Four threads share one (row, head) vector,
// each reading 16-byte pieces of out and dO, so a warp reads 8 consecutive head vectors; a quad
// shuffle adds the four partial dot products (FP32).
#include "flash_bwd_preprocess.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "common/fast_math.cuh"
#include "common/warp_reduce.cuh"
#include "flash_bwd_args.cuh"

namespace attnd::kernels::bwd {
namespace {

constexpr int kThreads = 256;
constexpr int kPairsPerBlock = kThreads / 4;

// Dot product of 16 bytes of a and b.
__device__ __forceinline__ float dot16(const __nv_bfloat16* a, const __nv_bfloat16* b) {
  const uint4 x = *reinterpret_cast<const uint4*>(a), y = *reinterpret_cast<const uint4*>(b);
  const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 u = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&xs[i]));
    const float2 w = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&ys[i]));
    s = fmaf(u.x, w.x, fmaf(u.y, w.y, s));
  }
  return s;
}

__device__ __forceinline__ float dot16(const __half* a, const __half* b) {
  const uint4 x = *reinterpret_cast<const uint4*>(a), y = *reinterpret_cast<const uint4*>(b);
  const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 u = __half22float2(*reinterpret_cast<const __half2*>(&xs[i]));
    const float2 w = __half22float2(*reinterpret_cast<const __half2*>(&ys[i]));
    s = fmaf(u.x, w.x, fmaf(u.y, w.y, s));
  }
  return s;
}

__device__ __forceinline__ float dot16(const float* a, const float* b) {
  const float4 x = *reinterpret_cast<const float4*>(a), y = *reinterpret_cast<const float4*>(b);
  return fmaf(x.x, y.x, fmaf(x.y, y.y, fmaf(x.z, y.z, x.w * y.w)));
}

// grid: x = blocks of kPairsPerBlock (row, head) pairs over the padded rows, y = sequence.
template <typename TIn>
__global__ void __launch_bounds__(kThreads) bwd_preprocess_kernel(const __grid_constant__ BwdPreprocessArgs a) {
  constexpr int kVec = 16 / sizeof(TIn);  // elements per 16-byte piece
  const int b = blockIdx.y;
  const int q_start = a.cu_seqlens_q[b];
  const int seqlen_q = a.cu_seqlens_q[b + 1] - q_start;
  const int padded_rows = (seqlen_q + kLsePad - 1) / kLsePad * kLsePad;
  const int64_t pair = int64_t{blockIdx.x} * kPairsPerBlock + threadIdx.x / 4;
  const int sub = threadIdx.x % 4;
  const int i = static_cast<int>(pair / a.heads_q);
  const int h = static_cast<int>(pair - int64_t{i} * a.heads_q);
  const bool valid = i < seqlen_q;

  float acc = 0.f;
  if (valid) {
    const int64_t row = q_start + i;
    const TIn* o = static_cast<const TIn*>(a.out) + row * a.out_row_stride + h * a.out_head_stride;
    const TIn* d = static_cast<const TIn*>(a.dout) + row * a.do_row_stride + h * a.do_head_stride;
    for (int c = sub; c < a.head_dim / kVec; c += 4) acc += dot16(o + c * kVec, d + c * kVec);
  }
  acc = detail::quad_sum(acc);  // every lane takes part: no early return above

  if (sub == 0 && i < padded_rows) {
    float lse_log2 = INFINITY, dsum = 0.f;
    if (valid) {
      const float lse = a.lse_packed ? a.lse[int64_t{h} * a.total_q + q_start + i]
                                     : a.lse[(int64_t{b} * a.heads_q + h) * a.max_seqlen_q + i];
      lse_log2 = lse * detail::kLog2e;  // +inf (a row that saw no key) stays +inf
      dsum = a.fp32_factors != nullptr ? acc * a.fp32_factors[kFactorDsum] : acc;
    }
    const int64_t idx = h * a.lse_head_stride + q_start + int64_t{kLsePad} * b + i;
    a.lse_log2[idx] = lse_log2;
    a.dsum[idx] = dsum;
  }
}

}  // namespace

template <typename TIn>
cudaError_t RunBwdPreprocess(const BwdPreprocessArgs& args, cudaStream_t stream) {
  const int64_t padded = (int64_t{args.max_seqlen_q} + kLsePad - 1) / kLsePad * kLsePad;
  const int64_t blocks = (padded * args.heads_q + kPairsPerBlock - 1) / kPairsPerBlock;
  if (blocks == 0 || args.batch == 0) return cudaSuccess;
  if (blocks > 0x7fffffff || args.batch > 65535) return cudaErrorInvalidValue;
  bwd_preprocess_kernel<TIn><<<dim3(static_cast<unsigned>(blocks), args.batch), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template cudaError_t RunBwdPreprocess<__nv_bfloat16>(const BwdPreprocessArgs&, cudaStream_t);
template cudaError_t RunBwdPreprocess<__half>(const BwdPreprocessArgs&, cudaStream_t);
template cudaError_t RunBwdPreprocess<float>(const BwdPreprocessArgs&, cudaStream_t);

}  // namespace attnd::kernels::bwd
