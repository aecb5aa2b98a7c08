// Backend: the narrow interface under the gRPC front end (and, later, the batcher). A backend
// computes attention on host buffers that the caller has already validated; it knows nothing of
// gRPC or protobuf. Implementations are thread-safe: the daemon calls them from many threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/attention_problem.h"

namespace attnd {

struct DeviceDescription {
  int index = 0;
  std::string name;
  int64_t total_memory_bytes = 0;
  int multiprocessors = 0;
  std::string compute_capability;  // e.g. "9.0"
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;  // "cpu", "cuda"
  virtual std::vector<DeviceDescription> Devices() const { return {}; }
  // Head dims this backend runs; empty means every head_dim from 1 to kMaxHeadDim.
  virtual std::vector<int> SupportedHeadDims() const { return {}; }

  // INVALID_ARGUMENT naming the field when this backend cannot run a shape the protocol allows
  // (e.g. a head_dim it has no kernel for). Called by the front end before any work.
  virtual absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const = 0;

  virtual absl::Status Forward(const ForwardArgs& args) = 0;
  virtual absl::Status Backward(const BackwardArgs& args) = 0;
};

inline constexpr int kMaxHeadDim = 256;

}  // namespace attnd
