// BlockCache: the caching core of attnd's memory pools (DeviceMemoryPool for a GPU's memory,
// PinnedHostPool for page-locked staging). It holds no CUDA: a BlockSource talks to the driver,
// so CI tests the policy on any machine.
//
// Why a caching allocator and not the driver per request: cudaMalloc/cudaFree synchronize the
// device and cost tens of microseconds to milliseconds; cudaHostAlloc (pinning) costs about a
// millisecond per MiB. A daemon that serves the same few shapes over and over should call the
// driver only while it warms up, then never (driver_allocations stays flat).
//
// Policy:
//   - Sizes round up to size classes, four per power of two (a block is at most 25% larger than
//     asked) above min_block_bytes.
//   - A freed block is cached, not released. An allocation takes the smallest cached block that
//     fits, however much larger (among equals, one the same user freed last: on a GPU that user
//     is a stream, and stream order makes reuse safe without any wait). Holding a larger block
//     for one call costs nothing next to a driver call, and it is what makes the driver calls
//     stop: the blocks in use at once are bounded (one per stream lane, plus the batcher's and
//     the lent buffers), so once the largest of each have been made every request finds a
//     cached block, whatever mix of sizes follows (batch sizes vary from launch to launch).
//     fragmentation() shows what that costs.
//   - Hard cap: reserved bytes (in use + cached) never exceed cap_bytes. When a new block would
//     cross it, cached blocks are released, least recently freed first; when the blocks in use
//     alone leave no room, the allocation fails with RESOURCE_EXHAUSTED naming the request, and
//     every other call carries on. A driver that is out of memory below the cap (another
//     process) gets the same treatment: release the cache, try once more, then refuse.
// Thread-safe; driver calls happen under the cache's lock (rare after warm-up).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/backend_stats.h"

namespace attnd::engine {

struct CachedBlock {
  void* ptr = nullptr;
  size_t bytes = 0;            // the block's size: its size class
  size_t requested = 0;        // asked for by its current user; 0 while cached
  uintptr_t last_user = 0;     // who freed it last (the owner's tag, e.g. a cudaStream_t)
  void* source_data = nullptr; // the source's per-block object (e.g. a CUDA event)
  uint64_t freed_at = 0;       // tick of its last Free, for least-recently-freed eviction
  bool in_use = false;
};

class BlockSource {
 public:
  virtual ~BlockSource() = default;
  // A new block of block.bytes from the driver: sets ptr (and source_data). RESOURCE_EXHAUSTED
  // when the driver has no memory left; other errors pass through.
  virtual absl::Status Allocate(CachedBlock& block) = 0;
  // Returns a cached block to the driver once whatever last used it is done with it.
  virtual void Release(CachedBlock& block) = 0;
};

class BlockCache {
 public:
  // `memory_name` says what the memory is in messages ("GPU 0 memory", "pinned host memory").
  BlockCache(BlockSource* source, int64_t cap_bytes, size_t min_block_bytes, std::string memory_name);
  ~BlockCache();  // releases every block, cached or (a caller's bug) still in use

  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // A block of at least `bytes` (> 0) for `user`. `purpose` names the request in the
  // RESOURCE_EXHAUSTED message ("forward request q 4096x16x128 ...").
  absl::StatusOr<CachedBlock*> Allocate(size_t bytes, uintptr_t user, absl::string_view purpose);
  // Back to the cache; `user` is who used it last.
  void Free(CachedBlock* block, uintptr_t user);
  // Releases every cached block to the driver.
  void ReleaseCached();
  // Whether [p, p + bytes) lies inside one block of this cache (in use or cached).
  bool Contains(const void* p, size_t bytes) const;

  MemoryPoolStats Stats() const;
  int64_t cap_bytes() const { return cap_; }

  // The size class of a request: four classes per power of two, at least min_block_bytes.
  static size_t SizeClass(size_t bytes, size_t min_block_bytes);

 private:
  CachedBlock* TakeCached(size_t block_bytes, uintptr_t user) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases least-recently-freed cached blocks until `needed` more bytes fit under the cap (or
  // all of them when needed < 0). False when they do not fit even then.
  bool MakeRoom(int64_t needed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseBlock(std::multimap<size_t, CachedBlock*>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Refuse(size_t bytes, size_t block_bytes, absl::string_view purpose, absl::string_view why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  BlockSource* const source_;
  const int64_t cap_;
  const size_t min_block_;
  const std::string memory_name_;

  mutable absl::Mutex mu_;
  std::map<uintptr_t, std::unique_ptr<CachedBlock>> blocks_ ABSL_GUARDED_BY(mu_);  // by address
  std::multimap<size_t, CachedBlock*> cached_ ABSL_GUARDED_BY(mu_);               // by size
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  MemoryPoolStats stats_ ABSL_GUARDED_BY(mu_);
};

// "1.5 GiB", "512 KiB", "300 B": sizes in messages.
std::string HumanBytes(int64_t bytes);

}  // namespace attnd::engine
