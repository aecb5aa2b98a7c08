// DeviceMemoryPool: one GPU's memory for the calls computed on it, stream-ordered and capped.
//
// A caching allocator (engine/block_cache.h: size classes, hard cap, RESOURCE_EXHAUSTED naming
// the request that does not fit) over cudaMalloc. Chosen over a cudaMemPool_t with a release
// threshold because it gives what the daemon must promise: a hard cap that refuses one request
// and leaves the others alone, an exact count of driver allocations (flat in steady state, which
// tests check), and statistics per pool; bench/engine/device_pool_bench measures both on the GPU.
//
// Stream order: freeing a block records an event on the stream that used it last. The next
// allocation on the same stream reuses it at once (stream order already serializes the work); one
// on another stream makes that stream wait for the event (cudaStreamWaitEvent: a device-side
// dependency, no host wait). So a call may free its memory as soon as its last kernel or copy is
// queued, without synchronizing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "server/backend_stats.h"
#include "server/engine/block_cache.h"

namespace attnd {

class DeviceMemoryPool {
 public:
  // Device memory for one call; back to the pool, in the order of `stream`, when destroyed.
  class Allocation {
   public:
    Allocation() = default;
    Allocation(Allocation&& o) noexcept { *this = std::move(o); }
    Allocation& operator=(Allocation&& o) noexcept;
    ~Allocation() { Reset(); }
    void* get() const { return block_ ? block_->ptr : nullptr; }
    size_t size() const { return block_ ? block_->requested : 0; }
    void Reset();

   private:
    friend class DeviceMemoryPool;
    DeviceMemoryPool* pool_ = nullptr;
    engine::CachedBlock* block_ = nullptr;
    cudaStream_t stream_ = nullptr;
  };

  // `cap_bytes`: most device memory the pool may hold (in use + cached).
  DeviceMemoryPool(int device, int64_t cap_bytes);
  ~DeviceMemoryPool();

  // At least `bytes` of device memory for work queued on `stream` (256-byte aligned).
  // RESOURCE_EXHAUSTED naming `purpose` when it does not fit under the cap.
  absl::StatusOr<Allocation> Allocate(size_t bytes, cudaStream_t stream, absl::string_view purpose);
  void ReleaseCached() { cache_.ReleaseCached(); }

  MemoryPoolStats Stats() const { return cache_.Stats(); }
  int64_t cap_bytes() const { return cache_.cap_bytes(); }
  int device() const { return device_; }

  static constexpr size_t kMinBlockBytes = 64 << 10;

 private:
  class CudaSource;
  void Free(engine::CachedBlock* block, cudaStream_t stream);

  const int device_;
  std::unique_ptr<CudaSource> source_;
  engine::BlockCache cache_;
};

}  // namespace attnd
