// The Hopper (sm_90a) forward kernel's host interface inside kernels/: what the dispatcher in
// flash_fwd.cu calls, and the kernel's launch arguments.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "attnd/kernels/flash_fwd.h"
#include "flash_fwd_args.cuh"

namespace attnd::kernels::detail {

// Key rows per tile (the TMA box height of the k and v maps). Query rows per work tile are 64 per
// consumer warpgroup (the q map's box height); the output is stored 64 rows at a time.
inline constexpr int kHopperBlockN = 128;

// Launch arguments: the tensor maps of q, k, v and out (TMA descriptors, 64-byte aligned; the
// kernel takes the whole struct as a __grid_constant__ parameter) and the usual pointers and strides.
struct HopperFwdArgs {
  CUtensorMap tma_q;  // boxes of 64 * consumers rows
  CUtensorMap tma_k;  // boxes of kHopperBlockN rows
  CUtensorMap tma_v;
  CUtensorMap tma_o;  // boxes of 64 rows (one consumer warpgroup's)
  FwdKernelArgs base;
  int batch;
  bool tma_store;     // else every output row is written with plain stores
  int* tile_counter;  // zeroed before the launch: dynamic tile hand-out; nullptr: static rounds
};

// Device workspace the Hopper kernel uses when given (the tile counter; 256 keeps the alignment).
inline constexpr size_t kHopperFwdWorkspaceBytes = 256;

// Schedules of the consumer warpgroups (see flash_fwd_hopper_kernel.cuh). kDefault is the
// fastest measured; the others stay selectable (ATTND_HOPPER_SCHEDULE=0..3) for measurements.
enum class HopperSchedule : int {
  kSerial = 0,        // S = QK^T, softmax, O += PV, one after the other in each warpgroup
  kPingPong = 1,      // the two consumer warpgroups take turns on the tensor cores
  kOverlap = 2,       // softmax of tile n runs while O += P V of tile n+1 is in flight
  kPingPongOverlap = 3,
};

// True when the Hopper kernel handles this problem (BF16/FP16, head dim 64 or 128, positive
// softmax scale); the device check is the caller's.
bool HopperFwdSupports(const FlashFwdParams& p);

// Runs the Hopper kernel (the problem must pass HopperFwdSupports and FlashFwdCheck). `workspace`:
// kHopperFwdWorkspaceBytes of device memory for the dynamic tile hand-out, or nullptr (static).
cudaError_t RunFlashFwdHopper(const FlashFwdParams& p, const FwdKernelArgs& args, void* workspace,
                              cudaStream_t stream);

}  // namespace attnd::kernels::detail
