// BackendDecorator: a Backend that adds something around another one (a batch queue, stage
// timings) and passes the rest through unchanged: name, devices, supported shapes, host buffers,
// statistics, and by default the calls themselves.
#pragma once

#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "server/backend.h"

namespace attnd::engine {

class BackendDecorator : public Backend {
 public:
  explicit BackendDecorator(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  std::string_view name() const override { return inner_->name(); }
  std::vector<DeviceDescription> Devices() const override { return inner_->Devices(); }
  std::vector<int> SupportedHeadDims() const override { return inner_->SupportedHeadDims(); }
  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    return inner_->CheckSupported(shape, dtype);
  }
  absl::Status Forward(const ForwardArgs& args) override { return inner_->Forward(args); }
  absl::Status Backward(const BackwardArgs& args) override { return inner_->Backward(args); }
  absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) override { return inner_->AllocateHostBuffer(bytes); }
  void CollectStats(BackendStats& stats) const override { inner_->CollectStats(stats); }

  Backend* inner() const { return inner_.get(); }

 protected:
  std::unique_ptr<Backend> inner_;
};

}  // namespace attnd::engine
