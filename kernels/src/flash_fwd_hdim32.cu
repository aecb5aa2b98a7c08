// Instantiations of the forward kernel for head_dim 32 (one file per head dim so they compile in
// parallel): BF16, FP16, and FP16 in / FP32 out for the FP32 path.
#include "flash_fwd_launch.cuh"

namespace attnd::kernels::detail {

template cudaError_t run_flash_fwd<__nv_bfloat16, __nv_bfloat16, 32>(const FwdKernelArgs&, int, bool, cudaStream_t);
template cudaError_t run_flash_fwd<__half, __half, 32>(const FwdKernelArgs&, int, bool, cudaStream_t);
template cudaError_t run_flash_fwd<__half, float, 32>(const FwdKernelArgs&, int, bool, cudaStream_t);

}  // namespace attnd::kernels::detail
