// Launching the Hopper forward kernel: grid, shared-memory opt-in, causal switch, and the schedule
// chosen at run time. Included only by the per-head-dim translation units.
#pragma once

#include <cuda_runtime.h>

#include "hopper/flash_fwd_hopper_kernel.cuh"

namespace attnd::kernels::detail::hopper {

template <typename T, typename Tile>
cudaError_t launch_flash_fwd_hopper(const HopperFwdArgs& args, int batch, bool causal, cudaStream_t stream) {
  const int m_blocks = (args.base.max_seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM;
  if (m_blocks == 0 || batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(args.base.heads_q) * batch * m_blocks);
  auto kernel = causal ? flash_fwd_hopper_kernel<T, Tile, true> : flash_fwd_hopper_kernel<T, Tile, false>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

// The tuned tile per head dim, for each schedule.
template <typename T, int kHeadDim, HopperSchedule kSchedule>
cudaError_t launch_schedule(const HopperFwdArgs& args, int batch, bool causal, cudaStream_t stream) {
  return launch_flash_fwd_hopper<T, HopperFwdTile<kHeadDim, 2, kSchedule>>(args, batch, causal, stream);
}

template <typename T, int kHeadDim>
cudaError_t run_flash_fwd_hopper(const HopperFwdArgs& args, int batch, bool causal, HopperSchedule schedule,
                                 cudaStream_t stream) {
  switch (schedule) {
    case HopperSchedule::kSerial: return launch_schedule<T, kHeadDim, HopperSchedule::kSerial>(args, batch, causal, stream);
    case HopperSchedule::kPingPong: return launch_schedule<T, kHeadDim, HopperSchedule::kPingPong>(args, batch, causal, stream);
    case HopperSchedule::kOverlap: return launch_schedule<T, kHeadDim, HopperSchedule::kOverlap>(args, batch, causal, stream);
    case HopperSchedule::kPingPongOverlap:
      return launch_schedule<T, kHeadDim, HopperSchedule::kPingPongOverlap>(args, batch, causal, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace attnd::kernels::detail::hopper
