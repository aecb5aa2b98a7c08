#include "server/engine/engine_flags.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/engine/batcher_flags.h"
#include "server/engine/device_router.h"
#include "server/engine/stage_timing_backend.h"

ABSL_FLAG(std::string, devices, "all",
          "GPUs to serve with --backend=cuda: all, or CUDA ordinals such as 0,2. Each GPU gets its own memory "
          "pool, streams and batcher; calls go to the least loaded");
ABSL_FLAG(int, streams, 2,
          "CUDA streams per GPU: calls (or packed batches) computed at once on it, so that the copies of one "
          "overlap the kernels of another");
ABSL_FLAG(int64_t, gpu_memory_bytes, 0,
          "cap on the device memory each GPU's pool may hold (in use + cached); a request that cannot fit gets "
          "RESOURCE_EXHAUSTED. 0: --gpu_memory_fraction of the GPU's memory");
ABSL_FLAG(double, gpu_memory_fraction, 0.9, "the pool cap as a fraction of each GPU's memory when --gpu_memory_bytes=0");
ABSL_FLAG(int64_t, pinned_memory_bytes, int64_t{8} << 30,
          "cap on page-locked host memory for H2D/D2H staging, shared by every GPU; beyond it copies take the "
          "driver's slower pageable path");

namespace attnd {

absl::StatusOr<std::vector<int>> ParseDeviceList(absl::string_view text) {
  std::vector<int> devices;
  if (absl::StripAsciiWhitespace(text) == "all") return devices;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int device = -1;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &device) || device < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--devices: '", part, "' is not a CUDA device ordinal (use all, or a list such as 0,2)"));
    }
    if (std::find(devices.begin(), devices.end(), device) != devices.end()) {
      return absl::InvalidArgumentError(absl::StrCat("--devices names device ", device, " twice"));
    }
    devices.push_back(device);
  }
  return devices;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateEngineFromFlags(std::string_view backend, BackendOptions options) {
  absl::StatusOr<std::vector<int>> devices = ParseDeviceList(absl::GetFlag(FLAGS_devices));
  if (!devices.ok()) return devices.status();
  options.cuda_devices = *devices;
  options.cuda_streams = absl::GetFlag(FLAGS_streams);
  options.gpu_memory_bytes = absl::GetFlag(FLAGS_gpu_memory_bytes);
  options.gpu_memory_fraction = absl::GetFlag(FLAGS_gpu_memory_fraction);
  options.pinned_memory_bytes = absl::GetFlag(FLAGS_pinned_memory_bytes);
  if (options.cuda_streams < 1 || options.cuda_streams > 64) {
    return absl::InvalidArgumentError(absl::StrCat("--streams ", options.cuda_streams, " must be in 1..64"));
  }
  if (!(options.gpu_memory_fraction > 0 && options.gpu_memory_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_memory_fraction ", options.gpu_memory_fraction, " must be in (0, 1]"));
  }
  if (options.gpu_memory_bytes < 0 || options.pinned_memory_bytes < 0) {
    return absl::InvalidArgumentError("--gpu_memory_bytes and --pinned_memory_bytes must be >= 0");
  }

  absl::StatusOr<std::vector<std::unique_ptr<Backend>>> backends = CreateBackends(backend, options);
  if (!backends.ok()) return backends.status();
  std::vector<std::unique_ptr<Backend>> engines;
  for (std::unique_ptr<Backend>& b : *backends) {
    absl::StatusOr<std::unique_ptr<Backend>> batched = WrapWithBatcherFromFlags(std::move(b), options.deterministic);
    if (!batched.ok()) return batched.status();
    engines.push_back(*std::move(batched));
  }
  std::unique_ptr<Backend> top = engines.size() == 1 ? std::move(engines.front())
                                                     : std::make_unique<engine::DeviceRouter>(std::move(engines));
  return std::unique_ptr<Backend>(std::make_unique<engine::StageTimingBackend>(std::move(top)));
}

}  // namespace attnd
