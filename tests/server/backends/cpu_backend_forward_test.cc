// CPU backend forward against the float64 oracle on fresh random inputs.
#include <memory>

#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/server/backends/cpu_backend_cases.h"

namespace attnd::testing {
namespace {

class CpuBackendForward : public ::testing::TestWithParam<CaseAndDType> {};

TEST_P(CpuBackendForward, MatchesOracleAndWritesEveryElement) {
  const auto& [c, dtype] = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const Problem p = MakeProblem(c, dtype, seed);
  std::unique_ptr<Backend> backend = CreateCpuBackend(2);
  ASSERT_TRUE(backend->CheckSupported(p.shape, dtype).ok());

  const ForwardOutputs got = RunForward(*backend, p);
  const ReferenceForward want =
      ReferenceAttentionForward(p.shape, p.options, p.q.values, p.k.values, p.v.values);

  const std::vector<double> out = Decode(got.out);
  EXPECT_EQ(CountNonFinite(out), 0) << "out elements left unwritten (NaN) or not finite";
  EXPECT_LE(RelativeL2Error(out, want.out), RelTolerance(dtype));
  EXPECT_EQ(CompareLse(got.lse, want.lse, dtype), 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, CpuBackendForward, AllCasesAllDTypes(), CaseName);

// Causal with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k rows see no key at all.
TEST(CpuBackendForwardMasking, RowsThatSeeNoKeyGiveZeroOutAndInfiniteLse) {
  const AttentionCase c{"q9_k4_causal", {9}, {4}, 2, 1, 8, true, false, 0.f};
  const Problem p = MakeProblem(c, DType::kFP32, FreshSeed());
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  const ForwardOutputs got = RunForward(*backend, p);
  const std::vector<double> out = Decode(got.out);
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 9; ++i) {
      const float lse = got.lse[size_t(p.shape.LseIndex(0, h, i))];
      if (i < 5) {
        EXPECT_TRUE(std::isinf(lse) && lse > 0) << "row " << i << " head " << h << " lse " << lse;
        for (int d = 0; d < 8; ++d) EXPECT_EQ(out[size_t((i * 2 + h) * 8 + d)], 0.0);
      } else {
        EXPECT_TRUE(std::isfinite(lse)) << "row " << i << " head " << h;
      }
    }
  }
}

// An empty key sequence: every query row of that sequence is fully masked, causal or not.
TEST(CpuBackendForwardMasking, EmptyKeySequenceGivesZeroOutAndInfiniteLse) {
  for (bool causal : {false, true}) {
    const AttentionCase c{"empty_k", {3, 2}, {0, 5}, 1, 1, 4, causal, true, 0.f};
    const Problem p = MakeProblem(c, DType::kBF16, FreshSeed());
    std::unique_ptr<Backend> backend = CreateCpuBackend(2);
    const ForwardOutputs got = RunForward(*backend, p);
    const std::vector<double> out = Decode(got.out);
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(std::isinf(got.lse[size_t(p.shape.LseIndex(0, 0, i))]));
      for (int d = 0; d < 4; ++d) EXPECT_EQ(out[size_t(i * 4 + d)], 0.0);
    }
    EXPECT_EQ(CountNonFinite(out), 0);
  }
}

// A NaN in the input is not hidden: the rows it reaches come out NaN (not, say, as a fully masked
// row with out = 0), and every other row stays exact.
TEST(CpuBackendForwardMasking, NanInputPropagatesToTheRowsItReaches) {
  const AttentionCase c{"nan", {4}, {6}, 2, 1, 8, false, false, 0.f};
  for (DType dtype : {DType::kBF16, DType::kFP32}) {
    Problem p = MakeProblem(c, dtype, FreshSeed());
    std::vector<double> q = p.q.values;
    q[(2 * 2 + 1) * 8 + 3] = std::numeric_limits<double>::quiet_NaN();  // row 2, head 1, dim 3
    p.q = Encode(dtype, q);
    std::unique_ptr<Backend> backend = CreateCpuBackend(2);
    const ForwardOutputs got = RunForward(*backend, p);
    const std::vector<double> out = Decode(got.out);
    for (int i = 0; i < 4; ++i) {
      for (int h = 0; h < 2; ++h) {
        const bool hit = i == 2 && h == 1;
        EXPECT_EQ(std::isnan(got.lse[size_t(p.shape.LseIndex(0, h, i))]), hit) << i << " " << h;
        for (int d = 0; d < 8; ++d) EXPECT_EQ(std::isnan(out[size_t((i * 2 + h) * 8 + d)]), hit) << i << " " << h;
      }
    }
  }
}

}  // namespace
}  // namespace attnd::testing
