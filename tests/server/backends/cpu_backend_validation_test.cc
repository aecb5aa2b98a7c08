// What the CPU backend accepts and how it refuses what it cannot run.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/server/backends/attention_case.h"

namespace attnd::testing {
namespace {

TEST(CpuBackendValidation, NameAndDevice) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(3);
  EXPECT_EQ(backend->name(), "cpu");
  const std::vector<DeviceDescription> devices = backend->Devices();
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(devices[0].multiprocessors, 3);
  EXPECT_NE(devices[0].name.find("3 threads"), std::string::npos) << devices[0].name;
  EXPECT_TRUE(backend->SupportedHeadDims().empty());  // every head_dim 1..kMaxHeadDim
}

TEST(CpuBackendValidation, SupportsEveryHeadDimAndDTypeTheProtocolAllows) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  for (int d = 1; d <= kMaxHeadDim; ++d) {
    for (DType t : {DType::kBF16, DType::kFP16, DType::kFP32}) {
      EXPECT_TRUE(backend->CheckSupported(DenseShape(1, 4, 4, 2, 1, d), t).ok()) << d;
    }
  }
}

TEST(CpuBackendValidation, RefusesHeadDimOutsideRangeNamingTheField) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  for (int d : {0, kMaxHeadDim + 1}) {
    const absl::Status st = backend->CheckSupported(DenseShape(1, 4, 4, 1, 1, d), DType::kBF16);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("head_dim"), std::string::npos) << st;
  }
}

TEST(CpuBackendValidation, RefusesHeadsNotDivisibleNamingTheField) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  const absl::Status st = backend->CheckSupported(DenseShape(1, 4, 4, 3, 2, 8), DType::kBF16);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("heads_q"), std::string::npos) << st;
}

// The backend re-checks what it indexes with, so a front-end bug cannot make it read out of bounds.
TEST(CpuBackendValidation, ForwardAndBackwardRefuseInconsistentArguments) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  const AttentionCase c{"small", {3, 5}, {4, 2}, 2, 1, 8, false, true, 0.f};
  Problem p = MakeProblem(c, DType::kFP32, 1);
  std::vector<float> out(size_t(p.shape.q_elements())), lse(size_t(p.shape.lse_elements()));
  auto forward = [&](const AttentionShape& shape, const void* q, float scale) {
    ForwardArgs a;
    a.shape = &shape;
    a.options.softmax_scale = scale;
    a.dtype = DType::kFP32;
    a.q = q;
    a.k = p.k.data();
    a.v = p.v.data();
    a.out = out.data();
    a.lse = lse.data();
    return backend->Forward(a);
  };
  EXPECT_TRUE(forward(p.shape, p.q.data(), 0.5f).ok());

  AttentionShape bad = p.shape;
  bad.cu_seqlens_q = {0, 5, 3};
  absl::Status st = forward(bad, p.q.data(), 0.5f);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("cu_seqlens_q"), std::string::npos) << st;

  bad = p.shape;
  bad.cu_seqlens_k.pop_back();
  st = forward(bad, p.q.data(), 0.5f);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("cu_seqlens"), std::string::npos) << st;

  bad = p.shape;
  bad.total_k = 7;
  st = forward(bad, p.q.data(), 0.5f);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("cu_seqlens_k"), std::string::npos) << st;

  st = forward(p.shape, nullptr, 0.5f);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("q is missing"), std::string::npos) << st;

  st = forward(p.shape, p.q.data(), 0.f);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("softmax_scale"), std::string::npos) << st;

  BackwardArgs b;
  b.shape = &p.shape;
  b.options.softmax_scale = 0.5f;
  b.dtype = DType::kFP32;
  b.q = p.q.data();
  b.k = p.k.data();
  b.v = p.v.data();
  b.out = out.data();
  b.lse = lse.data();
  b.grad_out = p.dout.data();
  st = backend->Backward(b);  // no gradient buffers
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("grad_q is missing"), std::string::npos) << st;
}

TEST(CpuBackendValidation, EmptyBatchIsANoOp) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(2);
  const AttentionShape s = PackedShape({}, {}, 2, 1, 8);
  ForwardArgs a;
  a.shape = &s;
  a.options.softmax_scale = 1.f;
  a.dtype = DType::kBF16;
  EXPECT_TRUE(backend->Forward(a).ok());
}

}  // namespace
}  // namespace attnd::testing
