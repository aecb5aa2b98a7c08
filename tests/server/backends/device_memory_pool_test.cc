// DeviceMemoryPool on a real GPU: blocks are reused without driver calls, reuse across streams is
// ordered after the last user's work (a stream that did not wait would see the old work land
// later), the cap refuses one request by name and serves it once memory is back, and the pinned
// pool lends page-locked memory it recognizes. GPU tests: skipped without a CUDA device.
#include "server/backends/cuda/device_memory_pool.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "server/backends/cuda/cuda_backend.h"
#include "server/backends/cuda/pinned_host_pool.h"

namespace attnd {
namespace {

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

class DeviceMemoryPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (VisibleCudaDevices() == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_CUDA(cudaSetDevice(0));
    ASSERT_CUDA(cudaStreamCreateWithFlags(&a_, cudaStreamNonBlocking));
    ASSERT_CUDA(cudaStreamCreateWithFlags(&b_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (a_) cudaStreamDestroy(a_);
    if (b_) cudaStreamDestroy(b_);
  }
  cudaStream_t a_ = nullptr, b_ = nullptr;
};

TEST_F(DeviceMemoryPoolTest, SteadyStateReuseMakesNoDriverAllocation) {
  DeviceMemoryPool pool(0, int64_t{1} << 30);
  for (int i = 0; i < 2000; ++i) {
    absl::StatusOr<DeviceMemoryPool::Allocation> x = pool.Allocate(3 << 20, i % 2 ? a_ : b_, "x");
    absl::StatusOr<DeviceMemoryPool::Allocation> y = pool.Allocate(100 << 10, a_, "y");
    ASSERT_TRUE(x.ok() && y.ok());
    ASSERT_CUDA(cudaMemsetAsync(x->get(), i & 0xFF, 3 << 20, i % 2 ? a_ : b_));
  }
  ASSERT_CUDA(cudaDeviceSynchronize());
  const MemoryPoolStats s = pool.Stats();
  EXPECT_EQ(s.allocations, 4000);
  EXPECT_LE(s.driver_allocations, 3);  // warm-up: x, y, and at most one x while its twin is in use
  EXPECT_EQ(s.cache_hits, s.allocations - s.driver_allocations);
  EXPECT_EQ(s.in_use_bytes, 0);
  EXPECT_EQ(s.cached_bytes, s.reserved_bytes);
}

TEST_F(DeviceMemoryPoolTest, ReuseOnAnotherStreamWaitsForTheLastUsersWork) {
  DeviceMemoryPool pool(0, int64_t{4} << 30);
  constexpr size_t kBytes = 1 << 20;
  // Stream a: a long memset first (a GiB: hundreds of microseconds), then 0xAA into the block.
  void* slow = nullptr;
  ASSERT_CUDA(cudaMalloc(&slow, size_t{1} << 30));
  void* first = nullptr;
  {
    absl::StatusOr<DeviceMemoryPool::Allocation> block = pool.Allocate(kBytes, a_, "first user");
    ASSERT_TRUE(block.ok());
    first = block->get();
    for (int i = 0; i < 4; ++i) ASSERT_CUDA(cudaMemsetAsync(slow, i, size_t{1} << 30, a_));
    ASSERT_CUDA(cudaMemsetAsync(block->get(), 0xAA, kBytes, a_));
  }  // freed while stream a is still busy
  absl::StatusOr<DeviceMemoryPool::Allocation> reused = pool.Allocate(kBytes, b_, "second user");
  ASSERT_TRUE(reused.ok());
  ASSERT_EQ(reused->get(), first);  // the only cached block
  ASSERT_CUDA(cudaMemsetAsync(reused->get(), 0x55, kBytes, b_));
  std::vector<uint8_t> host(kBytes);
  ASSERT_CUDA(cudaMemcpyAsync(host.data(), reused->get(), kBytes, cudaMemcpyDeviceToHost, b_));
  ASSERT_CUDA(cudaStreamSynchronize(b_));
  ASSERT_CUDA(cudaDeviceSynchronize());
  for (size_t i = 0; i < kBytes; i += 4099) ASSERT_EQ(host[i], 0x55) << i;
  std::vector<uint8_t> after(kBytes);
  ASSERT_CUDA(cudaMemcpy(after.data(), reused->get(), kBytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < kBytes; i += 4099) ASSERT_EQ(after[i], 0x55) << "stream a's write landed after b's";
  cudaFree(slow);
}

TEST_F(DeviceMemoryPoolTest, CapRefusesTheRequestByNameThenServesItOnceMemoryIsBack) {
  DeviceMemoryPool pool(0, 64 << 20);
  absl::StatusOr<DeviceMemoryPool::Allocation> held = pool.Allocate(48 << 20, a_, "held");
  ASSERT_TRUE(held.ok());
  absl::StatusOr<DeviceMemoryPool::Allocation> refused = pool.Allocate(32 << 20, b_, "forward request (big)");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("forward request (big)"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("GPU 0 memory"), std::string::npos) << refused.status();
  absl::StatusOr<DeviceMemoryPool::Allocation> small = pool.Allocate(8 << 20, b_, "small");  // others carry on
  EXPECT_TRUE(small.ok());
  held->Reset();
  absl::StatusOr<DeviceMemoryPool::Allocation> retried = pool.Allocate(32 << 20, b_, "forward request (big)");
  ASSERT_TRUE(retried.ok()) << retried.status();
  ASSERT_CUDA(cudaMemsetAsync(retried->get(), 1, 32 << 20, b_));
  ASSERT_CUDA(cudaStreamSynchronize(b_));
  const MemoryPoolStats s = pool.Stats();
  EXPECT_EQ(s.rejected, 1);
  EXPECT_LE(s.peak_reserved_bytes, 64 << 20);
}

TEST_F(DeviceMemoryPoolTest, PinnedPoolLendsPageLockedMemoryItRecognizes) {
  std::shared_ptr<PinnedHostPool> pool = PinnedHostPool::Create(int64_t{1} << 30);
  absl::StatusOr<HostBuffer> buffer = pool->Lend(5 << 20);
  ASSERT_TRUE(buffer.ok());
  cudaPointerAttributes attributes{};
  ASSERT_CUDA(cudaPointerGetAttributes(&attributes, buffer->data));
  EXPECT_EQ(attributes.type, cudaMemoryTypeHost);
  EXPECT_TRUE(pool->Contains(buffer->data, 5 << 20));
  std::vector<uint8_t> pageable(64);
  EXPECT_FALSE(pool->Contains(pageable.data(), pageable.size()));
  void* data = buffer->data;
  *buffer = HostBuffer{};  // back to the pool, not to the driver
  absl::StatusOr<HostBuffer> again = pool->Lend(5 << 20);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->data, data);
  EXPECT_EQ(pool->Stats().driver_allocations, 1);
}

}  // namespace
}  // namespace attnd
