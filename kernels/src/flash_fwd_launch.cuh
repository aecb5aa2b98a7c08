// Launching one instantiation of the forward kernel: the grid, the dynamic shared memory opt-in,
// the causal switch. Included only by the per-head-dim translation units (flash_fwd_hdim*.cu).
#pragma once

#include <cuda_runtime.h>

#include "flash_fwd_kernel.cuh"

namespace attnd::kernels::detail {

// Grid: one dimension, query blocks x (batch, head) pairs; the kernel decides the order.
template <typename T, typename OutT, typename Tile>
cudaError_t launch_flash_fwd(const FwdKernelArgs& args, int batch, bool causal, cudaStream_t stream) {
  const int m_blocks = (args.max_seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM;
  if (m_blocks == 0 || batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(args.heads_q) * batch * m_blocks);
  auto kernel = causal ? flash_fwd_kernel<T, OutT, Tile, true> : flash_fwd_kernel<T, OutT, Tile, false>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

// The entry the dispatcher calls: the default tile for the head dim.
template <typename T, typename OutT, int kHeadDim>
cudaError_t run_flash_fwd(const FwdKernelArgs& args, int batch, bool causal, cudaStream_t stream) {
  return launch_flash_fwd<T, OutT, typename DefaultFwdTile<kHeadDim>::type>(args, batch, causal, stream);
}

}  // namespace attnd::kernels::detail
