// Host entry of the Hopper forward kernel: support check, tensor maps, schedule, and the
// (element type, head dim) switch to the instantiations in flash_fwd_hopper_hdim*.cu.
#include "hopper/flash_fwd_hopper.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "hopper/tensor_map.h"

namespace attnd::kernels::detail {
namespace hopper {

// Defined in flash_fwd_hopper_hdim*.cu.
template <typename T, int kHeadDim>
cudaError_t run_flash_fwd_hopper(const HopperFwdArgs& args, int grid, bool causal, HopperSchedule schedule,
                                 int consumers, cudaStream_t stream);

namespace {

// Measurement knobs, read at every call so that a benchmark can switch between launches:
//   ATTND_HOPPER_SCHEDULE=0..3   the consumers' schedule (HopperSchedule; default the fastest)
//   ATTND_HOPPER_GRID=all        one CTA per work tile instead of a persistent grid of one per SM
//   ATTND_HOPPER_TMA_STORE=0     plain stores for every output row
//   ATTND_HOPPER_CONSUMERS=2|3   consumer warpgroups at d = 64 (default: ConsumerWarpgroups)
//   ATTND_HOPPER_SCHEDULER=static  static zigzag rounds even when a workspace is given
HopperSchedule ScheduleFromEnvironment() {
  const char* s = std::getenv("ATTND_HOPPER_SCHEDULE");
  if (s != nullptr && s[0] >= '0' && s[0] <= '3' && s[1] == '\0') return static_cast<HopperSchedule>(s[0] - '0');
  return HopperSchedule::kPingPongOverlap;
}

bool EnvironmentIs(const char* name, const char* value) {
  const char* s = std::getenv(name);
  return s != nullptr && std::strcmp(s, value) == 0;
}

cudaError_t MultiprocessorCount(int* count) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device);
}

// Consumer warpgroups (64 query rows each). d = 128: two (each needs ~190 of its 232 registers).
// d = 64: three (160 registers each) hide more of the softmax's latency, measured +15-30% at
// every length without a mask, and from 2048 up with the causal one; shorter causal sequences
// (few key tiles per work tile, and a 192-row tile's diagonal wastes more) run faster with two
// (bench/NOTES_HOPPER.md, step 4).
int ConsumerWarpgroups(const FlashFwdParams& p) {
  if (p.head_dim != 64) return 2;
  if (EnvironmentIs("ATTND_HOPPER_CONSUMERS", "2")) return 2;
  if (EnvironmentIs("ATTND_HOPPER_CONSUMERS", "3")) return 3;
  return p.causal && p.max_seqlen_q < 2048 ? 2 : 3;
}

template <typename T>
cudaError_t DispatchHeadDim(const FlashFwdParams& p, const HopperFwdArgs& args, int grid, int consumers,
                            cudaStream_t stream) {
  const HopperSchedule schedule = ScheduleFromEnvironment();
  switch (p.head_dim) {
    case 64: return run_flash_fwd_hopper<T, 64>(args, grid, p.causal, schedule, consumers, stream);
    case 128: return run_flash_fwd_hopper<T, 128>(args, grid, p.causal, schedule, consumers, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace hopper

bool HopperFwdSupports(const FlashFwdParams& p) {
  return (p.dtype == ElementType::kBF16 || p.dtype == ElementType::kFP16) && (p.head_dim == 64 || p.head_dim == 128) &&
         p.softmax_scale > 0.f;
}

cudaError_t RunFlashFwdHopper(const FlashFwdParams& p, const FwdKernelArgs& base, void* workspace,
                              cudaStream_t stream) {
  using namespace hopper;
  if (!HopperFwdSupports(p)) return cudaErrorInvalidValue;
  const int consumers = ConsumerWarpgroups(p);
  const int block_m = 64 * consumers;
  const int64_t m_blocks = (p.max_seqlen_q + block_m - 1) / block_m;
  const int64_t tiles = m_blocks * p.batch * p.heads_q;
  if (tiles == 0) return cudaSuccess;
  int sms = 0;
  cudaError_t err = MultiprocessorCount(&sms);
  if (err != cudaSuccess) return err;
  const int grid = static_cast<int>(EnvironmentIs("ATTND_HOPPER_GRID", "all") ? tiles : std::min<int64_t>(tiles, sms));

  HopperFwdArgs args{};
  args.base = base;
  args.batch = p.batch;
  args.tma_store = !EnvironmentIs("ATTND_HOPPER_TMA_STORE", "0");
  if (workspace != nullptr && !EnvironmentIs("ATTND_HOPPER_SCHEDULER", "static")) {
    args.tile_counter = static_cast<int*>(workspace);
    if ((err = cudaMemsetAsync(args.tile_counter, 0, sizeof(int), stream)) != cudaSuccess) return err;
  }
  const bool bf16 = p.dtype == ElementType::kBF16;
  const PackedTensor q{p.q, bf16, p.total_q, p.heads_q, p.head_dim, p.q_row_stride, p.q_head_stride};
  const PackedTensor k{p.k, bf16, p.total_k, p.heads_kv, p.head_dim, p.k_row_stride, p.k_head_stride};
  const PackedTensor v{p.v, bf16, p.total_k, p.heads_kv, p.head_dim, p.v_row_stride, p.v_head_stride};
  const PackedTensor o{p.out, bf16, p.total_q, p.heads_q, p.head_dim, p.out_row_stride, p.out_head_stride};
  if ((err = EncodeRowBoxMap(q, block_m, &args.tma_q)) != cudaSuccess) return err;
  if ((err = EncodeRowBoxMap(k, kHopperBlockN, &args.tma_k)) != cudaSuccess) return err;
  if ((err = EncodeRowBoxMap(v, kHopperBlockN, &args.tma_v)) != cudaSuccess) return err;
  if ((err = EncodeRowBoxMap(o, 64, &args.tma_o)) != cudaSuccess) return err;
  return bf16 ? DispatchHeadDim<__nv_bfloat16>(p, args, grid, consumers, stream)
              : DispatchHeadDim<__half>(p, args, grid, consumers, stream);
}

}  // namespace attnd::kernels::detail
