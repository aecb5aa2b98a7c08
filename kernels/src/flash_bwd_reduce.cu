// The backward's split-sum pass (flash_bwd_reduce.cuh): one thread per 4 consecutive elements,
// float4 loads from every slice in slice order (the fixed order is what makes the result
// deterministic), one 8- or 16-byte store.
#include "flash_bwd_reduce.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "common/numeric.cuh"

namespace attnd::kernels::bwd {
namespace {

constexpr int kThreads = 256;

template <typename OutT>
__device__ __forceinline__ void store4(OutT* p, float4 x) {
  uint2 packed;
  packed.x = detail::pack2<OutT>(x.x, x.y);
  packed.y = detail::pack2<OutT>(x.z, x.w);
  *reinterpret_cast<uint2*>(p) = packed;
}

template <>
__device__ __forceinline__ void store4<float>(float* p, float4 x) {
  *reinterpret_cast<float4*>(p) = x;
}

template <typename OutT>
__global__ void __launch_bounds__(kThreads) split_sum_kernel(const __grid_constant__ SplitSumArgs a) {
  const float scale = a.factor != nullptr ? a.scale * *a.factor : a.scale;
  const int per_head = a.head_dim / 4;
  const int64_t vecs = a.rows * a.heads * per_head;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < vecs; i += int64_t{gridDim.x} * kThreads) {
    float4 sum = reinterpret_cast<const float4*>(a.src)[i];
    for (int s = 1; s < a.splits; ++s) {
      const float4 x = reinterpret_cast<const float4*>(a.src + s * a.split_stride)[i];
      sum.x += x.x;
      sum.y += x.y;
      sum.z += x.z;
      sum.w += x.w;
    }
    sum.x *= scale;
    sum.y *= scale;
    sum.z *= scale;
    sum.w *= scale;
    const int64_t row_head = i / per_head;
    const int c = static_cast<int>(i - row_head * per_head);
    const int64_t row = row_head / a.heads;
    const int h = static_cast<int>(row_head - row * a.heads);
    store4(static_cast<OutT*>(a.dst) + row * a.dst_row_stride + h * a.dst_head_stride + 4 * c, sum);
  }
}

}  // namespace

template <typename OutT>
cudaError_t RunSplitSum(const SplitSumArgs& args, cudaStream_t stream) {
  const int64_t vecs = args.rows * args.heads * (args.head_dim / 4);
  if (vecs == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((vecs + kThreads - 1) / kThreads, 4096));
  split_sum_kernel<OutT><<<blocks, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template cudaError_t RunSplitSum<__nv_bfloat16>(const SplitSumArgs&, cudaStream_t);
template cudaError_t RunSplitSum<__half>(const SplitSumArgs&, cudaStream_t);
template cudaError_t RunSplitSum<float>(const SplitSumArgs&, cudaStream_t);

}  // namespace attnd::kernels::bwd
