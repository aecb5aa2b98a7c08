// Launching one instantiation of the backward main kernel. Included only by the per-head-dim
// translation units (flash_bwd_hdim*.cu); the grid comes from the plan (flash_bwd.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <type_traits>

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

// EXPERIMENT (bench/NOTES_BWD.md, version 8; remove once measured): alternative tiles for bf16
// atomic runs, chosen by ATTND_BWD_VARIANT (bench/bwd_variants_v8.txt); 0 or unset: the default.
//   1: d = 64 2 x 4 S/dP warps, predicated mask (the tile before version 8)
//   2: d = 64 4 x 2, predicated mask            4: d = 64 4 x 2, mask copies (the default)
//   5: d = 64 2 x 4, mask copies                6: d = 64 4 x 2, mask copies, dV -> dQ -> dK
//   7: d = 128 two S/dP loops, mask copies (causal default: predicated)
inline int ExperimentVariant() {
  const char* e = std::getenv("ATTND_BWD_VARIANT");
  return e != nullptr ? std::atoi(e) : 0;
}

template <typename T, int kHeadDim>
cudaError_t run_experiment(int variant, const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  if (grid.x == 0) return cudaSuccess;
  if constexpr (std::is_same_v<T, __nv_bfloat16> && kHeadDim == 64) {
    switch (variant) {
      case 1: return launch_flash_bwd_kernel<T, BwdTile<64, 128, 128, 2, 4, 4>, false>(args, grid, stream);
      case 2: return launch_flash_bwd_kernel<T, BwdTile<64, 128, 128, 4, 4, 4>, false>(args, grid, stream);
      case 4: return launch_flash_bwd_kernel<T, BwdTile<64, 128, 128, 4, 4, 4, 1, kScheduleMaskCopies>, false>(args, grid, stream);
      case 5: return launch_flash_bwd_kernel<T, BwdTile<64, 128, 128, 2, 4, 4, 1, kScheduleMaskCopies>, false>(args, grid, stream);
      case 6: return launch_flash_bwd_kernel<T, BwdTile<64, 128, 128, 4, 4, 4, 1, kScheduleMaskCopies | kScheduleDqMiddle>, false>(args, grid, stream);
      default: break;
    }
  }
  if constexpr (std::is_same_v<T, __nv_bfloat16> && kHeadDim == 128) {
    switch (variant) {
      case 7: return launch_flash_bwd_kernel<T, BwdTile<128, 64, 128, 2, 4, 2, 1, kScheduleMaskCopies>, false>(args, grid, stream);
      default: break;
    }
  }
  return args.causal ? launch_flash_bwd<T, typename DefaultBwdTile<kHeadDim, true>::type>(args, grid, stream)
                     : launch_flash_bwd<T, typename DefaultBwdTile<kHeadDim, false>::type>(args, grid, stream);
}

// The entry the dispatcher calls: the tuned tile for the head dim and causality. Both share
// kBlockN, which the plan's grid (key blocks) was computed with.
template <typename T, int kHeadDim>
cudaError_t run_flash_bwd(const BwdKernelArgs& args, dim3 grid, cudaStream_t stream) {
  using Causal = typename DefaultBwdTile<kHeadDim, true>::type;
  using NonCausal = typename DefaultBwdTile<kHeadDim, false>::type;
  static_assert(Causal::kBlockN == NonCausal::kBlockN, "one grid for both");
  if (!args.deterministic) {
    if (const int variant = ExperimentVariant(); variant != 0) return run_experiment<T, kHeadDim>(variant, args, grid, stream);
  }
  return args.causal ? launch_flash_bwd<T, Causal>(args, grid, stream) : launch_flash_bwd<T, NonCausal>(args, grid, stream);
}

}  // namespace attnd::kernels::bwd
