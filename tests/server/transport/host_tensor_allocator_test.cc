// HostTensorAllocator: buffers of the asked size, reused by size class, accounted, capped.
#include "server/transport/host_tensor_allocator.h"

#include <cstring>

#include "gtest/gtest.h"

namespace attnd {
namespace {

TEST(HostTensorAllocator, SizeClassesWasteAtMostAQuarter) {
  for (size_t bytes : {size_t{1} << 20, (size_t{1} << 20) + 1, size_t{3} << 20, size_t{48} << 20, size_t{192} << 20,
                       size_t{12582912}, size_t{4259840}}) {
    const size_t c = HostTensorAllocator::ClassSize(bytes);
    EXPECT_GE(c, bytes);
    EXPECT_LE(c, bytes + bytes / 4 + 1) << bytes;
  }
}

TEST(HostTensorAllocator, ReusesAReleasedBlockAndCountsBytesBackToZero) {
  HostTensorAllocator allocator(int64_t{1} << 30);
  void* first = nullptr;
  {
    absl::StatusOr<TensorBufferPtr> a = allocator.Allocate(5 << 20, "q");
    ASSERT_TRUE(a.ok());
    EXPECT_EQ((*a)->size(), size_t{5} << 20);
    std::memset((*a)->data(), 7, (*a)->size());  // every byte is ours to write
    first = (*a)->data();
    EXPECT_EQ(allocator.bytes_in_use(), static_cast<int64_t>(HostTensorAllocator::ClassSize(5 << 20)));
  }
  EXPECT_EQ(allocator.bytes_in_use(), 0);
  EXPECT_GT(allocator.bytes_cached(), 0);
  absl::StatusOr<TensorBufferPtr> b = allocator.Allocate((5 << 20) - 100, "k");  // same class
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->data(), first);
}

TEST(HostTensorAllocator, RefusesBeyondItsLimitNamingTheTensor) {
  HostTensorAllocator allocator(0, int64_t{8} << 20);
  absl::StatusOr<TensorBufferPtr> a = allocator.Allocate(6 << 20, "q");
  ASSERT_TRUE(a.ok());
  absl::StatusOr<TensorBufferPtr> b = allocator.Allocate(6 << 20, "grad_out");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("grad_out"), std::string::npos);
}

}  // namespace
}  // namespace attnd
