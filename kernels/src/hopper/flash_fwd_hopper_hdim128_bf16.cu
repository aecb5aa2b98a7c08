// Instantiations of the Hopper forward kernel: head_dim 128, bf16 (one file per head dim and type
// so that they compile in parallel).
#include "hopper/flash_fwd_hopper_launch.cuh"

namespace attnd::kernels::detail::hopper {

template cudaError_t run_flash_fwd_hopper<__nv_bfloat16, 128>(const HopperFwdArgs&, int, bool, HopperSchedule, int,
                                                                       cudaStream_t);

}  // namespace attnd::kernels::detail::hopper
