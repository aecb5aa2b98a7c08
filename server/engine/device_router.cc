#include "server/engine/device_router.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/backend_stats.h"

namespace attnd::engine {

double EstimatedFlops(const AttentionShape& s, bool backward) {
  double pairs = 0;
  for (int b = 0; b + 1 < static_cast<int>(s.cu_seqlens_q.size()) &&
                  b + 1 < static_cast<int>(s.cu_seqlens_k.size());
       ++b) {
    pairs += static_cast<double>(s.seqlen_q(b)) * s.seqlen_k(b);
  }
  const double flops = 4.0 * s.heads_q * s.head_dim * pairs * (backward ? 2.5 : 1.0);
  return std::max(flops, 1e6);
}

DeviceRouter::DeviceRouter(std::vector<std::unique_ptr<Backend>> devices) {
  for (auto& backend : devices) {
    Slot slot;
    const std::vector<DeviceDescription> d = backend->Devices();
    slot.device = d.empty() ? static_cast<int>(slots_.size()) : d.front().index;
    slot.backend = std::move(backend);
    slots_.push_back(std::move(slot));
  }
}

std::vector<DeviceDescription> DeviceRouter::Devices() const {
  std::vector<DeviceDescription> all;
  for (const Slot& s : slots_) {
    for (DeviceDescription& d : s.backend->Devices()) all.push_back(std::move(d));
  }
  return all;
}

absl::StatusOr<size_t> DeviceRouter::Pick(const TensorPlacement& placement, double cost) {
  absl::MutexLock lock(&mu_);
  size_t pick = slots_.size();
  if (placement.space == MemorySpace::kDevice) {
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].device == placement.device) pick = i;
    }
    if (pick == slots_.size()) {
      return absl::FailedPreconditionError(absl::StrCat("the call's tensors are on CUDA device ", placement.device,
                                                        ", which this daemon does not serve (--devices)"));
    }
  } else {
    for (size_t k = 0; k < slots_.size(); ++k) {
      const size_t i = (next_ + k) % slots_.size();
      if (pick == slots_.size() || slots_[i].load < slots_[pick].load) pick = i;
    }
    next_ = (pick + 1) % slots_.size();
  }
  slots_[pick].load += cost;
  ++slots_[pick].routed;
  return pick;
}

void DeviceRouter::Done(size_t slot, double cost) {
  absl::MutexLock lock(&mu_);
  slots_[slot].load = std::max(0.0, slots_[slot].load - cost);
}

template <typename Args, typename Run>
absl::Status DeviceRouter::Route(const Args& args, bool backward, Run run) {
  if (args.shape == nullptr) return absl::InvalidArgumentError("shape is missing");
  const double cost = EstimatedFlops(*args.shape, backward);
  absl::StatusOr<size_t> slot = Pick(args.placement, cost);
  if (!slot.ok()) return slot.status();
  absl::Status status = run(*slots_[*slot].backend);
  Done(*slot, cost);
  return status;
}

absl::Status DeviceRouter::Forward(const ForwardArgs& args) {
  return Route(args, false, [&](Backend& b) { return b.Forward(args); });
}

absl::Status DeviceRouter::Backward(const BackwardArgs& args) {
  return Route(args, true, [&](Backend& b) { return b.Backward(args); });
}

void DeviceRouter::CollectStats(BackendStats& stats) const {
  for (const Slot& s : slots_) {
    const size_t first = stats.devices.size();
    s.backend->CollectStats(stats);
    if (stats.devices.size() == first) {  // a backend with no device statistics of its own (CPU)
      DeviceStats d;
      d.device = s.device;
      const std::vector<DeviceDescription> described = s.backend->Devices();
      if (!described.empty()) d.name = described.front().name;
      stats.devices.push_back(std::move(d));
    }
    absl::MutexLock lock(&mu_);
    for (size_t i = first; i < stats.devices.size(); ++i) stats.devices[i].routed_requests = s.routed;
  }
}

std::vector<double> DeviceRouter::Loads() const {
  absl::MutexLock lock(&mu_);
  std::vector<double> loads;
  for (const Slot& s : slots_) loads.push_back(s.load);
  return loads;
}

}  // namespace attnd::engine
