// Launching one instantiation of the backward main kernel. Included only by the per-head-dim
// translation units (flash_bwd_hdim*.cu); the grid comes from the plan (flash_bwd.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "flash_bwd_kernel.cuh"

namespace attnd::kernels::bwd {

template <typename T, typename Tile>
cudaError_t launch_flash_bwd(const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return cudaSuccess;
  auto kernel = flash_bwd_kernel<T, Tile>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

// Tuning experiments only: ATTND_BWD_TILE=alt runs AltBwdTile (flash_bwd_tile.cuh) instead of the
// default, so that one benchmark binary can time both in one device call.
inline int AltTileChoice() {
  static const int alt = [] {
    const char* e = std::getenv("ATTND_BWD_TILE");
    if (e == nullptr) return 0;
    return std::strcmp(e, "alt") == 0 ? 1 : std::strcmp(e, "alt2") == 0 ? 2 : 0;
  }();
  return alt;
}

// The entry the dispatcher calls: the default tile for the head dim. The grid's x (key blocks)
// must have been computed with the same kBlockN: the alternative tiles keep it.
template <typename T, int kHeadDim>
cudaError_t run_flash_bwd(const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  using Default = typename DefaultBwdTile<kHeadDim>::type;
  using Alt = typename AltBwdTile<kHeadDim>::type;
  using Alt2 = typename Alt2BwdTile<kHeadDim>::type;
  static_assert(Alt::kBlockN == Default::kBlockN && Alt2::kBlockN == Default::kBlockN,
                "the plan's grid assumes the default kBlockN");
  if constexpr (!std::is_same_v<Alt, Default>) {
    if (AltTileChoice() == 1) return launch_flash_bwd<T, Alt>(args, grid, stream);
  }
  if constexpr (!std::is_same_v<Alt2, Default>) {
    if (AltTileChoice() == 2) return launch_flash_bwd<T, Alt2>(args, grid, stream);
  }
  return launch_flash_bwd<T, Default>(args, grid, stream);
}

}  // namespace attnd::kernels::bwd
