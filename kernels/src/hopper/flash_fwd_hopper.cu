// Host entry of the Hopper forward kernel: support check, tensor maps, schedule, and the
// (element type, head dim) switch to the instantiations in flash_fwd_hopper_hdim*.cu.
#include "hopper/flash_fwd_hopper.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>

#include "hopper/tensor_map.h"

namespace attnd::kernels::detail {
namespace hopper {

// Defined in flash_fwd_hopper_hdim*.cu.
template <typename T, int kHeadDim>
cudaError_t run_flash_fwd_hopper(const HopperFwdArgs& args, int batch, bool causal, HopperSchedule schedule,
                                 cudaStream_t stream);

namespace {

// ATTND_HOPPER_SCHEDULE=0..3 overrides the default schedule (for measurements; read at every call
// so that a benchmark can switch between launches).
HopperSchedule ScheduleFromEnvironment() {
  const char* s = std::getenv("ATTND_HOPPER_SCHEDULE");
  if (s != nullptr && s[0] >= '0' && s[0] <= '3' && s[1] == '\0') return static_cast<HopperSchedule>(s[0] - '0');
  return HopperSchedule::kPingPongOverlap;
}

template <typename T>
cudaError_t DispatchHeadDim(const FlashFwdParams& p, const HopperFwdArgs& args, cudaStream_t stream) {
  const HopperSchedule schedule = ScheduleFromEnvironment();
  switch (p.head_dim) {
    case 64: return run_flash_fwd_hopper<T, 64>(args, p.batch, p.causal, schedule, stream);
    case 128: return run_flash_fwd_hopper<T, 128>(args, p.batch, p.causal, schedule, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace
}  // namespace hopper

bool HopperFwdSupports(const FlashFwdParams& p) {
  return (p.dtype == ElementType::kBF16 || p.dtype == ElementType::kFP16) && (p.head_dim == 64 || p.head_dim == 128) &&
         p.softmax_scale > 0.f;
}

cudaError_t RunFlashFwdHopper(const FlashFwdParams& p, const FwdKernelArgs& base, cudaStream_t stream) {
  using namespace hopper;
  if (!HopperFwdSupports(p)) return cudaErrorInvalidValue;
  HopperFwdArgs args{};
  args.base = base;
  const bool bf16 = p.dtype == ElementType::kBF16;
  const PackedTensor q{p.q, bf16, p.total_q, p.heads_q, p.head_dim, p.q_row_stride, p.q_head_stride};
  const PackedTensor k{p.k, bf16, p.total_k, p.heads_kv, p.head_dim, p.k_row_stride, p.k_head_stride};
  const PackedTensor v{p.v, bf16, p.total_k, p.heads_kv, p.head_dim, p.v_row_stride, p.v_head_stride};
  cudaError_t err;
  if ((err = EncodeRowBoxMap(q, kHopperBlockM, &args.tma_q)) != cudaSuccess) return err;
  if ((err = EncodeRowBoxMap(k, kHopperBlockN, &args.tma_k)) != cudaSuccess) return err;
  if ((err = EncodeRowBoxMap(v, kHopperBlockN, &args.tma_v)) != cudaSuccess) return err;
  return bf16 ? DispatchHeadDim<__nv_bfloat16>(p, args, stream) : DispatchHeadDim<__half>(p, args, stream);
}

}  // namespace attnd::kernels::detail
