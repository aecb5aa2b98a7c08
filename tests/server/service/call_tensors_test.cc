// CallTensors: a call's tensors resolved across transports, and the rules only a whole call can
// check: outputs overlapping other spans, and host and GPU memory mixed in one call. GPU regions
// come from a fake importer here (host memory labelled as device 3), so CI checks the rules
// without a GPU.
#include "server/service/call_tensors.h"

#include <vector>

#include "gtest/gtest.h"
#include "server/transport/host_tensor_allocator.h"

namespace attnd {
namespace {

class FakeDeviceMemory final : public RegionMemory {
 public:
  explicit FakeDeviceMemory(size_t size) : bytes_(size) {}
  void* base() const override { return const_cast<char*>(bytes_.data()); }
  size_t size() const override { return bytes_.size(); }
  MemoryKind kind() const override { return MemoryKind::kDevice; }
  int device() const override { return 3; }

 private:
  std::vector<char> bytes_;
};

class FakeImporter final : public DeviceMemoryImporter {
 public:
  absl::StatusOr<std::unique_ptr<RegionMemory>> Import(absl::string_view, size_t size, int) override {
    return std::unique_ptr<RegionMemory>(new FakeDeviceMemory(size));
  }
};

class NoInlineTensors final : public InlineTensors {
 public:
  int64_t size(int) const override { return 0; }
  absl::StatusOr<TensorBufferPtr> Take(int, TensorAllocator* allocator, absl::string_view name) override {
    return allocator->Allocate(64, name);
  }
};

class CallTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    session_ = *registry_.OpenSession({});
    device_ = *registry_.RegisterCudaMemory(session_, std::string(64, 'h'), 1 << 16, 3, "gpu");
    context_.allocator = &allocator_;
    context_.regions = &registry_;
  }
  v1::Tensor OnDevice(uint64_t offset, uint64_t size) {
    v1::Tensor t;
    v1::RegionSpan* span = t.mutable_region();
    span->set_region_id(device_.region_id);
    span->set_key(device_.key);
    span->set_offset(offset);
    span->set_size(size);
    return t;
  }

  HostTensorAllocator allocator_{0};
  FakeImporter importer_;
  RegionRegistry registry_{RegionRegistry::Limits{}, nullptr, &importer_};
  std::string session_;
  RegisteredRegion device_;
  TransportContext context_;
  NoInlineTensors no_inline_;
};

TEST_F(CallTensorsTest, AHostOnlyBackendRefusesGpuRegions) {
  CallTensors tensors(context_);
  TensorBufferPtr unused;
  absl::StatusOr<TensorBytes> q = tensors.Input(OnDevice(0, 64), no_inline_, 1, "q", false, &unused);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(q.status().message().find("GPU memory"), std::string::npos) << q.status();
}

TEST_F(CallTensorsTest, AllTensorsOnOneGpuNameThatGpu) {
  context_.backend_takes_device_memory = true;
  CallTensors tensors(context_);
  TensorBufferPtr unused;
  ASSERT_TRUE(tensors.Input(OnDevice(0, 64), no_inline_, 1, "q", false, &unused).ok());
  v1::RegionSpan out = OnDevice(64, 64).region();
  ASSERT_TRUE(tensors.Output(&out, "out_region", 64).ok());
  EXPECT_EQ(*tensors.Device(), 3);
  EXPECT_TRUE(tensors.CheckOverlaps().ok());
}

TEST_F(CallTensorsTest, HostAndGpuTensorsInOneCallAreInvalid) {
  context_.backend_takes_device_memory = true;
  CallTensors tensors(context_);
  TensorBufferPtr unused;
  ASSERT_TRUE(tensors.Input(OnDevice(0, 64), no_inline_, 1, "q", false, &unused).ok());
  ASSERT_TRUE(tensors.Input(v1::Tensor(), no_inline_, 2, "k", false, &unused).ok());  // inline: host
  absl::StatusOr<int> device = tensors.Device();
  EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(device.status().message().find("k: in host memory but q.region is in GPU 3"), std::string::npos)
      << device.status();
}

TEST_F(CallTensorsTest, KeepingGpuTensorsResidentIsInvalid) {
  context_.backend_takes_device_memory = true;
  CallTensors tensors(context_);
  TensorBufferPtr buffer;
  absl::StatusOr<TensorBytes> q = tensors.Input(OnDevice(0, 64), no_inline_, 1, "q", /*keep=*/true, &buffer);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("keep_resident"), std::string::npos);
}

TEST_F(CallTensorsTest, OutputsMayNotOverlapInputsOrEachOther) {
  context_.backend_takes_device_memory = true;
  CallTensors tensors(context_);
  TensorBufferPtr unused;
  ASSERT_TRUE(tensors.Input(OnDevice(0, 128), no_inline_, 1, "q", false, &unused).ok());
  ASSERT_TRUE(tensors.Input(OnDevice(0, 128), no_inline_, 2, "k", false, &unused).ok());  // inputs may share
  EXPECT_TRUE(tensors.CheckOverlaps().ok());
  v1::RegionSpan out = OnDevice(64, 128).region();
  ASSERT_TRUE(tensors.Output(&out, "out_region", 128).ok());
  absl::Status overlap = tensors.CheckOverlaps();
  EXPECT_EQ(overlap.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(overlap.message().find("out_region: bytes [64, 192) of region cuda-1 overlap q.region [0, 128)"),
            std::string::npos)
      << overlap;
}

}  // namespace
}  // namespace attnd
