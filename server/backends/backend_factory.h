// Picks and builds the Backend the daemon serves with.
#pragma once

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
};

// "cpu", "cuda", or "auto" (cuda when a GPU is visible, else cpu). Unknown names and "cuda"
// without a usable GPU are errors naming the backend.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view name, const BackendOptions& options);

// Backends this build can create on this machine, best first.
std::vector<std::string> AvailableBackends();

}  // namespace attnd
