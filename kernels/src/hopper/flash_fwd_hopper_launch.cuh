// Launching the Hopper forward kernel: shared-memory opt-in, causal switch, and the schedule
// chosen at run time (the grid size comes from flash_fwd_hopper.cu). Included only by the per-head-dim translation units.
#pragma once

#include <cuda_runtime.h>

#include "hopper/flash_fwd_hopper_kernel.cuh"

namespace attnd::kernels::detail::hopper {

template <typename T, typename Tile>
cudaError_t launch_flash_fwd_hopper(const HopperFwdArgs& args, int grid, bool causal, cudaStream_t stream) {
  auto kernel = causal ? flash_fwd_hopper_kernel<T, Tile, true> : flash_fwd_hopper_kernel<T, Tile, false>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

// The tuned tile per head dim, for each schedule.
template <typename T, int kHeadDim, HopperSchedule kSchedule>
cudaError_t launch_schedule(const HopperFwdArgs& args, int grid, bool causal, cudaStream_t stream) {
  return launch_flash_fwd_hopper<T, HopperFwdTile<kHeadDim, 2, kSchedule>>(args, grid, causal, stream);
}

template <typename T, int kHeadDim>
cudaError_t run_flash_fwd_hopper(const HopperFwdArgs& args, int grid, bool causal, HopperSchedule schedule,
                                 cudaStream_t stream) {
  switch (schedule) {
    case HopperSchedule::kSerial: return launch_schedule<T, kHeadDim, HopperSchedule::kSerial>(args, grid, causal, stream);
    case HopperSchedule::kPingPong: return launch_schedule<T, kHeadDim, HopperSchedule::kPingPong>(args, grid, causal, stream);
    case HopperSchedule::kOverlap: return launch_schedule<T, kHeadDim, HopperSchedule::kOverlap>(args, grid, causal, stream);
    case HopperSchedule::kPingPongOverlap:
      return launch_schedule<T, kHeadDim, HopperSchedule::kPingPongOverlap>(args, grid, causal, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace attnd::kernels::detail::hopper
