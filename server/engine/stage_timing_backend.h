// StageTimingBackend: the engine's outermost layer. Every call gets a CallTimings (the caller's,
// when it passes one, else a local one), the whole call inside the engine is timed, and each
// successful call's stages go into per-request histograms: queue, H2D, kernel, D2H, other (total
// minus the stages: packing, scatter, checks, pool) and total. CollectStats hands them out with
// whatever the layers below add (batchers, devices, pools).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/backend.h"
#include "server/backend_stats.h"
#include "server/engine/backend_decorator.h"

namespace attnd::engine {

class StageTimingBackend final : public BackendDecorator {
 public:
  explicit StageTimingBackend(std::unique_ptr<Backend> inner) : BackendDecorator(std::move(inner)) {}

  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;
  void CollectStats(BackendStats& stats) const override;

 private:
  void Record(const CallTimings& timings, double total_s);

  mutable absl::Mutex mu_;
  StageHistograms stages_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd::engine
