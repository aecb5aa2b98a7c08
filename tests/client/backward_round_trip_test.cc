// Backward through the whole path: forward over the wire, then the BackwardRequest built from that
// forward's response, compared with the float64 oracle's gradients (which recompute everything from
// q, k, v and grad_out and do not trust the daemon's out or lse).
#include "client/attnd/tensors.h"
#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/client/attention_case.h"
#include "tests/client/client_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd::testing {
namespace {

// Gradients pass through the rounded out of the forward and are rounded once more.
double GradTolerance(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return 1e-2;
    case DType::kFP16: return 2e-3;
    case DType::kFP32: return 1e-5;
  }
  return 0;
}

class BackwardRoundTrip : public CpuLoopbackSuite {};

TEST_P(BackwardRoundTrip, MatchesFloat64Oracle) {
  ASSERT_NE(loopback_->client, nullptr);
  const AttentionCase& c = GetParam();
  const AttentionShape shape = c.Shape();
  const uint64_t seed = std::hash<std::string>()(c.name);
  const std::vector<float> q = RandomNormal(shape.q_elements(), seed);
  const std::vector<float> k = RandomNormal(shape.kv_elements(), seed + 1);
  const std::vector<float> v = RandomNormal(shape.kv_elements(), seed + 2);
  const std::vector<float> grad_out = RandomNormal(shape.q_elements(), seed + 3);
  absl::StatusOr<v1::ForwardRequest> forward = MakeForwardRequest(shape, c.dtype, c.WireOptions(), q, k, v);
  ASSERT_TRUE(forward.ok()) << forward.status();
  absl::StatusOr<v1::ForwardResponse> forward_response = loopback_->client->Forward(*forward);
  ASSERT_TRUE(forward_response.ok()) << forward_response.status();

  absl::StatusOr<v1::Tensor> grad_out_tensor = MakeTensor(c.dtype, WireQShape(shape), grad_out);
  ASSERT_TRUE(grad_out_tensor.ok());
  const v1::BackwardRequest request = MakeBackwardRequest(*forward, *forward_response, *grad_out_tensor);
  absl::StatusOr<v1::BackwardResponse> response = loopback_->client->Backward(request);
  ASSERT_TRUE(response.ok()) << response.status();

  const ReferenceBackward want =
      ReferenceAttentionBackward(shape, c.OracleOptions(), AsSent(c.dtype, q), AsSent(c.dtype, k),
                                 AsSent(c.dtype, v), AsSent(c.dtype, grad_out));
  const double tol = GradTolerance(c.dtype);
  EXPECT_TRUE(Matches("grad_q", response->grad_q(), WireQShape(shape), want.grad_q, tol));
  EXPECT_TRUE(Matches("grad_k", response->grad_k(), WireKVShape(shape), want.grad_k, tol));
  EXPECT_TRUE(Matches("grad_v", response->grad_v(), WireKVShape(shape), want.grad_v, tol));
}

AttentionCase Case(std::string name, DType dtype, int batch, int sq, int sk, int hq, int hkv, int d, bool causal) {
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
  return c;
}

AttentionCase Packed(std::string name, DType dtype, std::vector<int> lq, std::vector<int> lk, int hq, int hkv, int d,
                     bool causal) {
  AttentionCase c = Case(std::move(name), dtype, 0, 0, 0, hq, hkv, d, causal);
  c.packed_q = std::move(lq);
  c.packed_k = std::move(lk);
  return c;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BackwardRoundTrip,
    ::testing::Values(Case("bf16_dense_64", DType::kBF16, 1, 64, 64, 2, 2, 64, false),
                      Case("fp32_gqa_causal_q_shorter", DType::kFP32, 2, 17, 23, 4, 2, 32, true),
                      Case("fp32_causal_q_longer_than_k", DType::kFP32, 1, 20, 9, 2, 2, 16, true),
                      Case("bf16_causal_127", DType::kBF16, 1, 127, 127, 2, 1, 64, true),
                      Packed("fp16_varlen_causal_mqa", DType::kFP16, {5, 17, 1}, {9, 17, 3}, 2, 1, 16, true)),
    [](const ::testing::TestParamInfo<AttentionCase>& info) { return info.param.name; });

}  // namespace
}  // namespace attnd::testing
