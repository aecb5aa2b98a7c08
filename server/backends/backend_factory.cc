#include "server/backends/backend_factory.h"

#include "absl/strings/str_cat.h"
#include "server/backends/cpu/cpu_backend.h"
#ifdef ATTND_HAVE_CUDA
#include "server/backends/cuda/cuda_backend.h"
#endif

namespace attnd {
namespace {

bool GpuVisible() {
#ifdef ATTND_HAVE_CUDA
  return VisibleCudaDevices() > 0;
#else
  return false;
#endif
}

#ifdef ATTND_HAVE_CUDA
CudaBackendOptions ToCudaOptions(const BackendOptions& options) {
  CudaBackendOptions cuda;
  cuda.deterministic = options.deterministic;
  cuda.streams = options.cuda_streams;
  cuda.memory_cap_bytes = options.gpu_memory_bytes;
  cuda.memory_fraction = options.gpu_memory_fraction;
  cuda.pinned_cap_bytes = options.pinned_memory_bytes;
  return cuda;
}
#endif

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Backend>>> CreateBackends(std::string_view name,
                                                                     const BackendOptions& options) {
  if (name == "auto") name = GpuVisible() ? "cuda" : "cpu";
#ifdef ATTND_HAVE_CUDA
  if (name == "cuda" && GpuVisible()) {
    std::vector<int> devices = options.cuda_devices;
    if (devices.empty()) {
      for (int d = 0; d < VisibleCudaDevices(); ++d) devices.push_back(d);
    }
    return CreateCudaBackends(devices, ToCudaOptions(options));
  }
#endif
  absl::StatusOr<std::unique_ptr<Backend>> one = CreateBackend(name, options);
  if (!one.ok()) return one.status();
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(*std::move(one));
  return backends;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view name, const BackendOptions& options) {
  if (name == "auto") name = GpuVisible() ? "cuda" : "cpu";
  if (name == "cpu") return CreateCpuBackend(options.cpu_threads);
  if (name == "cuda") {
#ifdef ATTND_HAVE_CUDA
    if (!GpuVisible()) return absl::FailedPreconditionError("backend 'cuda': no CUDA device is visible");
    CudaBackendOptions cuda = ToCudaOptions(options);
    cuda.device = options.cuda_device;
    return CreateCudaBackend(cuda);
#else
    return absl::FailedPreconditionError("backend 'cuda': this build has no CUDA support");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("backend '", std::string(name), "' is unknown (auto, cpu, cuda)"));
}

std::vector<std::string> AvailableBackends() {
  std::vector<std::string> names;
  if (GpuVisible()) names.push_back("cuda");
  names.push_back("cpu");
  return names;
}

}  // namespace attnd
