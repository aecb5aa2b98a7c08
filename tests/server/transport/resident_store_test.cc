// ResidentStore: handles live until TTL, release or eviction, a later lookup learns which, and
// the bytes held go back to zero.
#include "server/transport/resident_store.h"

#include <thread>

#include "gtest/gtest.h"
#include "server/transport/host_tensor_allocator.h"

namespace attnd {
namespace {

class ResidentStoreTest : public ::testing::Test {
 protected:
  // Tensors of 5 buffers of `each` bytes.
  ResidentTensors Tensors(size_t each) {
    ResidentTensors t;
    t.shape = DenseShape(1, 4, 4, 1, 1, 8);
    for (TensorBufferPtr* b : {&t.q, &t.k, &t.v, &t.out, &t.lse}) *b = *allocator_.Allocate(each, "t");
    return t;
  }
  ResidentStore::Options Options(int64_t capacity) {
    ResidentStore::Options o;
    o.capacity_bytes = capacity;
    return o;
  }
  HostTensorAllocator allocator_{0};
};

TEST_F(ResidentStoreTest, PutAcquireReleaseAndBytesBackToZero) {
  ResidentStore store(Options(1 << 20));
  absl::StatusOr<ResidentHandleInfo> h = store.Put(Tensors(1000), absl::ZeroDuration());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->bytes, 5000);
  EXPECT_EQ(h->ttl, absl::Seconds(60));
  EXPECT_EQ(store.bytes(), 5000);
  {
    absl::StatusOr<std::shared_ptr<const ResidentTensors>> t = store.Acquire(h->handle, "resident_handle");
    ASSERT_TRUE(t.ok());
    EXPECT_EQ((*t)->q->size(), 1000u);
    EXPECT_EQ(*store.Release(h->handle, "released by the test"), 5000);
    EXPECT_EQ(store.handles(), 0);
    EXPECT_EQ(store.bytes(), 5000);  // still used by this "call"
  }
  EXPECT_EQ(store.bytes(), 0);
  EXPECT_EQ(allocator_.bytes_in_use(), 0);
  absl::StatusOr<std::shared_ptr<const ResidentTensors>> gone = store.Acquire(h->handle, "resident_handle");
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(gone.status().message().find("released by the test"), std::string::npos) << gone.status();
  EXPECT_NE(gone.status().message().find(h->handle), std::string::npos);
}

TEST_F(ResidentStoreTest, ExpiresAfterItsTtl) {
  ResidentStore store(Options(1 << 20));
  absl::StatusOr<ResidentHandleInfo> h = store.Put(Tensors(100), absl::Milliseconds(50));
  ASSERT_TRUE(h.ok());
  // The expiry thread frees it soon after the TTL (a loaded machine may delay it a little).
  for (int i = 0; i < 500 && store.handles() > 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(store.handles(), 0);
  EXPECT_EQ(store.bytes(), 0);
  absl::StatusOr<std::shared_ptr<const ResidentTensors>> t = store.Acquire(h->handle, "resident_handle");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(t.status().message().find("expired"), std::string::npos) << t.status();
}

TEST_F(ResidentStoreTest, TtlIsCappedAtTheMaximum) {
  ResidentStore::Options o = Options(1 << 20);
  o.max_ttl = absl::Seconds(5);
  ResidentStore store(o);
  EXPECT_EQ(store.Put(Tensors(10), absl::Hours(1))->ttl, absl::Seconds(5));
}

TEST_F(ResidentStoreTest, MemoryPressureEvictsTheLeastRecentlyUsedWithAClearError) {
  ResidentStore store(Options(12000));
  const std::string a = store.Put(Tensors(1000), absl::ZeroDuration())->handle;
  const std::string b = store.Put(Tensors(1000), absl::ZeroDuration())->handle;
  ASSERT_TRUE(store.Acquire(a, "x").ok());  // a is now more recently used than b
  const std::string c = store.Put(Tensors(1000), absl::ZeroDuration())->handle;  // 15000 > 12000: b goes
  EXPECT_EQ(store.handles(), 2);
  EXPECT_EQ(store.bytes(), 10000);
  absl::StatusOr<std::shared_ptr<const ResidentTensors>> t = store.Acquire(b, "resident_handle");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(t.status().message().find("evicted under memory pressure"), std::string::npos) << t.status();
  EXPECT_TRUE(store.Acquire(a, "x").ok());
  EXPECT_TRUE(store.Acquire(c, "x").ok());
}

TEST_F(ResidentStoreTest, EntriesInUseAreNotEvicted) {
  ResidentStore store(Options(12000));
  const std::string a = store.Put(Tensors(1000), absl::ZeroDuration())->handle;
  const std::string b = store.Put(Tensors(1000), absl::ZeroDuration())->handle;
  auto held_a = store.Acquire(a, "x");
  auto held_b = store.Acquire(b, "x");
  absl::StatusOr<ResidentHandleInfo> c = store.Put(Tensors(1000), absl::ZeroDuration());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("keep_resident"), std::string::npos);
  EXPECT_EQ(store.handles(), 2);
}

TEST_F(ResidentStoreTest, TooLargeForTheCapacityAndUnknownHandles) {
  ResidentStore store(Options(1000));
  EXPECT_EQ(store.Put(Tensors(1000), absl::ZeroDuration()).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store.Acquire("nope", "resident_handle").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Release("nope", "x").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace attnd
