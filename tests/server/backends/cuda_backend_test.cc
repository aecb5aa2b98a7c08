// The CUDA backend answers Forward like the CPU backend (and both like the float64 oracle), for
// every element type, dense and varlen, causal and not; it rejects what its kernels cannot run
// with INVALID_ARGUMENT naming the field. GPU tests: they skip without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "server/backends/cpu/cpu_backend.h"
#include "server/backends/cuda/cuda_backend.h"
#include "server/core/float16.h"
#include "tests/support/reference_attention.h"

namespace attnd {
namespace {

struct HostTensor {
  std::vector<uint8_t> bytes;
  std::vector<double> values;  // as rounded to the element type
};

HostTensor Random(std::mt19937& rng, int64_t n, DType t) {
  std::normal_distribution<float> normal(0.f, 1.f);
  HostTensor h;
  h.bytes.resize(size_t(n) * ElementSize(t));
  h.values.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    const float f = normal(rng);
    if (t == DType::kFP32) {
      std::memcpy(&h.bytes[size_t(i) * 4], &f, 4);
      h.values[size_t(i)] = f;
    } else {
      const uint16_t b = t == DType::kBF16 ? FloatToBf16(f) : FloatToFp16(f);
      std::memcpy(&h.bytes[size_t(i) * 2], &b, 2);
      h.values[size_t(i)] = t == DType::kBF16 ? Bf16ToFloat(b) : Fp16ToFloat(b);
    }
  }
  return h;
}

std::vector<double> Decode(const std::vector<uint8_t>& bytes, DType t) {
  const size_t n = bytes.size() / ElementSize(t);
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kFP32) {
      float f;
      std::memcpy(&f, &bytes[i * 4], 4);
      v[i] = f;
    } else {
      uint16_t b;
      std::memcpy(&b, &bytes[i * 2], 2);
      v[i] = t == DType::kBF16 ? Bf16ToFloat(b) : Fp16ToFloat(b);
    }
  }
  return v;
}

struct Result {
  std::vector<double> out;
  std::vector<float> lse;
};

Result RunForward(Backend& backend, const AttentionShape& shape, const AttentionOptions& options, DType t,
                  const HostTensor& q, const HostTensor& k, const HostTensor& v, absl::Status* status) {
  std::vector<uint8_t> out(size_t(shape.q_elements()) * ElementSize(t), 0xFF);
  const int64_t lse_count = shape.packed ? shape.lse_elements() : int64_t{shape.batch} * shape.heads_q * shape.max_seqlen_q;
  std::vector<float> lse(size_t(lse_count), std::nanf(""));
  ForwardArgs args;
  args.shape = &shape;
  args.options = options;
  args.dtype = t;
  args.q = q.bytes.data();
  args.k = k.bytes.data();
  args.v = v.bytes.data();
  args.out = out.data();
  args.lse = lse.data();
  *status = backend.Forward(args);
  return {Decode(out, t), lse};
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (VisibleCudaDevices() == 0) GTEST_SKIP() << "no CUDA device";
    auto cuda = CreateCudaBackend({});
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    cuda_ = std::move(*cuda);
    cpu_ = CreateCpuBackend(0);
  }
  std::unique_ptr<Backend> cuda_, cpu_;
};

TEST_F(CudaBackendTest, ForwardMatchesCpuBackendAndOracle) {
  std::random_device rd;
  const uint32_t seed = rd();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const std::vector<AttentionShape> shapes = {
      DenseShape(2, 333, 333, 4, 2, 128),
      DenseShape(1, 500, 200, 2, 1, 64),
      PackedShape({17, 0, 260, 5}, {30, 4, 260, 0}, 4, 4, 64),
  };
  for (const AttentionShape& shape : shapes)
    for (DType t : {DType::kBF16, DType::kFP16, DType::kFP32})
      for (bool causal : {false, true}) {
        SCOPED_TRACE(std::string(DTypeName(t)) + " d=" + std::to_string(shape.head_dim) + " causal=" +
                     std::to_string(causal) + " packed=" + std::to_string(shape.packed));
        AttentionOptions options;
        options.causal = causal;
        options.softmax_scale = 1.f / std::sqrt(float(shape.head_dim));
        const HostTensor q = Random(rng, shape.q_elements(), t), k = Random(rng, shape.kv_elements(), t),
                         v = Random(rng, shape.kv_elements(), t);
        absl::Status st_gpu, st_cpu;
        const Result gpu = RunForward(*cuda_, shape, options, t, q, k, v, &st_gpu);
        const Result cpu = RunForward(*cpu_, shape, options, t, q, k, v, &st_cpu);
        ASSERT_TRUE(st_gpu.ok()) << st_gpu;
        ASSERT_TRUE(st_cpu.ok()) << st_cpu;
        const testing::ReferenceForward ref =
            testing::ReferenceAttentionForward(shape, options, q.values, k.values, v.values);
        const double tol = t == DType::kBF16 ? 1e-2 : 2e-3;
        for (double x : gpu.out) ASSERT_FALSE(std::isnan(x)) << "unwritten output";
        EXPECT_LE(testing::RelativeL2Error(gpu.out, ref.out), tol);
        // GPU and CPU each within their rounding of the oracle, so within twice of each other.
        EXPECT_LE(testing::RelativeL2Error(gpu.out, cpu.out), 2 * tol);
        ASSERT_EQ(gpu.lse.size(), ref.lse.size());
        for (size_t i = 0; i < ref.lse.size(); ++i) {
          if (std::isinf(ref.lse[i])) {
            EXPECT_TRUE(std::isinf(gpu.lse[i]) && gpu.lse[i] > 0) << "lse " << i;
          } else {
            EXPECT_NEAR(gpu.lse[i], ref.lse[i], 1e-3) << "lse " << i;
            EXPECT_NEAR(gpu.lse[i], cpu.lse[i], 2e-3) << "lse " << i;
          }
        }
      }
}

TEST_F(CudaBackendTest, RejectsHeadDimItHasNoKernelFor) {
  const AttentionShape shape = DenseShape(1, 8, 8, 2, 2, 48);
  const absl::Status st = cuda_->CheckSupported(shape, DType::kBF16);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("head_dim"), std::string_view::npos) << st;
  EXPECT_TRUE(cuda_->CheckSupported(DenseShape(1, 8, 8, 2, 2, 96), DType::kFP32).ok());
}

TEST_F(CudaBackendTest, RejectsCuSeqlensThatLieAboutLengths) {
  AttentionShape shape = PackedShape({4, 4}, {4, 4}, 2, 2, 64);
  shape.cu_seqlens_q = {0, 7, 8};  // sequence 0 claims 7 rows > max_seqlen_q = 4
  std::mt19937 rng(1);
  const HostTensor q = Random(rng, shape.q_elements(), DType::kBF16), kv = Random(rng, shape.kv_elements(), DType::kBF16);
  AttentionOptions options;
  options.softmax_scale = 0.125f;
  absl::Status st;
  RunForward(*cuda_, shape, options, DType::kBF16, q, kv, kv, &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("cu_seqlens_q"), std::string_view::npos) << st;
}

TEST_F(CudaBackendTest, DescribesItsDevice) {
  const std::vector<DeviceDescription> devices = cuda_->Devices();
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_FALSE(devices[0].name.empty());
  EXPECT_GT(devices[0].multiprocessors, 0);
  EXPECT_GT(devices[0].total_memory_bytes, 0);
  EXPECT_EQ(cuda_->name(), "cuda");
}

}  // namespace
}  // namespace attnd
