// The CUDA backend's engine path on a real GPU: pageable tensors staged through pinned memory in
// chunks (sizes across chunk boundaries) still match the float64 oracle with every element
// written; page-locked HostBuffers the backend lends, and registered host memory marked
// page-locked, skip the staging; device-resident tensors skip H2D/D2H and give the same bits;
// stage timings are filled. Skipped without a CUDA device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "server/backend_stats.h"
#include "server/backends/cuda/cuda_backend.h"
#include "tests/server/backends/cuda_engine_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd {
namespace {

using testing::EngineCall;
using testing::MakeEngineCall;

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

class CudaEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (VisibleCudaDevices() == 0) GTEST_SKIP() << "no CUDA device";
    CudaBackendOptions options;
    options.streams = 3;
    absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateCudaBackend(options);
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    cuda_ = *std::move(cuda);
  }
  BackendStats Stats() {
    BackendStats s;
    cuda_->CollectStats(s);
    return s;
  }
  std::unique_ptr<Backend> cuda_;
};

void ExpectMatchesOracle(const EngineCall& c) {
  const testing::ReferenceForward ref = testing::ReferenceAttentionForward(c.shape, c.options, c.qd, c.kd, c.vd);
  const std::vector<double> out = testing::Decode(c.out, c.dtype);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_FALSE(std::isnan(out[i])) << "out " << i << " unwritten";
  EXPECT_LE(testing::RelativeL2Error(out, ref.out), c.dtype == DType::kBF16 ? 1e-2 : 2e-3);
  for (size_t i = 0; i < ref.lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      ASSERT_TRUE(std::isinf(c.lse[i])) << "lse " << i;
    } else {
      ASSERT_NEAR(c.lse[i], ref.lse[i], 1e-3) << "lse " << i;
    }
  }
}

TEST_F(CudaEngineTest, StagedCopiesInChunksMatchTheOracle) {
  // q of the first is 4 MiB + 4 KiB (a full chunk and a sliver); odd lengths elsewhere.
  const std::vector<AttentionShape> shapes = {DenseShape(1, 4100, 300, 4, 2, 128),
                                              PackedShape({1, 17, 1000}, {5, 1000, 17}, 4, 4, 64),
                                              DenseShape(3, 333, 333, 2, 1, 96)};
  uint32_t seed = 11;
  for (const AttentionShape& shape : shapes) {
    for (DType t : {DType::kBF16, DType::kFP16}) {
      auto c = MakeEngineCall(shape, t, /*causal=*/seed % 2 == 0, seed++);
      ASSERT_TRUE(cuda_->Forward(c->Forward()).ok());
      SCOPED_TRACE(std::string(DTypeName(t)) + " total_q " + std::to_string(shape.total_q));
      ExpectMatchesOracle(*c);
      EXPECT_GT(c->timings.kernel_s, 0);
      EXPECT_GT(c->timings.h2d_s, 0);
      EXPECT_GT(c->timings.d2h_s, 0);
      EXPECT_GE(c->timings.queue_s, 0);
    }
  }
  const BackendStats s = Stats();
  ASSERT_EQ(s.devices.size(), 1u);
  EXPECT_EQ(s.devices[0].launches, 6);
  EXPECT_EQ(s.devices[0].streams, 3);
  EXPECT_EQ(s.devices[0].memory.in_use_bytes, 0);
  EXPECT_EQ(s.pinned_host.in_use_bytes, 0);
  EXPECT_GT(s.pinned_host.allocations, 0);  // staging was used
}

// Copies `bytes` into a buffer the backend lends (page-locked for CUDA).
HostBuffer Lent(Backend& b, const std::vector<uint8_t>& bytes) {
  absl::StatusOr<HostBuffer> buffer = b.AllocateHostBuffer(bytes.size());
  EXPECT_TRUE(buffer.ok());
  std::memcpy(buffer->data, bytes.data(), bytes.size());
  return *buffer;
}

TEST_F(CudaEngineTest, LentHostBuffersSkipTheStagingAndGiveTheSameBits) {
  auto c = MakeEngineCall(DenseShape(2, 700, 900, 8, 4, 128), DType::kBF16, true, 5);
  ASSERT_TRUE(cuda_->Forward(c->Forward()).ok());  // pageable: staged
  HostBuffer q = Lent(*cuda_, c->q), k = Lent(*cuda_, c->k), v = Lent(*cuda_, c->v);
  HostBuffer out = Lent(*cuda_, std::vector<uint8_t>(c->out.size(), 0xFF));
  HostBuffer lse = Lent(*cuda_, std::vector<uint8_t>(c->lse.size() * 4, 0xFF));
  const int64_t pinned_before = Stats().pinned_host.allocations;
  ForwardArgs args = c->Forward();
  args.q = q.data;
  args.k = k.data;
  args.v = v.data;
  args.out = out.data;
  args.lse = static_cast<float*>(lse.data);
  const int64_t staged_before = Stats().devices[0].staged_copy_bytes;
  ASSERT_TRUE(cuda_->Forward(args).ok());
  EXPECT_EQ(Stats().pinned_host.allocations, pinned_before);  // no staging: cu_seqlens go via the lane
  EXPECT_EQ(Stats().devices[0].staged_copy_bytes, staged_before);
  EXPECT_EQ(std::memcmp(out.data, c->out.data(), c->out.size()), 0);
  EXPECT_EQ(std::memcmp(lse.data, c->lse.data(), c->lse.size() * 4), 0);
}

// Host memory registered with the driver (what the transport does to a client's shared-memory
// region: cudaHostRegister) and marked page-locked by the caller goes by DMA straight from and to
// it: not one byte staged, every byte counted as direct, the same bits as the staged call. The
// same call without the mark is staged (the counter is live).
TEST_F(CudaEngineTest, RegisteredHostMemoryIsCopiedByDmaWithoutStaging) {
  auto c = MakeEngineCall(DenseShape(2, 1000, 1000, 16, 4, 128), DType::kBF16, false, 21);
  ASSERT_TRUE(cuda_->Forward(c->Forward()).ok());  // pageable: staged
  ExpectMatchesOracle(*c);
  const size_t q = c->q.size(), kv = c->k.size(), lse_bytes = c->lse.size() * 4;
  const size_t total = 2 * q + 2 * kv + lse_bytes;
  // One page-aligned "region" holding q, k, v, out, lse, registered like a shared-memory mapping.
  const size_t page = 4096, region_bytes = (total + 5 * page) / page * page;
  void* region = std::aligned_alloc(page, region_bytes);
  ASSERT_NE(region, nullptr);
  std::unique_ptr<void, void (*)(void*)> free_region(region, std::free);
  auto* base = static_cast<uint8_t*>(region);
  uint8_t *rq = base, *rk = rq + q, *rv = rk + kv, *rout = rv + kv, *rlse = rout + q;
  std::memcpy(rq, c->q.data(), q);
  std::memcpy(rk, c->k.data(), kv);
  std::memcpy(rv, c->v.data(), kv);
  ForwardArgs args = c->Forward();
  args.q = rq;
  args.k = rk;
  args.v = rv;
  args.out = rout;
  args.lse = reinterpret_cast<float*>(rlse);
  args.placement.host_page_locked = true;
  for (int marked : {0, 1}) {
    SCOPED_TRACE(marked ? "marked page-locked" : "not marked");
    ASSERT_CUDA(cudaHostRegister(region, region_bytes, cudaHostRegisterPortable));
    std::memset(rout, 0xFF, q + lse_bytes);  // poisoned
    args.placement.host_page_locked = marked == 1;
    const DeviceStats before = Stats().devices[0];
    ASSERT_TRUE(cuda_->Forward(args).ok());
    const DeviceStats after = Stats().devices[0];
    ASSERT_CUDA(cudaHostUnregister(region));
    if (marked) {
      EXPECT_EQ(after.staged_copy_bytes, before.staged_copy_bytes) << "registered memory was staged";
      EXPECT_EQ(after.pageable_copy_bytes, before.pageable_copy_bytes);
      EXPECT_GE(after.direct_copy_bytes - before.direct_copy_bytes, int64_t(total));  // + cu_seqlens
    } else {
      EXPECT_EQ(after.staged_copy_bytes - before.staged_copy_bytes, int64_t(total));
    }
    EXPECT_EQ(std::memcmp(rout, c->out.data(), q), 0);
    EXPECT_EQ(std::memcmp(rlse, c->lse.data(), lse_bytes), 0);
  }
}

// Device copies of a call's tensors, freed at the end of the test.
struct DeviceTensors {
  std::vector<void*> owned;
  void* Upload(const void* host, size_t bytes) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, bytes == 0 ? 1 : bytes), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    owned.push_back(p);
    return p;
  }
  void* Poisoned(size_t bytes) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
    EXPECT_EQ(cudaMemset(p, 0xFF, bytes), cudaSuccess);
    owned.push_back(p);
    return p;
  }
  ~DeviceTensors() {
    for (void* p : owned) cudaFree(p);
  }
};

TEST_F(CudaEngineTest, DeviceResidentTensorsSkipTheCopiesAndGiveTheSameBits) {
  auto c = MakeEngineCall(PackedShape({300, 17, 1}, {260, 40, 9}, 8, 2, 64), DType::kFP16, true, 9);
  ASSERT_TRUE(cuda_->Forward(c->Forward()).ok());
  ExpectMatchesOracle(*c);
  DeviceTensors d;
  ForwardArgs args = c->Forward();
  args.placement = {MemorySpace::kDevice, 0};
  args.q = d.Upload(c->q.data(), c->q.size());
  args.k = d.Upload(c->k.data(), c->k.size());
  args.v = d.Upload(c->v.data(), c->v.size());
  args.out = d.Poisoned(c->out.size());
  args.lse = static_cast<float*>(d.Poisoned(c->lse.size() * 4));
  // A backend of its own, so that its pools have seen this call only.
  absl::StatusOr<std::unique_ptr<Backend>> fresh = CreateCudaBackend({});
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->Forward(args).ok());
  BackendStats after;
  (*fresh)->CollectStats(after);
  EXPECT_EQ(after.pinned_host.allocations, 1);  // staging of cu_seqlens only
  EXPECT_LT(after.devices[0].memory.peak_in_use_bytes, int64_t(c->q.size()));  // no device copy of q
  std::vector<uint8_t> out(c->out.size());
  std::vector<float> lse(c->lse.size());
  ASSERT_CUDA(cudaMemcpy(out.data(), args.out, out.size(), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(lse.data(), args.lse, lse.size() * 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(out, c->out);
  EXPECT_EQ(std::memcmp(lse.data(), c->lse.data(), lse.size() * 4), 0);

  // Backward, resident too: the same gradients as from host memory (deterministic: same bits).
  c->options.deterministic = true;
  ASSERT_TRUE(cuda_->Backward(c->Backward()).ok());
  BackwardArgs b = c->Backward();
  b.placement = {MemorySpace::kDevice, 0};
  b.q = args.q;
  b.k = args.k;
  b.v = args.v;
  b.out = args.out;
  b.lse = args.lse;
  b.grad_out = d.Upload(c->grad_out.data(), c->grad_out.size());
  b.grad_q = d.Poisoned(c->grad_q.size());
  b.grad_k = d.Poisoned(c->grad_k.size());
  b.grad_v = d.Poisoned(c->grad_v.size());
  ASSERT_TRUE((*fresh)->Backward(b).ok());
  for (auto [device, host] : {std::pair{b.grad_q, &c->grad_q}, {b.grad_k, &c->grad_k}, {b.grad_v, &c->grad_v}}) {
    std::vector<uint8_t> got(host->size());
    ASSERT_CUDA(cudaMemcpy(got.data(), device, got.size(), cudaMemcpyDeviceToHost));
    EXPECT_EQ(got, *host);
  }
}

TEST_F(CudaEngineTest, DeviceResidentCallsOnTheWrongDeviceOrWithHostPointersAreRefused) {
  auto c = MakeEngineCall(DenseShape(1, 64, 64, 2, 2, 64), DType::kBF16, false, 3);
  ForwardArgs args = c->Forward();
  args.placement = {MemorySpace::kDevice, 0};  // but the pointers are host memory
  const absl::Status host = cuda_->Forward(args);
  EXPECT_EQ(host.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(host.message().find("q is said to be memory of CUDA device 0"), std::string::npos) << host;
  args.placement = {MemorySpace::kDevice, 7};
  EXPECT_EQ(cuda_->Forward(args).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace attnd
