// CUDA IPC and host pinning for RegionRegistry. The daemon opens a client's cudaIpcMemHandle once,
// when the client registers it (RegisterCudaMemory), and closes it when the region is released:
// unregistered, or its session closed, and no call using it any more. Spans of the region are
// then device pointers that a backend taking device buffers reads and writes in place.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/transport/cuda_region_hooks.h"

namespace attnd {
namespace {

std::string CudaError(cudaError_t err) { return cudaGetErrorString(err); }

// The allocation containing `p`: [*base, *base + *size). The driver entry point is found through
// the runtime, so the daemon does not link libcuda (it loads only where a driver is installed).
bool AllocationRange(void* p, CUdeviceptr* base, size_t* size) {
  static PFN_cuMemGetAddressRange_v3020 get_range = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 3020, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<PFN_cuMemGetAddressRange_v3020>(nullptr);
    }
    return reinterpret_cast<PFN_cuMemGetAddressRange_v3020>(fn);
  }();
  return get_range != nullptr && get_range(base, size, reinterpret_cast<CUdeviceptr>(p)) == CUDA_SUCCESS;
}

class PinnedRange {
 public:
  explicit PinnedRange(void* data) : data_(data) {}
  ~PinnedRange() { cudaHostUnregister(data_); }

 private:
  void* data_;
};

class CudaHostPinner final : public HostMemoryPinner {
 public:
  absl::StatusOr<std::shared_ptr<void>> Pin(void* data, size_t size) override {
    // Portable: DMA-able from every device's context, not only the current one.
    if (cudaError_t err = cudaHostRegister(data, size, cudaHostRegisterPortable); err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of this thread
      return absl::FailedPreconditionError(absl::StrCat("cudaHostRegister of ", size, " bytes: ", CudaError(err)));
    }
    return std::shared_ptr<void>(std::make_shared<PinnedRange>(data));
  }
};

// A client's device allocation, opened from its IPC handle.
class ImportedDeviceMemory final : public RegionMemory {
 public:
  ImportedDeviceMemory(void* base, size_t size, int device) : base_(base), size_(size), device_(device) {}
  ~ImportedDeviceMemory() override {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device_);
    cudaIpcCloseMemHandle(base_);
    cudaSetDevice(previous);
  }
  void* base() const override { return base_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return MemoryKind::kDevice; }
  int device() const override { return device_; }

 private:
  void* base_;
  size_t size_;
  int device_;
};

class CudaIpcImporter final : public DeviceMemoryImporter {
 public:
  absl::StatusOr<std::unique_ptr<RegionMemory>> Import(absl::string_view ipc_handle, size_t size, int device) override {
    cudaIpcMemHandle_t handle;
    if (ipc_handle.size() != sizeof(handle)) {
      return absl::InvalidArgumentError(absl::StrCat("ipc_handle: ", ipc_handle.size(), " bytes, a cudaIpcMemHandle_t "
                                                     "has ", sizeof(handle)));
    }
    std::memcpy(&handle, ipc_handle.data(), sizeof(handle));
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || device < 0 || device >= devices) {
      return absl::InvalidArgumentError(absl::StrCat("device: ", device, " is not one of the daemon's ", devices,
                                                     " GPUs"));
    }
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(device);
    void* base = nullptr;
    const cudaError_t err = cudaIpcOpenMemHandle(&base, handle, cudaIpcMemLazyEnablePeerAccess);
    if (err != cudaSuccess) {
      cudaGetLastError();
      cudaSetDevice(previous);
      return absl::FailedPreconditionError(absl::StrCat("ipc_handle: cudaIpcOpenMemHandle failed: ", CudaError(err),
                                                        " (the exporting process must be alive, on this host, and "
                                                        "not the daemon itself)"));
    }
    // The allocation's real extent, so that no span can reach past it.
    CUdeviceptr range_base = 0;
    size_t range_size = 0;
    const bool ranged = AllocationRange(base, &range_base, &range_size);
    const size_t available = ranged ? range_size - (reinterpret_cast<CUdeviceptr>(base) - range_base) : 0;
    cudaSetDevice(previous);
    auto memory = std::make_unique<ImportedDeviceMemory>(base, size, device);
    if (!ranged || size > available) {
      return absl::InvalidArgumentError(absl::StrCat("size: ", size, " bytes exceed the exported allocation's ",
                                                     available, " bytes"));  // `memory` closes the handle
    }
    return std::unique_ptr<RegionMemory>(std::move(memory));
  }
};

}  // namespace

CudaRegionHooks MakeCudaRegionHooks() {
  CudaRegionHooks hooks;
  hooks.pinner = std::make_unique<CudaHostPinner>();
  hooks.importer = std::make_unique<CudaIpcImporter>();
  return hooks;
}

}  // namespace attnd
