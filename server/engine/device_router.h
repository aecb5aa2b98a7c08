// DeviceRouter: a Backend over several per-device backends (one per GPU of --devices, each usually
// a BatchingBackend over a CudaBackend), sending each call to the least loaded one.
//
// Load is the estimated work a device has accepted and not finished: the FLOPs of its queued and
// running calls (4 * heads_q * head_dim * sum over sequences of seqlen_q * seqlen_k, 2.5x that
// for backward), so one long call weighs as much as the many short calls it equals. Ties (e.g.
// every device idle) go round robin. A call whose tensors are already on a device
// (TensorPlacement::kDevice) goes to that device, or fails with FAILED_PRECONDITION when this
// daemon does not serve it. Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/backend.h"

namespace attnd::engine {

// The work of one call, in FLOPs (at least 1e6, so that empty calls still count).
double EstimatedFlops(const AttentionShape& shape, bool backward);

class DeviceRouter final : public Backend {
 public:
  // `devices`: at least one; each backend's first DeviceDescription names its device.
  explicit DeviceRouter(std::vector<std::unique_ptr<Backend>> devices);

  std::string_view name() const override { return slots_.front().backend->name(); }
  std::vector<DeviceDescription> Devices() const override;
  std::vector<int> SupportedHeadDims() const override { return slots_.front().backend->SupportedHeadDims(); }
  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    return slots_.front().backend->CheckSupported(shape, dtype);
  }
  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;
  // From the first device: the pinned pool is shared by (and portable to) every GPU.
  absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) override {
    return slots_.front().backend->AllocateHostBuffer(bytes);
  }
  void CollectStats(BackendStats& stats) const override;

  // Estimated FLOPs each device has in hand now, in the order of `devices`.
  std::vector<double> Loads() const;

 private:
  struct Slot {
    std::unique_ptr<Backend> backend;
    int device = 0;
    double load = 0;
    int64_t routed = 0;
  };
  // Picks the slot for a call of `cost` and charges it; FAILED_PRECONDITION for a resident call
  // on a device not served here.
  absl::StatusOr<size_t> Pick(const TensorPlacement& placement, double cost);
  void Done(size_t slot, double cost);
  template <typename Args, typename Run>
  absl::Status Route(const Args& args, bool backward, Run run);

  std::vector<Slot> slots_;  // fixed after construction; load/routed under mu_
  mutable absl::Mutex mu_;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;  // where the round robin of ties starts
};

}  // namespace attnd::engine
