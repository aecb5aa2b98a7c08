#include "client/attnd/cuda_memory_region.h"

#ifdef ATTND_CLIENT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "absl/strings/str_cat.h"

namespace attnd {

#ifdef ATTND_CLIENT_WITH_CUDA

namespace {
absl::Status Cuda(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}
}  // namespace

absl::StatusOr<std::unique_ptr<CudaMemoryRegion>> CudaMemoryRegion::Create(Client& client, RegionSession& session,
                                                                           size_t size, int device,
                                                                           const std::string& label) {
  if (absl::Status s = Cuda(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  void* data = nullptr;
  if (absl::Status s = Cuda(cudaMalloc(&data, size), "cudaMalloc"); !s.ok()) return s;
  cudaIpcMemHandle_t handle;
  if (absl::Status s = Cuda(cudaIpcGetMemHandle(&handle, data), "cudaIpcGetMemHandle"); !s.ok()) {
    cudaFree(data);
    return s;
  }
  v1::RegisterCudaMemoryRequest request;
  request.set_session(session.token());
  request.set_ipc_handle(std::string(reinterpret_cast<const char*>(&handle), sizeof(handle)));
  request.set_size(size);
  request.set_device(device);
  request.set_label(label);
  absl::StatusOr<v1::RegionInfo> info = client.RegisterCudaMemory(request);
  if (!info.ok()) {
    cudaFree(data);
    return info.status();
  }
  return std::unique_ptr<CudaMemoryRegion>(new CudaMemoryRegion(data, size, device, *std::move(info)));
}

CudaMemoryRegion::~CudaMemoryRegion() {
  cudaSetDevice(device_);
  cudaFree(data_);
}

absl::Status CudaMemoryRegion::Write(uint64_t offset, const void* host, size_t bytes) {
  cudaSetDevice(device_);
  return Cuda(cudaMemcpy(static_cast<char*>(data_) + offset, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}

absl::Status CudaMemoryRegion::Read(uint64_t offset, void* host, size_t bytes) const {
  cudaSetDevice(device_);
  return Cuda(cudaMemcpy(host, static_cast<const char*>(data_) + offset, bytes, cudaMemcpyDeviceToHost),
              "cudaMemcpy D2H");
}

#else  // no CUDA in this build

absl::StatusOr<std::unique_ptr<CudaMemoryRegion>> CudaMemoryRegion::Create(Client&, RegionSession&, size_t, int,
                                                                           const std::string&) {
  return absl::UnimplementedError("CUDA IPC regions need a CUDA build of the attnd client");
}
CudaMemoryRegion::~CudaMemoryRegion() = default;
absl::Status CudaMemoryRegion::Write(uint64_t, const void*, size_t) { return absl::UnimplementedError("no CUDA"); }
absl::Status CudaMemoryRegion::Read(uint64_t, void*, size_t) const { return absl::UnimplementedError("no CUDA"); }

#endif

}  // namespace attnd
