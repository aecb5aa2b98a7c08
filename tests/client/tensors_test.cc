// Tensor helpers: dtype conversions round the way the daemon does, shapes follow the wire layouts,
// and malformed sizes are refused with a message naming the problem.
#include "client/attnd/tensors.h"

#include <cmath>

#include "gtest/gtest.h"
#include "server/core/float16.h"
#include "tests/client/client_test_util.h"

namespace attnd {
namespace {

TEST(Tensors, Fp32RoundTripIsExact) {
  const std::vector<float> x = testing::RandomNormal(1000, 1);
  absl::StatusOr<v1::Tensor> t = MakeTensor(DType::kFP32, {10, 100}, x);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype(), v1::DTYPE_FP32);
  EXPECT_EQ(t->data().size(), 4000u);
  absl::StatusOr<std::vector<float>> back = TensorToFloats(*t);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, x);
}

TEST(Tensors, HalfTypesRoundToNearestEvenLikeFloat16H) {
  const std::vector<float> x = testing::RandomNormal(4096, 2);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    absl::StatusOr<v1::Tensor> t = MakeTensor(dtype, {4096}, x);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ(t->data().size(), 2 * x.size());
    absl::StatusOr<std::vector<float>> back = TensorToFloats(*t);
    ASSERT_TRUE(back.ok()) << back.status();
    double max_rel = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const float expected = dtype == DType::kBF16 ? Bf16ToFloat(FloatToBf16(x[i])) : Fp16ToFloat(FloatToFp16(x[i]));
      ASSERT_EQ((*back)[i], expected) << "element " << i;
      max_rel = std::max(max_rel, std::abs(double{(*back)[i]} - x[i]) / std::abs(double{x[i]}));
    }
    EXPECT_LE(max_rel, dtype == DType::kBF16 ? 1.0 / 256 : 1.0 / 2048) << DTypeName(dtype);
  }
}

TEST(Tensors, LittleEndianBytes) {
  absl::StatusOr<v1::Tensor> t = MakeTensor(DType::kBF16, {2}, std::vector<float>{1.0f, -2.0f});
  ASSERT_TRUE(t.ok());
  // bf16 1.0 = 0x3f80, -2.0 = 0xc000, low byte first.
  EXPECT_EQ(t->data(), std::string("\x80\x3f\x00\xc0", 4));
}

TEST(Tensors, SizeMismatchesAreRefused) {
  EXPECT_EQ(MakeTensor(DType::kFP32, {2, 3}, std::vector<float>(5)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTensorFromBytes(DType::kBF16, {4}, std::string(7, '\0')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MakeTensorFromBytes(DType::kBF16, {4}, std::string(8, '\0')).ok());
  v1::Tensor bad;
  bad.set_dtype(v1::DTYPE_FP16);
  bad.add_shape(3);
  bad.set_data(std::string(5, '\0'));
  absl::Status s = TensorToFloats(bad, "out").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("out"), absl::string_view::npos) << s;
  bad.set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_EQ(TensorToFloats(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

// Found by tests/fuzz (tensor_decoding): a peer's shape whose product overflows 64 bits used to
// wrap, here to 0 elements that "matched" empty data.
TEST(Tensors, ShapesWhoseSizeOverflowsAreRefused) {
  v1::Tensor huge;
  huge.set_dtype(v1::DTYPE_FP32);
  huge.add_shape(int64_t{1} << 62);
  huge.add_shape(4);
  absl::Status s = TensorToFloats(huge, "lse").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("overflows"), absl::string_view::npos) << s;
}

TEST(Tensors, ParseDType) {
  EXPECT_EQ(*ParseDType("bf16"), DType::kBF16);
  EXPECT_EQ(*ParseDType("fp16"), DType::kFP16);
  EXPECT_EQ(*ParseDType("fp32"), DType::kFP32);
  EXPECT_FALSE(ParseDType("fp8").ok());
  EXPECT_FALSE(FromProtoDType(v1::DTYPE_UNSPECIFIED).ok());
}

TEST(Tensors, DenseRequestFollowsTheWireLayout) {
  const AttentionShape shape = DenseShape(2, 5, 7, 4, 2, 8);
  const auto q = testing::RandomNormal(shape.q_elements(), 3);
  const auto kv = testing::RandomNormal(shape.kv_elements(), 4);
  AttentionOptions options;
  options.causal = true;
  options.softmax_scale = 0.25f;
  absl::StatusOr<v1::ForwardRequest> r = MakeForwardRequest(shape, DType::kFP16, options, q, kv, kv);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(std::vector<int64_t>(r->q().shape().begin(), r->q().shape().end()), (std::vector<int64_t>{2, 5, 4, 8}));
  EXPECT_EQ(std::vector<int64_t>(r->k().shape().begin(), r->k().shape().end()), (std::vector<int64_t>{2, 7, 2, 8}));
  EXPECT_EQ(r->v().dtype(), v1::DTYPE_FP16);
  EXPECT_TRUE(r->params().causal());
  EXPECT_EQ(r->params().softmax_scale(), 0.25f);
  EXPECT_TRUE(r->params().cu_seqlens_q().empty());
  EXPECT_EQ(WireLseShape(shape), (std::vector<int64_t>{2, 4, 5}));
  EXPECT_EQ(PayloadBytes(*r), 2 * (shape.q_elements() + 2 * shape.kv_elements()));
}

TEST(Tensors, PackedRequestCarriesCuSeqlens) {
  const AttentionShape shape = PackedShape({3, 1, 17}, {5, 2, 17}, 4, 4, 16);
  const auto q = testing::RandomNormal(shape.q_elements(), 5);
  const auto kv = testing::RandomNormal(shape.kv_elements(), 6);
  absl::StatusOr<v1::ForwardRequest> r = MakeForwardRequest(shape, DType::kBF16, {}, q, kv, kv);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(std::vector<int64_t>(r->q().shape().begin(), r->q().shape().end()), (std::vector<int64_t>{21, 4, 16}));
  EXPECT_EQ(std::vector<int64_t>(r->k().shape().begin(), r->k().shape().end()), (std::vector<int64_t>{24, 4, 16}));
  EXPECT_EQ(std::vector<int32_t>(r->params().cu_seqlens_q().begin(), r->params().cu_seqlens_q().end()),
            (std::vector<int32_t>{0, 3, 4, 21}));
  EXPECT_EQ(std::vector<int32_t>(r->params().cu_seqlens_k().begin(), r->params().cu_seqlens_k().end()),
            (std::vector<int32_t>{0, 5, 7, 24}));
  EXPECT_EQ(WireLseShape(shape), (std::vector<int64_t>{4, 21}));
}

TEST(Tensors, RequestBuildersNameTheBadTensor) {
  const AttentionShape shape = DenseShape(1, 4, 4, 2, 2, 8);
  const auto q = testing::RandomNormal(shape.q_elements(), 7);
  absl::Status s = MakeForwardRequest(shape, DType::kFP32, {}, q, q, std::vector<float>(3)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message().substr(0, 2), "v:") << s;
  const auto lse = std::vector<float>(shape.lse_elements() + 1);
  s = MakeBackwardRequest(shape, DType::kFP32, {}, q, q, q, q, lse, q).status();
  EXPECT_EQ(s.message().substr(0, 4), "lse:") << s;
}

TEST(Tensors, BackwardRequestFromAForwardCall) {
  const AttentionShape shape = DenseShape(1, 3, 3, 1, 1, 4);
  const auto x = testing::RandomNormal(shape.q_elements(), 8);
  v1::ForwardRequest forward = *MakeForwardRequest(shape, DType::kFP32, {}, x, x, x);
  v1::ForwardResponse response;
  *response.mutable_out() = forward.q();
  *response.mutable_lse() = *MakeTensor(DType::kFP32, WireLseShape(shape), std::vector<float>(3, 1.f));
  v1::BackwardRequest backward = MakeBackwardRequest(forward, response, forward.v());
  EXPECT_EQ(backward.q().data(), forward.q().data());
  EXPECT_EQ(backward.lse().data(), response.lse().data());
  EXPECT_EQ(backward.grad_out().data(), forward.v().data());
  EXPECT_EQ(PayloadBytes(backward), 4 * (5 * 12 + 3));
}

}  // namespace
}  // namespace attnd
