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

namespace attnd::engine {

class StageTimingBackend final : public Backend {
 public:
  explicit StageTimingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  std::string_view name() const override { return inner_->name(); }
  std::vector<DeviceDescription> Devices() const override { return inner_->Devices(); }
  std::vector<int> SupportedHeadDims() const override { return inner_->SupportedHeadDims(); }
  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    return inner_->CheckSupported(shape, dtype);
  }
  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;
  absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) override { return inner_->AllocateHostBuffer(bytes); }
  void CollectStats(BackendStats& stats) const override;

  Backend* inner() const { return inner_.get(); }

 private:
  void Record(const CallTimings& timings, double total_s);

  std::unique_ptr<Backend> inner_;
  mutable absl::Mutex mu_;
  StageHistograms stages_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd::engine
