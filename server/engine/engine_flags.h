// The daemon's engine, built from its flags: one backend per device (--devices; one for the CPU),
// each behind its own DynamicBatcher (batcher_flags.h), a DeviceRouter over them when there are
// several, and the StageTimingBackend on top. Flags:
//   --devices, --streams, --gpu_memory_bytes, --gpu_memory_fraction, --pinned_memory_bytes
// Kept apart from the engine so that tests and embedders link no flags.
#pragma once

#include <memory>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend.h"
#include "server/backends/backend_factory.h"

namespace attnd {

// "all" -> {} (every visible device); "0,2" -> {0, 2}. INVALID_ARGUMENT naming --devices.
absl::StatusOr<std::vector<int>> ParseDeviceList(absl::string_view text);

// `backend`: auto, cpu or cuda (--backend). `options` carries the flags main() already read
// (--threads, --deterministic); this adds the engine's. Errors name the flag.
absl::StatusOr<std::unique_ptr<Backend>> CreateEngineFromFlags(std::string_view backend, BackendOptions options);

}  // namespace attnd
