// Picks and builds the Backend the daemon serves with.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend.h"

namespace attnd {

struct BackendOptions {
  int cpu_threads = 0;          // <= 0: one per hardware thread
  int cuda_device = 0;
  bool deterministic = false;   // deterministic backward on every request
  // CUDA engine (see server/backends/cuda/cuda_backend.h). CreateBackends makes one backend per
  // device in cuda_devices (empty: every visible device).
  std::vector<int> cuda_devices;
  int cuda_streams = 2;
  int64_t gpu_memory_bytes = 0;         // device memory pool cap per GPU; <= 0: the fraction below
  double gpu_memory_fraction = 0.9;
  int64_t pinned_memory_bytes = int64_t{8} << 30;  // page-locked staging, shared by every GPU
};

// "cpu", "cuda", or "auto" (cuda when a GPU is visible, else cpu). Unknown names and "cuda"
// without a usable GPU are errors naming the backend.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view name, const BackendOptions& options);

// One backend per device: for "cuda" one per entry of options.cuda_devices (all visible GPUs
// when empty), sharing one pinned pool; for "cpu" a single one. `name` as for CreateBackend.
absl::StatusOr<std::vector<std::unique_ptr<Backend>>> CreateBackends(std::string_view name,
                                                                     const BackendOptions& options);

// Backends this build can create on this machine, best first.
std::vector<std::string> AvailableBackends();

}  // namespace attnd
