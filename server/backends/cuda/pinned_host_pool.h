// PinnedHostPool: page-locked host memory, reused across calls, for H2D/D2H staging and for the
// HostBuffers the CUDA backend lends (Backend::AllocateHostBuffer). Copies from page-locked memory
// run by DMA at PCIe speed and asynchronously; from pageable memory the driver stages them itself,
// synchronously and slower. Pinning costs about a millisecond per MiB, so blocks are cached
// (engine/block_cache.h) and the pool pins only while it warms up.
//
// Portable memory (cudaHostAllocPortable): one pool serves every GPU of the process. A block goes
// back to the cache when its user is done with it, so a user must have waited for the copies that
// read or write it (the CUDA backend synchronizes before it returns a call's staging).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "server/backend.h"
#include "server/backend_stats.h"
#include "server/engine/block_cache.h"

namespace attnd {

class PinnedHostPool : public std::enable_shared_from_this<PinnedHostPool> {
 public:
  // A page-locked block for one call; back to the pool when destroyed.
  class Block {
   public:
    Block() = default;
    Block(Block&& o) noexcept { *this = std::move(o); }
    Block& operator=(Block&& o) noexcept;
    ~Block() { Reset(); }
    void* get() const { return block_ ? block_->ptr : nullptr; }
    void Reset();

   private:
    friend class PinnedHostPool;
    PinnedHostPool* pool_ = nullptr;
    engine::CachedBlock* block_ = nullptr;
  };

  // `cap_bytes`: most page-locked memory the pool may hold.
  static std::shared_ptr<PinnedHostPool> Create(int64_t cap_bytes);
  ~PinnedHostPool();

  // RESOURCE_EXHAUSTED naming `purpose` when the cap (or the driver) has no room.
  absl::StatusOr<Block> Allocate(size_t bytes, absl::string_view purpose);
  // A HostBuffer that keeps the pool alive and returns its block when the last copy goes.
  absl::StatusOr<HostBuffer> Lend(size_t bytes);
  // Whether [p, p + bytes) is page-locked memory of this pool (then copies need no staging).
  bool Contains(const void* p, size_t bytes) const { return cache_.Contains(p, bytes); }

  MemoryPoolStats Stats() const { return cache_.Stats(); }

  static constexpr size_t kMinBlockBytes = 64 << 10;

 private:
  class CudaSource;
  explicit PinnedHostPool(int64_t cap_bytes);

  std::unique_ptr<CudaSource> source_;
  engine::BlockCache cache_;
};

}  // namespace attnd
