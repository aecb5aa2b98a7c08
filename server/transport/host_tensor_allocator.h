// HostTensorAllocator: page-aligned host buffers, cached for reuse by size class.
//
// Large blocks come from mmap (fresh pages, zeroed by the kernel); a released block goes back to a
// per-class free list while the cache holds less than `cache_bytes`, so a steady stream of
// requests of similar sizes reuses warm pages instead of faulting in new ones. Size classes are
// the powers of two and three quarter-steps between them (at most 25% slack); blocks under
// kMinPooledBytes come from operator new and are not cached.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/transport/tensor_buffer.h"

namespace attnd {

class HostTensorAllocator final : public TensorAllocator {
 public:
  static constexpr size_t kMinPooledBytes = size_t{256} << 10;

  // `limit_bytes`: most bytes handed out at once (0: no limit); beyond it RESOURCE_EXHAUSTED.
  explicit HostTensorAllocator(int64_t cache_bytes = int64_t{2} << 30, int64_t limit_bytes = 0);
  ~HostTensorAllocator() override;  // buffers still handed out must be released first

  absl::StatusOr<TensorBufferPtr> Allocate(size_t bytes, absl::string_view what) override;
  absl::string_view name() const override { return "host"; }
  int64_t bytes_in_use() const override;
  int64_t bytes_cached() const;

  // The size class a request of `bytes` is served from.
  static size_t ClassSize(size_t bytes);

 private:
  void Release(void* block, size_t class_size);

  const int64_t cache_bytes_;
  const int64_t limit_bytes_;
  mutable absl::Mutex mu_;
  std::map<size_t, std::vector<void*>> free_ ABSL_GUARDED_BY(mu_);  // class size -> cached blocks
  int64_t cached_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace attnd
