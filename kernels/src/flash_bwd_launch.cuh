// Launching one instantiation of the backward main kernel. Included only by the per-head-dim
// translation units (flash_bwd_hdim*.cu); the grid comes from the plan (flash_bwd.cu).
#pragma once

#include <cuda_runtime.h>

#include "flash_bwd_kernel.cuh"

namespace attnd::kernels::bwd {

template <typename T, typename Tile, bool kDeterministic>
cudaError_t launch_flash_bwd_kernel(const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  auto kernel = flash_bwd_kernel<T, Tile, kDeterministic>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

template <typename T, typename Tile>
cudaError_t launch_flash_bwd(const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return cudaSuccess;
  // The deterministic variant is its own instantiation so that its dQ slice updates cost the
  // atomic path no registers.
  return args.deterministic ? launch_flash_bwd_kernel<T, Tile, true>(args, grid, stream)
                            : launch_flash_bwd_kernel<T, Tile, false>(args, grid, stream);
}

// The entry the dispatcher calls: the tuned tile for the head dim and causality. Both share
// kBlockN, which the plan's grid (key blocks) was computed with.
template <typename T, int kHeadDim>
cudaError_t run_flash_bwd(const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  using Causal = typename DefaultBwdTile<kHeadDim, true>::type;
  using NonCausal = typename DefaultBwdTile<kHeadDim, false>::type;
  static_assert(Causal::kBlockN == NonCausal::kBlockN, "one grid for both");
  return args.causal ? launch_flash_bwd<T, Causal>(args, grid, stream) : launch_flash_bwd<T, NonCausal>(args, grid, stream);
}

}  // namespace attnd::kernels::bwd
