#include "server/transport/cuda_region_hooks.h"

namespace attnd {

CudaRegionHooks MakeCudaRegionHooks() { return {}; }

}  // namespace attnd
