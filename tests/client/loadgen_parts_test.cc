// The load generator's parts: percentiles, the response check (which must catch wrong numbers, not
// just pass right ones), and payloads that are random, rotated and sized as the flags say.
#include <cmath>

#include "client/attnd/tensors.h"
#include "client/loadgen/latency_stats.h"
#include "client/loadgen/payloads.h"
#include "client/loadgen/response_check.h"
#include "gtest/gtest.h"
#include "tests/client/client_test_util.h"

namespace attnd::loadgen {
namespace {

TEST(LatencyStats, NearestRankPercentiles) {
  std::vector<double> ms;
  for (int i = 100; i >= 1; --i) ms.push_back(i);
  const LatencySummary s = Summarize(ms);
  EXPECT_EQ(s.count, 100);
  EXPECT_EQ(s.p50_ms, 50);
  EXPECT_EQ(s.p90_ms, 90);
  EXPECT_EQ(s.p99_ms, 99);
  EXPECT_EQ(s.max_ms, 100);
  EXPECT_EQ(s.min_ms, 1);
  EXPECT_DOUBLE_EQ(s.mean_ms, 50.5);
  EXPECT_EQ(Summarize({7}).p99_ms, 7);
  EXPECT_EQ(Summarize({}).count, 0);
}

v1::Tensor Floats(DType dtype, std::vector<int64_t> shape, const std::vector<float>& x) {
  return *MakeTensor(dtype, std::move(shape), x);
}

TEST(ResponseCheck, AcceptsRoundingAndRejectsWrongNumbers) {
  const std::vector<float> want = testing::RandomNormal(512, 1);
  std::vector<float> close = want, wrong = want, nan = want;
  for (float& x : close) x *= 1.001f;
  for (float& x : wrong) x += 0.5f;
  nan[17] = NAN;
  const v1::Tensor w = Floats(DType::kFP32, {512}, want);
  EXPECT_TRUE(CompareTensor("out", Floats(DType::kFP32, {512}, close), w, 1e-2).ok);
  const CheckResult bad = CompareTensor("out", Floats(DType::kFP32, {512}, wrong), w, 1e-2);
  EXPECT_FALSE(bad.ok);
  EXPECT_GT(bad.max_rel_l2, 0.1);
  EXPECT_NE(bad.detail.find("out"), std::string::npos);
  EXPECT_FALSE(CompareTensor("out", Floats(DType::kFP32, {512}, nan), w, 1e-2).ok);
  EXPECT_FALSE(CompareTensor("out", Floats(DType::kFP32, {2, 256}, want), w, 1e-2).ok);
  EXPECT_FALSE(CompareTensor("out", Floats(DType::kBF16, {512}, want), w, 1e-2).ok);
}

TEST(ResponseCheck, InfinitiesMustSitInTheSamePlaces) {
  std::vector<float> lse = {1.f, INFINITY, 2.f};
  const v1::Tensor want = Floats(DType::kFP32, {3}, lse);
  EXPECT_TRUE(CompareTensor("lse", want, want, 1e-6).ok);
  lse[1] = 3.f;
  EXPECT_FALSE(CompareTensor("lse", Floats(DType::kFP32, {3}, lse), want, 1e-6).ok);
}

TEST(Payloads, RandomRotatedAndSized) {
  LoadSpec spec;
  spec.batch = 2;
  spec.seqlen_q = 33;
  spec.seqlen_k = 17;
  spec.heads_q = 4;
  spec.heads_kv = 2;
  spec.head_dim = 16;
  spec.dtype = DType::kBF16;
  spec.payloads = 3;
  spec.check = true;
  absl::StatusOr<std::vector<Payload>> payloads = BuildPayloads(spec);
  ASSERT_TRUE(payloads.ok()) << payloads.status();
  ASSERT_EQ(payloads->size(), 3u);
  for (const Payload& p : *payloads) {
    ASSERT_TRUE(p.forward);
    ASSERT_TRUE(p.expected_forward.has_value());
    EXPECT_EQ(p.request_bytes, 2 * (2 * 33 * 4 * 16 + 2 * 2 * 17 * 2 * 16));
    EXPECT_EQ(p.response_bytes, 2 * 2 * 33 * 4 * 16 + 4 * 2 * 4 * 33);
    EXPECT_DOUBLE_EQ(p.flops, 4.0 * 2 * 33 * 17 * 4 * 16);
    // Not zeros: a payload of zeros would hide layout bugs.
    absl::StatusOr<std::vector<float>> q = TensorToFloats(p.forward->q());
    ASSERT_TRUE(q.ok());
    double sum2 = 0;
    for (float x : *q) sum2 += x * x;
    EXPECT_GT(sum2 / q->size(), 0.5);
  }
  EXPECT_NE((*payloads)[0].forward->q().data(), (*payloads)[1].forward->q().data());
}

TEST(Payloads, BackwardPayloadsCarryALocalForward) {
  LoadSpec spec;
  spec.batch = 3;
  spec.seqlen_q = 20;
  spec.heads_q = 2;
  spec.head_dim = 8;
  spec.dtype = DType::kFP32;
  spec.causal = true;
  spec.varlen = true;
  spec.direction = Direction::kBackward;
  spec.payloads = 2;
  spec.check = true;
  absl::StatusOr<std::vector<Payload>> payloads = BuildPayloads(spec);
  ASSERT_TRUE(payloads.ok()) << payloads.status();
  for (const Payload& p : *payloads) {
    ASSERT_TRUE(p.backward);
    ASSERT_TRUE(p.expected_backward.has_value());
    EXPECT_TRUE(p.shape.packed);
    EXPECT_EQ(p.backward->params().cu_seqlens_q_size(), 4);
    EXPECT_EQ(p.backward->lse().shape(1), p.shape.total_q);
    EXPECT_EQ(p.backward->out().data().size(), p.backward->q().data().size());
  }
}

}  // namespace
}  // namespace attnd::loadgen
