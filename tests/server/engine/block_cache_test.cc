// The memory pools' caching policy (engine/block_cache.h) against a fake driver: size classes,
// reuse without driver calls, the hard cap refusing one request by name while others carry on,
// least-recently-freed eviction, the same user preferred, and a driver that runs dry below the cap.
#include "server/engine/block_cache.h"
#include "server/engine/device_call_layout.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <set>
#include <vector>

namespace attnd::engine {
namespace {

class FakeDriver final : public BlockSource {
 public:
  absl::Status Allocate(CachedBlock& block) override {
    if (limit_ >= 0 && held_ + static_cast<int64_t>(block.bytes) > limit_) {
      return absl::ResourceExhaustedError("fake driver: out of memory");
    }
    block.ptr = std::malloc(block.bytes);
    held_ += static_cast<int64_t>(block.bytes);
    ++allocations_;
    return absl::OkStatus();
  }
  void Release(CachedBlock& block) override {
    held_ -= static_cast<int64_t>(block.bytes);
    released_.insert(block.ptr);
    std::free(block.ptr);
  }
  int allocations_ = 0;
  int64_t held_ = 0;
  int64_t limit_ = -1;  // < 0: unlimited
  std::set<void*> released_;
};

constexpr size_t kMin = 4096;

TEST(BlockCache, SizeClassesAreFourPerPowerOfTwoAndNeverSmallerThanAsked) {
  EXPECT_EQ(BlockCache::SizeClass(1, kMin), kMin);
  EXPECT_EQ(BlockCache::SizeClass(kMin, kMin), kMin);
  EXPECT_EQ(BlockCache::SizeClass(1 << 20, kMin), size_t{1} << 20);
  EXPECT_EQ(BlockCache::SizeClass((1 << 20) + 1, kMin), size_t{5} << 18);  // 1.25 MiB
  for (size_t bytes : {size_t{4097}, size_t{100000}, size_t{3} << 20, (size_t{7} << 30) + 12345}) {
    const size_t c = BlockCache::SizeClass(bytes, kMin);
    EXPECT_GE(c, bytes);
    EXPECT_LT(static_cast<double>(c), 1.25 * bytes + 1) << bytes;
  }
}

TEST(BlockCache, FreedBlocksAreReusedWithoutCallingTheDriver) {
  FakeDriver driver;
  BlockCache cache(&driver, int64_t{1} << 30, kMin, "test memory");
  for (int round = 0; round < 1000; ++round) {
    absl::StatusOr<CachedBlock*> a = cache.Allocate(300000, 1, "request a");
    absl::StatusOr<CachedBlock*> b = cache.Allocate(20000, 1, "request b");
    ASSERT_TRUE(a.ok() && b.ok());
    cache.Free(*a, 1);
    cache.Free(*b, 1);
  }
  EXPECT_EQ(driver.allocations_, 2);  // warm-up only
  const MemoryPoolStats s = cache.Stats();
  EXPECT_EQ(s.allocations, 2000);
  EXPECT_EQ(s.cache_hits, 1998);
  EXPECT_EQ(s.driver_allocations, 2);
  EXPECT_EQ(s.in_use_bytes, 0);
  EXPECT_EQ(s.reserved_bytes, s.cached_bytes);
  EXPECT_EQ(s.peak_in_use_bytes, 320000);
}

TEST(BlockCache, TheSmallestCachedBlockThatFitsServesASmallerRequest) {
  FakeDriver driver;
  BlockCache cache(&driver, int64_t{1} << 30, kMin, "test memory");
  CachedBlock* big = *cache.Allocate(1 << 20, 1, "big");
  CachedBlock* mid = *cache.Allocate(100000, 1, "mid");
  cache.Free(big, 1);
  cache.Free(mid, 1);
  CachedBlock* tiny = *cache.Allocate(1000, 1, "tiny");
  EXPECT_EQ(tiny, mid);  // the smallest that fits, not the first one freed
  CachedBlock* half = *cache.Allocate((1 << 19) + 100, 1, "half");
  EXPECT_EQ(half, big);
  EXPECT_EQ(driver.allocations_, 2);
  const MemoryPoolStats s = cache.Stats();
  EXPECT_EQ(s.in_use_bytes, 1000 + (1 << 19) + 100);
  EXPECT_EQ(s.in_use_block_bytes, static_cast<int64_t>(mid->bytes + big->bytes));
  EXPECT_NEAR(s.fragmentation(), 1.0 - double(s.in_use_bytes) / s.in_use_block_bytes, 1e-12);
  cache.Free(tiny, 1);
  cache.Free(half, 1);
}

TEST(BlockCache, OnceWarmAnyMixOfSizesMakesNoDriverCall) {
  // Two lanes, batches of 1..64 requests of 1.5 MiB each in random order (the batcher's pattern).
  FakeDriver driver;
  BlockCache cache(&driver, int64_t{64} << 30, kMin, "test memory");
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> batch(1, 64);
  int64_t warm = -1;
  for (int i = 0; i < 20000; ++i) {
    CachedBlock* a = *cache.Allocate(size_t(batch(rng)) * 1572864, 1, "lane 1");
    CachedBlock* b = *cache.Allocate(size_t(batch(rng)) * 1572864, 2, "lane 2");
    cache.Free(a, 1);
    cache.Free(b, 2);
    if (i == 1000) warm = cache.Stats().driver_allocations;
  }
  EXPECT_EQ(cache.Stats().driver_allocations, warm);
  EXPECT_LE(warm, 20);
}

TEST(BlockCache, PrefersTheBlockItsOwnUserFreedLast) {
  FakeDriver driver;
  BlockCache cache(&driver, int64_t{1} << 30, kMin, "test memory");
  CachedBlock* a = *cache.Allocate(100000, /*user=*/7, "a");
  CachedBlock* b = *cache.Allocate(100000, /*user=*/8, "b");
  cache.Free(a, 7);
  cache.Free(b, 8);
  CachedBlock* again8 = *cache.Allocate(100000, 8, "b again");
  CachedBlock* again7 = *cache.Allocate(100000, 7, "a again");
  EXPECT_EQ(again8, b);
  EXPECT_EQ(again7, a);
  EXPECT_EQ(again7->last_user, 7u);  // the owner reads who used it last (a CUDA stream)
  cache.Free(again8, 8);
  cache.Free(again7, 7);
}

TEST(BlockCache, OverTheCapTheRequestIsRefusedByNameThenServedOnceMemoryIsFreed) {
  FakeDriver driver;
  const int64_t cap = 10 << 20;
  BlockCache cache(&driver, cap, kMin, "GPU 3 memory");
  CachedBlock* held = *cache.Allocate(8 << 20, 1, "the big one");
  absl::StatusOr<CachedBlock*> refused = cache.Allocate(3 << 20, 2, "forward request (1 sequences, 4096 q rows)");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("forward request (1 sequences, 4096 q rows)"), std::string::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find("GPU 3 memory"), std::string::npos);
  // Others that fit carry on meanwhile.
  absl::StatusOr<CachedBlock*> small = cache.Allocate(1 << 20, 3, "small");
  ASSERT_TRUE(small.ok());
  cache.Free(*small, 3);
  cache.Free(held, 1);
  // The freed 8 MiB block serves it now.
  absl::StatusOr<CachedBlock*> retried = cache.Allocate(3 << 20, 2, "forward request, again");
  ASSERT_TRUE(retried.ok()) << retried.status();
  const MemoryPoolStats s = cache.Stats();
  EXPECT_EQ(s.rejected, 1);
  EXPECT_LE(s.reserved_bytes, cap);
  EXPECT_LE(s.peak_reserved_bytes, cap);
  EXPECT_EQ((*retried)->bytes, size_t{8} << 20);
  EXPECT_EQ(s.driver_allocations, 2);
  cache.Free(*retried, 2);
}

TEST(BlockCache, ARequestLargerThanTheCapIsRefusedWithoutTouchingTheCache) {
  FakeDriver driver;
  BlockCache cache(&driver, 1 << 20, kMin, "test memory");
  CachedBlock* kept = *cache.Allocate(100000, 1, "kept");
  cache.Free(kept, 1);
  absl::StatusOr<CachedBlock*> huge = cache.Allocate(2 << 20, 1, "huge request");
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(huge.status().message().find("more than the cap"), std::string::npos) << huge.status();
  EXPECT_EQ(cache.Stats().cached_bytes, static_cast<int64_t>(BlockCache::SizeClass(100000, kMin)));
}

TEST(BlockCache, EvictsLeastRecentlyFreedBlocksFirst) {
  FakeDriver driver;
  BlockCache cache(&driver, 4 << 20, kMin, "test memory");
  CachedBlock* first = *cache.Allocate(1 << 20, 1, "first");
  CachedBlock* second = *cache.Allocate(1 << 20, 1, "second");
  CachedBlock* third = *cache.Allocate(1 << 20, 1, "third");
  void* first_ptr = first->ptr;
  void* third_ptr = third->ptr;
  cache.Free(first, 1);   // oldest
  cache.Free(third, 1);
  cache.Free(second, 1);  // newest
  // No cached block fits 2 MiB, and 3 + 2 MiB would cross the cap: the oldest block goes.
  CachedBlock* other = *cache.Allocate(2 << 20, 1, "larger");
  EXPECT_EQ(driver.released_.count(first_ptr), 1u);
  EXPECT_EQ(driver.released_.count(third_ptr), 0u);
  EXPECT_EQ(cache.Stats().reserved_bytes, 4 << 20);
  cache.Free(other, 1);
}

TEST(BlockCache, ADriverOutOfMemoryBelowTheCapDropsTheCacheAndRetries) {
  FakeDriver driver;
  driver.limit_ = (2 << 20) + (1 << 19);  // 2.5 MiB: another process holds the rest of the device
  BlockCache cache(&driver, int64_t{1} << 30, kMin, "test memory");
  CachedBlock* a = *cache.Allocate(1 << 20, 1, "a");
  CachedBlock* b = *cache.Allocate(1 << 20, 1, "b");
  cache.Free(a, 1);
  absl::StatusOr<CachedBlock*> c = cache.Allocate(1536 << 10, 1, "c");  // another class: the driver is full
  ASSERT_TRUE(c.ok()) << c.status();  // a's block was released and the driver asked again
  absl::StatusOr<CachedBlock*> d = cache.Allocate(1536 << 10, 1, "request d");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(d.status().message().find("request d"), std::string::npos);
  cache.Free(b, 1);
  cache.Free(*c, 1);
}

TEST(BlockCache, ContainsKnowsItsBlocksCachedOrInUse) {
  FakeDriver driver;
  BlockCache cache(&driver, int64_t{1} << 30, kMin, "test memory");
  CachedBlock* a = *cache.Allocate(10000, 1, "a");
  auto* p = static_cast<char*>(a->ptr);
  EXPECT_TRUE(cache.Contains(p, 10000));
  EXPECT_TRUE(cache.Contains(p + 100, a->bytes - 100));
  EXPECT_FALSE(cache.Contains(p + 100, a->bytes));  // runs past the block
  int outside = 0;
  EXPECT_FALSE(cache.Contains(&outside, sizeof outside));
  cache.Free(a, 1);
  EXPECT_TRUE(cache.Contains(p, 10000));  // cached blocks stay page-locked, say
  cache.ReleaseCached();
  EXPECT_FALSE(cache.Contains(p, 10000));
  EXPECT_EQ(cache.Stats().reserved_bytes, 0);
}

// Packed batches grow and shrink from launch to launch. Asked for by their own sizes, every new
// largest batch is a new block from the driver (what the H100 showed: 2-5 per load step); asked
// for with the batcher's reserve_rows (device_call_layout.h), each lane keeps one block whatever
// the composition.
TEST(BlockCache, CallsThatReserveAFullBatchReuseOneBlockPerLaneAsBatchesVary) {
  constexpr size_t kRowBytes = 4096;  // q, k, v, out rows: 16 heads x 128 x bf16
  constexpr int64_t kMaxRows = 2048, kLanes = 2;
  auto layout = [](int64_t rows) {
    DeviceCallLayout l;
    for (int tensor = 0; tensor < 4; ++tensor) l.Add(size_t(rows) * kRowBytes);
    l.Add(size_t(rows) * 64);  // lse
    return l.total();
  };
  std::mt19937 rng(11);
  for (bool reserve : {false, true}) {
    FakeDriver driver;
    const int64_t cap = int64_t{1} << 34;
    BlockCache cache(&driver, cap, kMin, "test memory");
    int warm_allocations = -1;
    for (int launch = 0; launch < 4000; ++launch) {
      if (launch == 200) warm_allocations = driver.allocations_;
      // Batch sizes drift upwards (a load step brings larger batches), each launch on both lanes.
      const int64_t most = std::min<int64_t>(kMaxRows, 16 + launch);
      std::vector<CachedBlock*> held;
      for (int lane = 1; lane <= kLanes; ++lane) {
        const size_t exact = layout(1 + int64_t(rng() % most));
        const size_t asked = reserve ? DeviceRequestBytes(exact, layout(kMaxRows), cap, kLanes) : exact;
        absl::StatusOr<CachedBlock*> block = cache.Allocate(asked, uintptr_t(lane), "a packed batch");
        ASSERT_TRUE(block.ok()) << block.status();
        held.push_back(*block);
      }
      for (int lane = 1; lane <= kLanes; ++lane) cache.Free(held[lane - 1], uintptr_t(lane));
    }
    if (reserve) {
      EXPECT_EQ(driver.allocations_, kLanes) << "one block per lane, whatever the batch sizes";
      EXPECT_EQ(warm_allocations, kLanes);
    } else {
      EXPECT_GT(driver.allocations_ - warm_allocations, 0) << "without reserving, new largest batches keep calling";
    }
  }
}


}  // namespace
}  // namespace attnd::engine
