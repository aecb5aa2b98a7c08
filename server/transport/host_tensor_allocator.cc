#include "server/transport/host_tensor_allocator.h"

#include <sys/mman.h>

#include <bit>
#include <new>

#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

void* MapBlock(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void UnmapBlock(void* p, size_t bytes) { munmap(p, bytes); }

}  // namespace

HostTensorAllocator::HostTensorAllocator(int64_t cache_bytes, int64_t limit_bytes)
    : cache_bytes_(cache_bytes), limit_bytes_(limit_bytes) {}

HostTensorAllocator::~HostTensorAllocator() {
  absl::MutexLock lock(&mu_);
  for (auto& [size, blocks] : free_) {
    for (void* p : blocks) UnmapBlock(p, size);
  }
}

size_t HostTensorAllocator::ClassSize(size_t bytes) {
  if (bytes < kMinPooledBytes) return (bytes + 63) / 64 * 64;
  const size_t pow = std::bit_floor(bytes);  // bytes in [pow, 2 pow)
  const size_t quarter = pow / 4;
  return (bytes + quarter - 1) / quarter * quarter;  // pow * (1, 1.25, 1.5, 1.75 or 2)
}

absl::StatusOr<TensorBufferPtr> HostTensorAllocator::Allocate(size_t bytes, absl::string_view what) {
  if (bytes == 0) bytes = 1;
  const size_t class_size = ClassSize(bytes);
  void* block = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (limit_bytes_ > 0 && in_use_ + static_cast<int64_t>(class_size) > limit_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(what, ": ", bytes, " bytes of host tensor memory would exceed ",
                                                       "the limit of ", limit_bytes_, " bytes (", in_use_,
                                                       " in use); retry later"));
    }
    in_use_ += static_cast<int64_t>(class_size);
    if (auto it = free_.find(class_size); it != free_.end() && !it->second.empty()) {
      block = it->second.back();
      it->second.pop_back();
      cached_ -= static_cast<int64_t>(class_size);
    }
  }
  if (block == nullptr) {
    block = class_size < kMinPooledBytes ? ::operator new(class_size, std::align_val_t{64}, std::nothrow)
                                         : MapBlock(class_size);
    if (block == nullptr) {
      absl::MutexLock lock(&mu_);
      in_use_ -= static_cast<int64_t>(class_size);
      return absl::ResourceExhaustedError(absl::StrCat(what, ": out of host memory for ", bytes, " bytes"));
    }
  }
  return std::make_shared<TensorBuffer>(block, bytes, MemoryKind::kHost,
                                        [this, class_size](void* p, size_t) { Release(p, class_size); });
}

void HostTensorAllocator::Release(void* block, size_t class_size) {
  {
    absl::MutexLock lock(&mu_);
    in_use_ -= static_cast<int64_t>(class_size);
    if (class_size >= kMinPooledBytes && cached_ + static_cast<int64_t>(class_size) <= cache_bytes_) {
      free_[class_size].push_back(block);
      cached_ += static_cast<int64_t>(class_size);
      return;
    }
  }
  if (class_size < kMinPooledBytes) {
    ::operator delete(block, std::align_val_t{64});
  } else {
    UnmapBlock(block, class_size);
  }
}

int64_t HostTensorAllocator::bytes_in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

int64_t HostTensorAllocator::bytes_cached() const {
  absl::MutexLock lock(&mu_);
  return cached_;
}

}  // namespace attnd
