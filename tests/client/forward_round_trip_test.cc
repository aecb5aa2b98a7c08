// Forward through the whole path: attnd::Client -> gRPC on loopback -> AttentionServer -> the real
// CPU backend -> back, compared with the float64 oracle on the values that were actually sent.
#include "client/attnd/tensors.h"
#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/client/attention_case.h"
#include "tests/client/client_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd::testing {
namespace {

class ForwardRoundTrip : public CpuLoopbackSuite {};

TEST_P(ForwardRoundTrip, MatchesFloat64Oracle) {
  ASSERT_NE(loopback_->client, nullptr);
  const AttentionCase& c = GetParam();
  const AttentionShape shape = c.Shape();
  const uint64_t seed = std::hash<std::string>()(c.name);
  const std::vector<float> q = RandomNormal(shape.q_elements(), seed);
  const std::vector<float> k = RandomNormal(shape.kv_elements(), seed + 1);
  const std::vector<float> v = RandomNormal(shape.kv_elements(), seed + 2);
  absl::StatusOr<v1::ForwardRequest> request = MakeForwardRequest(shape, c.dtype, c.WireOptions(), q, k, v);
  ASSERT_TRUE(request.ok()) << request.status();

  absl::StatusOr<v1::ForwardResponse> response = loopback_->client->Forward(*request);
  ASSERT_TRUE(response.ok()) << response.status();

  const ReferenceForward want = ReferenceAttentionForward(shape, c.OracleOptions(), AsSent(c.dtype, q),
                                                          AsSent(c.dtype, k), AsSent(c.dtype, v));
  EXPECT_EQ(response->out().dtype(), ToProtoDType(c.dtype));
  EXPECT_EQ(response->lse().dtype(), v1::DTYPE_FP32);
  EXPECT_TRUE(Matches("out", response->out(), WireQShape(shape), want.out, OutputTolerance(c.dtype)));
  EXPECT_TRUE(Matches("lse", response->lse(), WireLseShape(shape), want.lse, 1e-5));
}

AttentionCase Dense(std::string name, DType dtype, int batch, int sq, int sk, int hq, int hkv, int d, bool causal,
                    float scale = 0.f) {
  AttentionCase c;
  c.name = std::move(name);
  c.dtype = dtype;
  c.batch = batch;
  c.seqlen_q = sq;
  c.seqlen_k = sk;
  c.heads_q = hq;
  c.heads_kv = hkv;
  c.head_dim = d;
  c.causal = causal;
  c.softmax_scale = scale;
  return c;
}

AttentionCase Packed(std::string name, DType dtype, std::vector<int> lq, std::vector<int> lk, int hq, int hkv, int d,
                     bool causal) {
  AttentionCase c = Dense(std::move(name), dtype, 0, 0, 0, hq, hkv, d, causal);
  c.packed_q = std::move(lq);
  c.packed_k = std::move(lk);
  return c;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ForwardRoundTrip,
    ::testing::Values(
        Dense("bf16_dense_17", DType::kBF16, 2, 17, 17, 4, 4, 64, false),
        Dense("fp32_dense_causal_128", DType::kFP32, 1, 128, 128, 2, 2, 128, true),
        Dense("fp16_one_query_1000_keys", DType::kFP16, 1, 1, 1000, 2, 2, 32, false),
        Dense("bf16_causal_1000", DType::kBF16, 1, 1000, 1000, 1, 1, 64, true),
        Dense("bf16_causal_q_shorter_than_k", DType::kBF16, 2, 17, 40, 4, 4, 64, true),
        Dense("fp32_causal_q_longer_than_k", DType::kFP32, 1, 40, 17, 2, 2, 32, true),
        Dense("bf16_gqa_causal", DType::kBF16, 1, 33, 33, 8, 2, 64, true),
        Dense("fp16_mqa", DType::kFP16, 2, 20, 31, 4, 1, 64, false),
        Dense("fp32_custom_scale_d256", DType::kFP32, 1, 9, 9, 2, 1, 256, false, 0.3f),
        Dense("bf16_head_dim_17", DType::kBF16, 3, 5, 7, 2, 2, 17, false),
        Packed("bf16_varlen_causal_gqa", DType::kBF16, {1, 17, 5, 30}, {3, 17, 40, 30}, 4, 2, 64, true),
        Packed("fp32_varlen_uneven", DType::kFP32, {7, 1, 25}, {7, 1, 25}, 2, 2, 32, false),
        Packed("fp16_varlen_causal_q_longer", DType::kFP16, {12, 3}, {4, 9}, 2, 1, 16, true)),
    [](const ::testing::TestParamInfo<AttentionCase>& info) { return info.param.name; });

}  // namespace
}  // namespace attnd::testing
