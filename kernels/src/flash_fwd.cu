// The public forward entry: checks, the FP32 path's preparation, and the one place that maps
// (device, element type, head dim) to a kernel: the Hopper kernel (hopper/) on sm_90 where it
// applies, else an mma.sync instantiation.
#include "attnd/kernels/flash_fwd.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/fast_math.cuh"
#include "flash_fwd_args.cuh"
#include "flash_fwd_fp32.cuh"
#if ATTND_HAVE_HOPPER_FWD
#include "hopper/flash_fwd_hopper.h"
#endif

namespace attnd::kernels {
namespace detail {

// Defined in flash_fwd_hdim*.cu.
template <typename T, typename OutT, int kHeadDim>
cudaError_t run_flash_fwd(const FwdKernelArgs& args, int batch, bool causal, cudaStream_t stream);

namespace {

template <typename T, typename OutT>
cudaError_t dispatch_head_dim(int head_dim, const FwdKernelArgs& args, int batch, bool causal, cudaStream_t stream) {
  switch (head_dim) {
    case 32: return run_flash_fwd<T, OutT, 32>(args, batch, causal, stream);
    case 64: return run_flash_fwd<T, OutT, 64>(args, batch, causal, stream);
    case 96: return run_flash_fwd<T, OutT, 96>(args, batch, causal, stream);
    case 128: return run_flash_fwd<T, OutT, 128>(args, batch, causal, stream);
    case 256: return run_flash_fwd<T, OutT, 256>(args, batch, causal, stream);
    default: return cudaErrorInvalidValue;
  }
}

FwdKernelArgs MakeArgs(const FlashFwdParams& p) {
  FwdKernelArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.lse = p.lse;
  a.cu_seqlens_q = p.cu_seqlens_q;
  a.cu_seqlens_k = p.cu_seqlens_k;
  a.fp32_amax = nullptr;
  a.q_row_stride = p.q_row_stride;
  a.q_head_stride = p.q_head_stride;
  a.k_row_stride = p.k_row_stride;
  a.k_head_stride = p.k_head_stride;
  a.v_row_stride = p.v_row_stride;
  a.v_head_stride = p.v_head_stride;
  a.out_row_stride = p.out_row_stride;
  a.out_head_stride = p.out_head_stride;
  a.heads_q = p.heads_q;
  a.heads_per_kv = p.heads_q / p.heads_kv;
  a.max_seqlen_q = p.max_seqlen_q;
  a.total_q = p.total_q;
  a.lse_packed = p.lse_packed;
  a.scale_log2 = std::fabs(p.softmax_scale) * kLog2e;
  a.negate_q = p.softmax_scale < 0.f;
  return a;
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

#if ATTND_HAVE_HOPPER_FWD
// True when the current device is sm_90 (the Hopper kernel is built for sm_90a only). Cached per
// device: the attribute query is cheap, but FlashFwd runs per request.
bool CurrentDeviceIsSm90() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};  // 0 unknown, 1 yes, 2 no
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    cudaGetLastError();
    return false;
  }
  int state = cached[device].load(std::memory_order_relaxed);
  if (state == 0) {
    int major = 0, minor = 0;
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess;
    if (!ok) cudaGetLastError();
    state = ok && major == 9 && minor == 0 ? 1 : 2;
    cached[device].store(state, std::memory_order_relaxed);
  }
  return state == 1;
}
#endif

bool HopperKernelRuns(const FlashFwdParams& p) {
#if ATTND_HAVE_HOPPER_FWD
  return HopperFwdSupports(p) && CurrentDeviceIsSm90();
#else
  (void)p;
  return false;
#endif
}

bool MmaSyncForcedByEnvironment() {
  static const bool forced = [] {
    const char* s = std::getenv("ATTND_FWD_KERNEL");
    return s != nullptr && std::strcmp(s, "mma_sync") == 0;
  }();
  return forced;
}

}  // namespace
}  // namespace detail

void SetContiguousStrides(FlashFwdParams& p) {
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.out_head_stride = p.head_dim;
  p.q_row_stride = p.out_row_stride = int64_t{p.heads_q} * p.head_dim;
  p.k_row_stride = p.v_row_stride = int64_t{p.heads_kv} * p.head_dim;
}

cudaError_t FlashFwdCheck(const FlashFwdParams& p) {
  using detail::Aligned16;
  const bool dim_ok = p.head_dim == 32 || p.head_dim == 64 || p.head_dim == 96 || p.head_dim == 128 || p.head_dim == 256;
  if (!dim_ok || p.batch < 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0) return cudaErrorInvalidValue;
  if (p.max_seqlen_q < 0 || p.max_seqlen_k < 0 || p.total_q < 0 || p.total_k < 0) return cudaErrorInvalidValue;
  // The 1-D grid: (batch * heads) x query blocks of 64 rows or more.
  if (int64_t{p.batch} * p.heads_q * (p.max_seqlen_q / 64 + 1) > INT32_MAX) return cudaErrorInvalidValue;
  if (!std::isfinite(p.softmax_scale) || p.softmax_scale == 0.f) return cudaErrorInvalidValue;
  // 16-byte vectors everywhere: 8 elements of 16 bits, 4 of FP32.
  const int64_t vec = p.dtype == ElementType::kFP32 ? 4 : 8;
  for (int64_t s : {p.q_row_stride, p.q_head_stride, p.k_row_stride, p.k_head_stride, p.v_row_stride,
                    p.v_head_stride, p.out_row_stride, p.out_head_stride})
    if (s % vec != 0) return cudaErrorInvalidValue;
  if (p.batch > 0 && p.total_q > 0) {
    if (!Aligned16(p.q) || !Aligned16(p.k) || !Aligned16(p.v) || !Aligned16(p.out) || p.lse == nullptr)
      return cudaErrorInvalidValue;
    if (p.cu_seqlens_q == nullptr || p.cu_seqlens_k == nullptr) return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

FwdKernel FlashFwdSelectKernel(const FlashFwdParams& p) {
  switch (p.kernel) {
    case FwdKernel::kMmaSync: return FwdKernel::kMmaSync;
    case FwdKernel::kHopper: return detail::HopperKernelRuns(p) ? FwdKernel::kHopper : FwdKernel::kAuto;
    case FwdKernel::kAuto: break;
  }
  return !detail::MmaSyncForcedByEnvironment() && detail::HopperKernelRuns(p) ? FwdKernel::kHopper : FwdKernel::kMmaSync;
}

size_t FlashFwdWorkspaceBytes(const FlashFwdParams& p) {
#if ATTND_HAVE_HOPPER_FWD
  if (FlashFwdSelectKernel(p) == FwdKernel::kHopper) return detail::kHopperFwdWorkspaceBytes;
#endif
  if (p.dtype != ElementType::kFP32) return 0;
  using detail::AlignUp;
  const size_t q = size_t(p.total_q) * p.heads_q * p.head_dim * sizeof(__half);
  const size_t kv = size_t(p.total_k) * p.heads_kv * p.head_dim * sizeof(__half);
  return AlignUp(3 * sizeof(float)) + AlignUp(q) + 2 * AlignUp(kv);
}

cudaError_t FlashFwd(const FlashFwdParams& p, void* workspace, cudaStream_t stream) {
  cudaError_t err = FlashFwdCheck(p);
  if (err != cudaSuccess) return err;
  if (p.batch == 0 || p.total_q == 0) return cudaSuccess;
  detail::FwdKernelArgs args = detail::MakeArgs(p);
  const FwdKernel kernel = FlashFwdSelectKernel(p);
  if (kernel == FwdKernel::kAuto) return cudaErrorNotSupported;  // kHopper forced, cannot run
#if ATTND_HAVE_HOPPER_FWD
  if (kernel == FwdKernel::kHopper) return detail::RunFlashFwdHopper(p, args, workspace, stream);
#endif
  switch (p.dtype) {
    case ElementType::kBF16:
      return detail::dispatch_head_dim<__nv_bfloat16, __nv_bfloat16>(p.head_dim, args, p.batch, p.causal, stream);
    case ElementType::kFP16:
      return detail::dispatch_head_dim<__half, __half>(p.head_dim, args, p.batch, p.causal, stream);
    case ElementType::kFP32: break;
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  using detail::AlignUp;
  // FP32: scaled FP16 copies of q, k, v in the workspace (contiguous), FP16 kernel, FP32 out.
  auto* base = static_cast<uint8_t*>(workspace);
  float* amax = reinterpret_cast<float*>(base);
  __half* q16 = reinterpret_cast<__half*>(base + AlignUp(3 * sizeof(float)));
  const size_t q_bytes = AlignUp(size_t(p.total_q) * p.heads_q * p.head_dim * sizeof(__half));
  const size_t kv_bytes = AlignUp(size_t(p.total_k) * p.heads_kv * p.head_dim * sizeof(__half));
  __half* k16 = reinterpret_cast<__half*>(reinterpret_cast<uint8_t*>(q16) + q_bytes);
  __half* v16 = reinterpret_cast<__half*>(reinterpret_cast<uint8_t*>(k16) + kv_bytes);
  const int64_t total_k = p.total_k;
  detail::Fp32ToFp16Job job{};
  job.tensor[0] = {static_cast<const float*>(p.q), q16, p.total_q, p.heads_q, p.q_row_stride, p.q_head_stride};
  job.tensor[1] = {static_cast<const float*>(p.k), k16, total_k, p.heads_kv, p.k_row_stride, p.k_head_stride};
  job.tensor[2] = {static_cast<const float*>(p.v), v16, total_k, p.heads_kv, p.v_row_stride, p.v_head_stride};
  job.head_dim = p.head_dim;
  job.amax = amax;
  if ((err = detail::ConvertFp32ToFp16(job, stream)) != cudaSuccess) return err;
  args.q = q16;
  args.k = k16;
  args.v = v16;
  args.q_head_stride = args.k_head_stride = args.v_head_stride = p.head_dim;
  args.q_row_stride = int64_t{p.heads_q} * p.head_dim;
  args.k_row_stride = args.v_row_stride = int64_t{p.heads_kv} * p.head_dim;
  args.fp32_amax = amax;
  return detail::dispatch_head_dim<__half, float>(p.head_dim, args, p.batch, p.causal, stream);
}

}  // namespace attnd::kernels
