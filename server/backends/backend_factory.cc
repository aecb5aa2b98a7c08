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

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view name, const BackendOptions& options) {
  if (name == "auto") name = GpuVisible() ? "cuda" : "cpu";
  if (name == "cpu") return CreateCpuBackend(options.cpu_threads);
  if (name == "cuda") {
#ifdef ATTND_HAVE_CUDA
    if (!GpuVisible()) return absl::FailedPreconditionError("backend 'cuda': no CUDA device is visible");
    CudaBackendOptions cuda;
    cuda.device = options.cuda_device;
    cuda.deterministic = options.deterministic;
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
