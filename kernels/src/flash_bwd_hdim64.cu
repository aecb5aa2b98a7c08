// Instantiations of the backward kernel for head_dim 64 (one file per head dim so they compile in
// parallel): BF16 and FP16 (the FP32 path runs the FP16 one).
#include "flash_bwd_launch.cuh"

namespace attnd::kernels::bwd {

template cudaError_t run_flash_bwd<__nv_bfloat16, 64>(const BwdKernelArgs&, dim3, cudaStream_t);
template cudaError_t run_flash_bwd<__half, 64>(const BwdKernelArgs&, dim3, cudaStream_t);

}  // namespace attnd::kernels::bwd
