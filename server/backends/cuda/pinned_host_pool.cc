#include "server/backends/cuda/pinned_host_pool.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "server/backends/cuda/cuda_status.h"

namespace attnd {

class PinnedHostPool::CudaSource final : public engine::BlockSource {
 public:
  absl::Status Allocate(engine::CachedBlock& block) override {
    void* ptr = nullptr;
    ATTND_RETURN_IF_CUDA(cudaHostAlloc(&ptr, block.bytes, cudaHostAllocPortable), "cudaHostAlloc");
    block.ptr = ptr;
    return absl::OkStatus();
  }
  void Release(engine::CachedBlock& block) override { cudaFreeHost(block.ptr); }
};

std::shared_ptr<PinnedHostPool> PinnedHostPool::Create(int64_t cap_bytes) {
  return std::shared_ptr<PinnedHostPool>(new PinnedHostPool(cap_bytes));
}

PinnedHostPool::PinnedHostPool(int64_t cap_bytes)
    : source_(std::make_unique<CudaSource>()),
      cache_(source_.get(), cap_bytes, kMinBlockBytes, "pinned host memory") {}

PinnedHostPool::~PinnedHostPool() = default;

absl::StatusOr<PinnedHostPool::Block> PinnedHostPool::Allocate(size_t bytes, absl::string_view purpose) {
  absl::StatusOr<engine::CachedBlock*> block = cache_.Allocate(bytes, 0, purpose);
  if (!block.ok()) return block.status();
  Block b;
  b.pool_ = this;
  b.block_ = *block;
  return b;
}

absl::StatusOr<HostBuffer> PinnedHostPool::Lend(size_t bytes) {
  absl::StatusOr<Block> block = Allocate(bytes, "a host buffer for a call's tensors");
  if (!block.ok()) return block.status();
  void* data = block->get();
  // The deleter owns the block and a reference to the pool, so the pool outlives every buffer.
  auto owner = std::make_shared<std::pair<std::shared_ptr<PinnedHostPool>, Block>>(shared_from_this(),
                                                                                  *std::move(block));
  return HostBuffer{data, bytes, std::shared_ptr<void>(owner, data)};
}

PinnedHostPool::Block& PinnedHostPool::Block::operator=(Block&& o) noexcept {
  if (this != &o) {
    Reset();
    pool_ = std::exchange(o.pool_, nullptr);
    block_ = std::exchange(o.block_, nullptr);
  }
  return *this;
}

void PinnedHostPool::Block::Reset() {
  if (block_ != nullptr) pool_->cache_.Free(block_, 0);
  block_ = nullptr;
  pool_ = nullptr;
}

}  // namespace attnd
