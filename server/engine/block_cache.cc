#include "server/engine/block_cache.h"

#include <algorithm>
#include <bit>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attnd::engine {

std::string HumanBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 4) {
    v /= 1024;
    ++unit;
  }
  return unit == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.3g %s", v, kUnits[unit]);
}

size_t BlockCache::SizeClass(size_t bytes, size_t min_block_bytes) {
  if (bytes <= min_block_bytes) return min_block_bytes;
  const int k = std::bit_width(bytes) - 1;  // 2^k <= bytes < 2^(k+1)
  const size_t step = size_t{1} << std::max(k - 2, 0);
  return (bytes + step - 1) / step * step;
}

BlockCache::BlockCache(BlockSource* source, int64_t cap_bytes, size_t min_block_bytes, std::string memory_name)
    : source_(source), cap_(cap_bytes), min_block_(min_block_bytes), memory_name_(std::move(memory_name)) {
  stats_.cap_bytes = cap_;
}

BlockCache::~BlockCache() {
  absl::MutexLock lock(&mu_);
  for (auto& [address, block] : blocks_) source_->Release(*block);
}

CachedBlock* BlockCache::TakeCached(size_t block_bytes, uintptr_t user) {
  // The smallest cached block that fits; among blocks of that size, the one this user freed last.
  auto it = cached_.lower_bound(block_bytes);
  if (it == cached_.end()) return nullptr;
  const size_t size = it->first;
  auto pick = it;
  for (auto same = it; same != cached_.end() && same->first == size; ++same) {
    if (same->second->last_user == user) {
      pick = same;
      break;
    }
  }
  CachedBlock* block = pick->second;
  cached_.erase(pick);
  return block;
}

void BlockCache::ReleaseBlock(std::multimap<size_t, CachedBlock*>::iterator it) {
  CachedBlock* block = it->second;
  cached_.erase(it);
  source_->Release(*block);
  ++stats_.driver_frees;
  stats_.reserved_bytes -= static_cast<int64_t>(block->bytes);
  stats_.cached_bytes -= static_cast<int64_t>(block->bytes);
  blocks_.erase(reinterpret_cast<uintptr_t>(block->ptr));
}

bool BlockCache::MakeRoom(int64_t needed) {
  if (needed >= 0 && stats_.reserved_bytes + needed <= cap_) return true;
  std::vector<std::multimap<size_t, CachedBlock*>::iterator> order;
  for (auto it = cached_.begin(); it != cached_.end(); ++it) order.push_back(it);
  std::sort(order.begin(), order.end(), [](auto a, auto b) { return a->second->freed_at < b->second->freed_at; });
  for (auto it : order) {
    if (needed >= 0 && stats_.reserved_bytes + needed <= cap_) break;
    ReleaseBlock(it);
  }
  return needed < 0 || stats_.reserved_bytes + needed <= cap_;
}

absl::Status BlockCache::Refuse(size_t bytes, size_t block_bytes, absl::string_view purpose, absl::string_view why) {
  ++stats_.rejected;
  return absl::ResourceExhaustedError(absl::StrCat(purpose, " needs ", HumanBytes(static_cast<int64_t>(bytes)),
                                                   " of ", memory_name_, " (a ", HumanBytes(block_bytes),
                                                   " block) but ", why, "; ", HumanBytes(stats_.in_use_block_bytes),
                                                   " are in use by other calls, cap ", HumanBytes(cap_)));
}

absl::StatusOr<CachedBlock*> BlockCache::Allocate(size_t bytes, uintptr_t user, absl::string_view purpose) {
  const size_t block_bytes = SizeClass(std::max<size_t>(bytes, 1), min_block_);
  absl::MutexLock lock(&mu_);
  CachedBlock* block = TakeCached(block_bytes, user);
  if (block != nullptr) {
    ++stats_.cache_hits;
    stats_.cached_bytes -= static_cast<int64_t>(block->bytes);
  } else {
    if (static_cast<int64_t>(block_bytes) > cap_) return Refuse(bytes, block_bytes, purpose, "that is more than the cap");
    if (!MakeRoom(static_cast<int64_t>(block_bytes))) {
      return Refuse(bytes, block_bytes, purpose, "it does not fit under the cap now");
    }
    auto fresh = std::make_unique<CachedBlock>();
    fresh->bytes = block_bytes;
    absl::Status st = source_->Allocate(*fresh);
    if (absl::IsResourceExhausted(st)) {  // the driver is short below our cap: drop the cache, retry
      MakeRoom(-1);
      st = source_->Allocate(*fresh);
    }
    if (absl::IsResourceExhausted(st)) return Refuse(bytes, block_bytes, purpose, "the driver has no more of it");
    if (!st.ok()) return st;
    ++stats_.driver_allocations;
    stats_.reserved_bytes += static_cast<int64_t>(block_bytes);
    stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
    block = fresh.get();
    blocks_.emplace(reinterpret_cast<uintptr_t>(block->ptr), std::move(fresh));
  }
  block->in_use = true;
  block->requested = bytes;
  ++stats_.allocations;
  stats_.in_use_bytes += static_cast<int64_t>(bytes);
  stats_.in_use_block_bytes += static_cast<int64_t>(block->bytes);
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  return block;
}

void BlockCache::Free(CachedBlock* block, uintptr_t user) {
  if (block == nullptr) return;
  absl::MutexLock lock(&mu_);
  stats_.in_use_bytes -= static_cast<int64_t>(block->requested);
  stats_.in_use_block_bytes -= static_cast<int64_t>(block->bytes);
  stats_.cached_bytes += static_cast<int64_t>(block->bytes);
  block->in_use = false;
  block->requested = 0;
  block->last_user = user;
  block->freed_at = ++tick_;
  cached_.emplace(block->bytes, block);
}

void BlockCache::ReleaseCached() {
  absl::MutexLock lock(&mu_);
  MakeRoom(-1);
}

bool BlockCache::Contains(const void* p, size_t bytes) const {
  const auto address = reinterpret_cast<uintptr_t>(p);
  absl::MutexLock lock(&mu_);
  auto it = blocks_.upper_bound(address);
  if (it == blocks_.begin()) return false;
  --it;
  return address + bytes <= it->first + it->second->bytes;
}

MemoryPoolStats BlockCache::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace attnd::engine
