// The CUDA side of regions: a HostMemoryPinner (cudaHostRegister) and a DeviceMemoryImporter
// (cudaIpcOpenMemHandle), both null in a build without CUDA. cuda_region_hooks.cc holds the CUDA
// implementation (compiled with ATTND_WITH_CUDA), no_cuda_region_hooks.cc the other.
#pragma once

#include <memory>

#include "server/transport/region_memory.h"

namespace attnd {

struct CudaRegionHooks {
  std::unique_ptr<HostMemoryPinner> pinner;
  std::unique_ptr<DeviceMemoryImporter> importer;
};

CudaRegionHooks MakeCudaRegionHooks();

}  // namespace attnd
