// Request validation: every malformed request is refused with the right code and a message that
// names the field; well-formed requests (dense, packed, GQA, every dtype) become the shape the
// backend expects, with tensors used in place.
#include "server/service/request_validation.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "tests/server/service/service_test_util.h"

namespace attnd {
namespace {

using testing::BackwardRequestFor;
using testing::DenseForwardRequest;
using testing::PackedForwardRequest;
using testing::RequestSpec;

struct ForwardCase {
  std::string name;
  std::function<void(v1::ForwardRequest&)> mutate;
  absl::StatusCode code;
  std::string field;  // the message must start with it
  bool packed = false;
};

v1::ForwardRequest DenseBase() { return DenseForwardRequest(RequestSpec{}); }
v1::ForwardRequest PackedBase() { return PackedForwardRequest({3, 1, 4}, {2, 0, 5}, 4, 2, 16, DType::kFP16); }

std::vector<ForwardCase> ForwardCases() {
  using C = absl::StatusCode;
  const C kInvalid = C::kInvalidArgument;
  std::vector<ForwardCase> c = {
      {"missing q", [](auto& r) { r.clear_q(); }, kInvalid, "q: missing"},
      {"missing k", [](auto& r) { r.clear_k(); }, kInvalid, "k: missing"},
      {"missing v", [](auto& r) { r.clear_v(); }, kInvalid, "v: missing"},
      {"dtype unspecified", [](auto& r) { r.mutable_q()->set_dtype(v1::DTYPE_UNSPECIFIED); }, kInvalid, "q.dtype"},
      {"dtype unknown", [](auto& r) { r.mutable_k()->set_dtype(static_cast<v1::DType>(42)); }, kInvalid, "k.dtype"},
      {"k dtype differs", [](auto& r) { r.mutable_k()->set_dtype(v1::DTYPE_FP16); }, kInvalid, "k.dtype"},
      {"v dtype differs", [](auto& r) { r.mutable_v()->set_dtype(v1::DTYPE_FP32); }, kInvalid, "v.dtype"},
      {"q rank 2", [](auto& r) { r.mutable_q()->mutable_shape()->Truncate(2); }, kInvalid, "q.shape: expected rank 4"},
      {"q rank 5", [](auto& r) { r.mutable_q()->add_shape(1); }, kInvalid, "q.shape"},
      {"k rank differs from q", [](auto& r) { r.mutable_k()->mutable_shape()->Truncate(3); }, kInvalid, "k.shape"},
      {"zero dim", [](auto& r) { r.mutable_q()->set_shape(1, 0); }, kInvalid, "q.shape[1] (seqlen_q)"},
      {"negative dim", [](auto& r) { r.mutable_v()->set_shape(2, -2); }, kInvalid, "v.shape[2] (heads_kv)"},
      {"absurd dim", [](auto& r) { r.mutable_k()->set_shape(1, int64_t{1} << 40); }, kInvalid, "k.shape[1] (seqlen_k)"},
      {"overflowing product",
       [](auto& r) {
         // Every dim is legal on its own (head_dim 16); their product is not.
         for (int i = 0; i < 3; ++i) r.mutable_q()->set_shape(i, std::numeric_limits<int32_t>::max());
         for (int i = 0; i < 3; ++i) r.mutable_k()->set_shape(i, std::numeric_limits<int32_t>::max());
         *r.mutable_v()->mutable_shape() = r.k().shape();
       },
       kInvalid, "q.shape: ["},
      {"batch disagrees", [](auto& r) { r.mutable_k()->set_shape(0, 3); }, kInvalid, "k.shape[0] (batch)"},
      {"head_dim disagrees", [](auto& r) { r.mutable_k()->set_shape(3, 8); }, kInvalid, "k.shape[3] (head_dim)"},
      {"v unlike k", [](auto& r) { r.mutable_v()->set_shape(1, 6); }, kInvalid, "v.shape"},
      {"heads not divisible",
       [](auto& r) {
         r.mutable_k()->set_shape(2, 3);
         r.mutable_v()->set_shape(2, 3);
       },
       kInvalid, "k.shape[2] (heads_kv)"},
      {"head_dim too large",
       [](auto& r) {
         for (auto* t : {r.mutable_q(), r.mutable_k(), r.mutable_v()}) t->set_shape(3, 300);
       },
       kInvalid, "q.shape[3] (head_dim)"},
      {"q bytes short", [](auto& r) { r.mutable_q()->mutable_data()->pop_back(); }, kInvalid, "q.data"},
      {"v bytes long", [](auto& r) { r.mutable_v()->mutable_data()->append("xx"); }, kInvalid, "v.data"},
      {"k bytes empty", [](auto& r) { r.mutable_k()->clear_data(); }, kInvalid, "k.data"},
      {"scale NaN", [](auto& r) { r.mutable_params()->set_softmax_scale(std::nanf("")); }, kInvalid,
       "params.softmax_scale"},
      {"scale inf",
       [](auto& r) { r.mutable_params()->set_softmax_scale(std::numeric_limits<float>::infinity()); }, kInvalid,
       "params.softmax_scale"},
      {"scale negative", [](auto& r) { r.mutable_params()->set_softmax_scale(-0.5f); }, kInvalid,
       "params.softmax_scale"},
      {"dense with cu_seqlens_q", [](auto& r) { r.mutable_params()->add_cu_seqlens_q(0); }, kInvalid,
       "params.cu_seqlens_q"},
      {"dense with cu_seqlens_k", [](auto& r) { r.mutable_params()->add_cu_seqlens_k(0); }, kInvalid,
       "params.cu_seqlens_k"},
  };
  std::vector<ForwardCase> packed = {
      {"packed without cu_seqlens",
       [](auto& r) {
         r.mutable_params()->clear_cu_seqlens_q();
         r.mutable_params()->clear_cu_seqlens_k();
       },
       kInvalid, "params.cu_seqlens_q"},
      {"packed without cu_seqlens_k", [](auto& r) { r.mutable_params()->clear_cu_seqlens_k(); }, kInvalid,
       "params.cu_seqlens_k"},
      {"cu_seqlens sizes differ", [](auto& r) { r.mutable_params()->mutable_cu_seqlens_k()->RemoveLast(); },
       kInvalid, "params.cu_seqlens_k"},
      {"cu_seqlens one entry",
       [](auto& r) {
         r.mutable_params()->mutable_cu_seqlens_q()->Truncate(1);
         r.mutable_params()->mutable_cu_seqlens_k()->Truncate(1);
       },
       kInvalid, "params.cu_seqlens_q"},
      {"cu_seqlens first not 0", [](auto& r) { r.mutable_params()->set_cu_seqlens_q(0, 1); }, kInvalid,
       "params.cu_seqlens_q[0]"},
      {"cu_seqlens decreasing", [](auto& r) { r.mutable_params()->set_cu_seqlens_k(2, 1); }, kInvalid,
       "params.cu_seqlens_k[2]"},
      {"cu_seqlens last != total_q", [](auto& r) { r.mutable_params()->set_cu_seqlens_q(3, 7); }, kInvalid,
       "params.cu_seqlens_q[3]"},
      {"cu_seqlens last != total_k", [](auto& r) { r.mutable_params()->set_cu_seqlens_k(3, 8); }, kInvalid,
       "params.cu_seqlens_k[3]"},
      {"packed k rank 4", [](auto& r) { r.mutable_k()->add_shape(1); }, kInvalid, "k.shape: expected rank 3"},
      {"packed head_dim disagrees", [](auto& r) { r.mutable_v()->set_shape(2, 8); }, kInvalid, "v.shape"},
      {"packed heads not divisible",
       [](auto& r) {
         r.mutable_q()->set_shape(1, 5);
         r.mutable_q()->mutable_data()->resize(8 * 5 * 16 * 2);
       },
       kInvalid, "k.shape[1] (heads_kv)"},
  };
  for (auto& p : packed) {
    p.packed = true;
    c.push_back(std::move(p));
  }
  return c;
}

TEST(RequestValidationTest, BadForwardRequestsNameTheField) {
  RequestLimits limits;
  for (const ForwardCase& c : ForwardCases()) {
    SCOPED_TRACE(c.name);
    v1::ForwardRequest r = c.packed ? PackedBase() : DenseBase();
    ASSERT_TRUE(ValidateForwardRequest(r, limits, nullptr).ok()) << "the base request must be valid";
    c.mutate(r);
    absl::StatusOr<ValidatedForward> v = ValidateForwardRequest(r, limits, nullptr);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.status().code(), c.code) << v.status();
    EXPECT_EQ(v.status().message().substr(0, c.field.size()), c.field) << v.status();
  }
}

TEST(RequestValidationTest, BadForwardRequestsAreRefusedBeforeAskingTheBackend) {
  auto state = std::make_shared<testing::FakeBackendState>();
  testing::FakeBackend backend(state);
  for (const ForwardCase& c : ForwardCases()) {
    v1::ForwardRequest r = c.packed ? PackedBase() : DenseBase();
    c.mutate(r);
    EXPECT_FALSE(ValidateForwardRequest(r, RequestLimits{}, &backend).ok()) << c.name;
  }
  EXPECT_EQ(state->Checks(), 0);
}

TEST(RequestValidationTest, BadBackwardRequestsNameTheField) {
  struct BackwardCase {
    std::string name;
    std::function<void(v1::BackwardRequest&)> mutate;
    std::string field;
    bool packed = false;
  };
  const std::vector<BackwardCase> cases = {
      {"missing out", [](auto& r) { r.clear_out(); }, "out: missing"},
      {"missing lse", [](auto& r) { r.clear_lse(); }, "lse: missing"},
      {"missing grad_out", [](auto& r) { r.clear_grad_out(); }, "grad_out: missing"},
      {"missing q", [](auto& r) { r.clear_q(); }, "q: missing"},
      {"out dtype differs", [](auto& r) { r.mutable_out()->set_dtype(v1::DTYPE_FP16); }, "out.dtype"},
      {"grad_out dtype unspecified", [](auto& r) { r.mutable_grad_out()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       "grad_out.dtype"},
      {"out shape differs", [](auto& r) { r.mutable_out()->set_shape(1, 4); }, "out.shape"},
      {"grad_out rank differs", [](auto& r) { r.mutable_grad_out()->mutable_shape()->Truncate(3); },
       "grad_out.shape"},
      {"out bytes short", [](auto& r) { r.mutable_out()->mutable_data()->resize(10); }, "out.data"},
      {"lse not fp32", [](auto& r) { r.mutable_lse()->set_dtype(v1::DTYPE_BF16); }, "lse.dtype"},
      {"lse dense shape transposed",
       [](auto& r) {
         r.mutable_lse()->set_shape(1, 5);
         r.mutable_lse()->set_shape(2, 4);
       },
       "lse.shape"},
      {"lse bytes short", [](auto& r) { r.mutable_lse()->mutable_data()->resize(4); }, "lse.data"},
      {"lse packed given dense shape",
       [](auto& r) {
         r.mutable_lse()->clear_shape();
         for (int64_t d : {3, 4, 8}) r.mutable_lse()->add_shape(d);
       },
       "lse.shape", true},
      {"k bytes short in backward", [](auto& r) { r.mutable_k()->mutable_data()->resize(2); }, "k.data"},
  };
  for (const BackwardCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::BackwardRequest r = BackwardRequestFor(c.packed ? PackedBase() : DenseBase());
    ASSERT_TRUE(ValidateBackwardRequest(r, RequestLimits{}, nullptr).ok());
    c.mutate(r);
    absl::StatusOr<ValidatedBackward> v = ValidateBackwardRequest(r, RequestLimits{}, nullptr);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << v.status();
    EXPECT_EQ(v.status().message().substr(0, c.field.size()), c.field) << v.status();
  }
}

TEST(RequestValidationTest, RequestOverByteLimitIsResourceExhausted) {
  v1::ForwardRequest r = DenseBase();  // 2*5*4*16*2 + 2 * 2*7*2*16*2 = 3072 bytes
  RequestLimits limits;
  limits.max_request_bytes = 3071;
  absl::StatusOr<ValidatedForward> v = ValidateForwardRequest(r, limits, nullptr);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(v.status().message(), "request")) << v.status();
  limits.max_request_bytes = 3072;
  EXPECT_TRUE(ValidateForwardRequest(r, limits, nullptr).ok());
}

TEST(RequestValidationTest, ResponseOverByteLimitIsResourceExhausted) {
  // head_dim 1 in bf16: the FP32 lse is twice the bytes of q, so the response outgrows the request.
  RequestSpec spec;
  spec.head_dim = 1;
  v1::ForwardRequest r = DenseForwardRequest(spec);
  const int64_t request_bytes = r.q().data().size() + r.k().data().size() + r.v().data().size();
  const int64_t response_bytes = r.q().data().size() * 3;
  ASSERT_GT(response_bytes, request_bytes);
  RequestLimits limits;
  limits.max_request_bytes = request_bytes;
  absl::StatusOr<ValidatedForward> v = ValidateForwardRequest(r, limits, nullptr);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(v.status().message(), "response: out + lse")) << v.status();
}

TEST(RequestValidationTest, TokensOverLimitAreResourceExhausted) {
  v1::ForwardRequest r = DenseBase();  // total_q = 10, total_k = 14
  RequestLimits limits;
  limits.max_tokens_per_request = 9;
  absl::StatusOr<ValidatedForward> v = ValidateForwardRequest(r, limits, nullptr);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(v.status().message(), "q.shape")) << v.status();
  limits.max_tokens_per_request = 13;
  v = ValidateForwardRequest(r, limits, nullptr);
  ASSERT_FALSE(v.ok());
  EXPECT_TRUE(absl::StartsWith(v.status().message(), "k.shape")) << v.status();
  limits.max_tokens_per_request = 14;
  EXPECT_TRUE(ValidateForwardRequest(r, limits, nullptr).ok());
}

TEST(RequestValidationTest, BackendRefusalIsPassedOn) {
  auto state = std::make_shared<testing::FakeBackendState>();
  state->head_dims = {64, 128};
  testing::FakeBackend backend(state);
  absl::StatusOr<ValidatedForward> v = ValidateForwardRequest(DenseBase(), RequestLimits{}, &backend);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(v.status().message(), "q.shape")) << v.status();
  RequestSpec spec;
  spec.head_dim = 64;
  EXPECT_TRUE(ValidateForwardRequest(DenseForwardRequest(spec), RequestLimits{}, &backend).ok());
}

TEST(RequestValidationTest, DenseRequestBecomesUniformPackedShape) {
  RequestSpec spec;  // batch 2, sq 5, sk 7, hq 4, hkv 2, d 16, bf16
  spec.causal = true;
  v1::ForwardRequest r = DenseForwardRequest(spec);
  absl::StatusOr<ValidatedForward> v = ValidateForwardRequest(r, RequestLimits{}, nullptr);
  ASSERT_TRUE(v.ok()) << v.status();
  const AttentionShape& s = v->shape;
  EXPECT_FALSE(s.packed);
  EXPECT_EQ(s.batch, 2);
  EXPECT_EQ(s.heads_q, 4);
  EXPECT_EQ(s.heads_kv, 2);
  EXPECT_EQ(s.head_dim, 16);
  EXPECT_EQ(s.max_seqlen_q, 5);
  EXPECT_EQ(s.max_seqlen_k, 7);
  EXPECT_EQ(s.total_q, 10);
  EXPECT_EQ(s.total_k, 14);
  EXPECT_EQ(s.cu_seqlens_q, (std::vector<int32_t>{0, 5, 10}));
  EXPECT_EQ(s.cu_seqlens_k, (std::vector<int32_t>{0, 7, 14}));
  EXPECT_EQ(v->dtype, DType::kBF16);
  EXPECT_TRUE(v->options.causal);
  EXPECT_FLOAT_EQ(v->options.softmax_scale, 0.25f);  // 0 -> 1/sqrt(16)
  EXPECT_EQ(LseShape(s), (std::vector<int64_t>{2, 4, 5}));
  // In place: the backend reads protobuf's own buffers.
  EXPECT_EQ(v->q.data(), r.q().data().data());
  EXPECT_EQ(v->k.data(), r.k().data().data());
  EXPECT_EQ(v->v.data(), r.v().data().data());
}

TEST(RequestValidationTest, PackedRequestKeepsItsOffsets) {
  v1::ForwardRequest r = PackedBase();  // q lens {3,1,4}, k lens {2,0,5}, hq 4, hkv 2, d 16, fp16
  r.mutable_params()->set_softmax_scale(0.5f);
  r.mutable_params()->set_deterministic(true);
  absl::StatusOr<ValidatedForward> v = ValidateForwardRequest(r, RequestLimits{}, nullptr);
  ASSERT_TRUE(v.ok()) << v.status();
  const AttentionShape& s = v->shape;
  EXPECT_TRUE(s.packed);
  EXPECT_EQ(s.batch, 3);
  EXPECT_EQ(s.total_q, 8);
  EXPECT_EQ(s.total_k, 7);
  EXPECT_EQ(s.max_seqlen_q, 4);
  EXPECT_EQ(s.max_seqlen_k, 5);
  EXPECT_EQ(s.cu_seqlens_q, (std::vector<int32_t>{0, 3, 4, 8}));
  EXPECT_EQ(s.cu_seqlens_k, (std::vector<int32_t>{0, 2, 2, 7}));
  EXPECT_EQ(v->dtype, DType::kFP16);
  EXPECT_FLOAT_EQ(v->options.softmax_scale, 0.5f);
  EXPECT_TRUE(v->options.deterministic);
  EXPECT_EQ(LseShape(s), (std::vector<int64_t>{4, 8}));
}

TEST(RequestValidationTest, EveryDtypeAndMultiQueryAttentionPass) {
  for (DType dtype : {DType::kBF16, DType::kFP16, DType::kFP32}) {
    for (int heads_kv : {1, 2, 4}) {
      RequestSpec spec;
      spec.dtype = dtype;
      spec.heads_kv = heads_kv;
      spec.head_dim = 256;
      v1::ForwardRequest r = DenseForwardRequest(spec);
      EXPECT_TRUE(ValidateForwardRequest(r, RequestLimits{}, nullptr).ok()) << DTypeName(dtype) << heads_kv;
      v1::BackwardRequest b = BackwardRequestFor(r);
      absl::StatusOr<ValidatedBackward> vb = ValidateBackwardRequest(b, RequestLimits{}, nullptr);
      ASSERT_TRUE(vb.ok()) << vb.status();
      EXPECT_EQ(vb->lse.data(), b.lse().data().data());
      EXPECT_EQ(vb->grad_out.data(), b.grad_out().data().data());
    }
  }
}

TEST(RequestValidationTest, MisalignedBytesAreCopiedToAlignedStorage) {
  std::string buffer(4 * 9 + 1, '\0');
  for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<char>(i);
  const std::string_view aligned(buffer.data(), 36);
  const std::string_view misaligned(buffer.data() + 1, 36);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(aligned.data()) % 4, 0u);

  TensorBytes in_place = TensorBytes::View(aligned, 4);
  EXPECT_EQ(in_place.data(), aligned.data());
  TensorBytes copied = TensorBytes::View(misaligned, 4);
  EXPECT_NE(copied.data(), misaligned.data());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(copied.data()) % 8, 0u);
  EXPECT_EQ(copied.size(), 36);
  EXPECT_EQ(std::memcmp(copied.data(), misaligned.data(), 36), 0);
  TensorBytes moved = std::move(copied);
  EXPECT_EQ(std::memcmp(moved.data(), misaligned.data(), 36), 0);
}

TEST(RequestValidationTest, DTypeConversions) {
  for (DType d : {DType::kBF16, DType::kFP16, DType::kFP32}) {
    absl::StatusOr<DType> back = FromProto(ToProto(d), "x");
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, d);
  }
  EXPECT_TRUE(absl::StartsWith(FromProto(0, "lse.dtype").status().message(), "lse.dtype: DTYPE_UNSPECIFIED"));
  EXPECT_TRUE(absl::StartsWith(FromProto(9, "q.dtype").status().message(), "q.dtype: unknown value 9"));
}

}  // namespace
}  // namespace attnd
