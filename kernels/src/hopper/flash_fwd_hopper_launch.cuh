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

// One tile configuration (head dim, consumers) under each schedule.
template <typename T, int kHeadDim, int kConsumers>
cudaError_t launch_config(const HopperFwdArgs& args, int grid, bool causal, HopperSchedule schedule,
                          cudaStream_t stream) {
  switch (schedule) {
    case HopperSchedule::kSerial:
      return launch_flash_fwd_hopper<T, HopperFwdTile<kHeadDim, kConsumers, 2, HopperSchedule::kSerial>>(args, grid, causal, stream);
    case HopperSchedule::kPingPong:
      return launch_flash_fwd_hopper<T, HopperFwdTile<kHeadDim, kConsumers, 2, HopperSchedule::kPingPong>>(args, grid, causal, stream);
    case HopperSchedule::kOverlap:
      return launch_flash_fwd_hopper<T, HopperFwdTile<kHeadDim, kConsumers, 2, HopperSchedule::kOverlap>>(args, grid, causal, stream);
    case HopperSchedule::kPingPongOverlap:
      return launch_flash_fwd_hopper<T, HopperFwdTile<kHeadDim, kConsumers, 2, HopperSchedule::kPingPongOverlap>>(
          args, grid, causal, stream);
  }
  return cudaErrorInvalidValue;
}

// Consumers: 2 or 3 at d = 64, 2 at d = 128 (flash_fwd_hopper_tile.cuh).
template <typename T, int kHeadDim>
cudaError_t run_flash_fwd_hopper(const HopperFwdArgs& args, int grid, bool causal, HopperSchedule schedule,
                                 int consumers, cudaStream_t stream) {
  if constexpr (kHeadDim == 64) {
    if (consumers == 3) return launch_config<T, kHeadDim, 3>(args, grid, causal, schedule, stream);
  }
  if (consumers != 2) return cudaErrorInvalidValue;
  return launch_config<T, kHeadDim, 2>(args, grid, causal, schedule, stream);
}

}  // namespace attnd::kernels::detail::hopper
