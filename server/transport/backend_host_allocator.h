// BackendHostAllocator: a TensorAllocator that lends the backend's own host memory
// (Backend::AllocateHostBuffer): page-locked for the CUDA backend. Decoding a request's tensors
// straight into it (the one copy a received tensor costs) saves the backend its staging copy: its
// copy engine reads the buffer by DMA, and writes results back into output buffers the same way.
#pragma once

#include <atomic>

#include "server/backend.h"
#include "server/transport/tensor_buffer.h"

namespace attnd {

class BackendHostAllocator final : public TensorAllocator {
 public:
  explicit BackendHostAllocator(Backend* backend) : backend_(backend) {}  // `backend` outlives it

  absl::StatusOr<TensorBufferPtr> Allocate(size_t bytes, absl::string_view what) override;
  absl::string_view name() const override { return "backend"; }
  int64_t bytes_in_use() const override { return in_use_.load(); }

 private:
  Backend* const backend_;
  std::atomic<int64_t> in_use_{0};
};

}  // namespace attnd
