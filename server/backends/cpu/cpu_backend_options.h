// Knobs of the CPU backend beyond its thread count, for tests and benchmarks that pin a code path
// (the daemon uses CreateCpuBackend from cpu_backend.h, which picks the defaults).
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "server/backend.h"
#include "server/backends/cpu/cpu_backward.h"
#include "server/backends/cpu/cpu_isa.h"

namespace attnd {

struct CpuBackendOptions {
  int threads = 0;                              // <= 0: one per hardware thread
  std::optional<cpu::CpuIsa> isa;               // unset: the best this CPU runs
  cpu::BackwardSchedule backward_schedule = cpu::BackwardSchedule::kAuto;
};

// FAILED_PRECONDITION when the requested instruction set is not available on this CPU/build.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackendWithOptions(const CpuBackendOptions& options);

}  // namespace attnd
