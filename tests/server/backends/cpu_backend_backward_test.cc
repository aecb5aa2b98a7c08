// CPU backend backward against the float64 oracle on fresh random inputs.
#include <memory>

#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/server/backends/cpu_backend_cases.h"

namespace attnd::testing {
namespace {

void ExpectGradientsMatch(const BackwardOutputs& got, const ReferenceBackward& want, DType dtype) {
  const std::vector<double> dq = Decode(got.dq), dk = Decode(got.dk), dv = Decode(got.dv);
  EXPECT_EQ(CountNonFinite(dq), 0) << "dQ elements left unwritten (NaN) or not finite";
  EXPECT_EQ(CountNonFinite(dk), 0) << "dK elements left unwritten (NaN) or not finite";
  EXPECT_EQ(CountNonFinite(dv), 0) << "dV elements left unwritten (NaN) or not finite";
  const double scale = Rms(want.grad_v);
  EXPECT_LE(GradientError(dq, want.grad_q, scale), RelTolerance(dtype)) << "dQ";
  EXPECT_LE(GradientError(dk, want.grad_k, scale), RelTolerance(dtype)) << "dK";
  EXPECT_LE(GradientError(dv, want.grad_v, scale), RelTolerance(dtype)) << "dV";
}

class CpuBackendBackward : public ::testing::TestWithParam<CaseAndDType> {};

// The backward is given the oracle's out (rounded to the dtype) and lse, so it is checked on its
// own, independent of the CPU forward.
TEST_P(CpuBackendBackward, MatchesOracleAndWritesEveryElement) {
  const auto& [c, dtype] = GetParam();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const Problem p = MakeProblem(c, dtype, seed);
  std::unique_ptr<Backend> backend = CreateCpuBackend(2);

  const ReferenceForward fwd = ReferenceAttentionForward(p.shape, p.options, p.q.values, p.k.values, p.v.values);
  const ForwardOutputs given = OracleForwardOutputs(p, fwd);
  const BackwardOutputs got = RunBackward(*backend, p, given.out, given.lse);
  const ReferenceBackward want =
      ReferenceAttentionBackward(p.shape, p.options, p.q.values, p.k.values, p.v.values, p.dout.values);
  ExpectGradientsMatch(got, want, dtype);
}

INSTANTIATE_TEST_SUITE_P(Cases, CpuBackendBackward, AllCasesAllDTypes(), CaseName);

// What a client does: the CPU forward's own out and lse fed to the CPU backward.
TEST(CpuBackendForwardThenBackward, MatchesOracle) {
  const AttentionCase c{"varlen_causal_gqa", {40, 0, 90}, {60, 5, 70}, 4, 2, 24, true, true, 0.f};
  for (DType dtype : {DType::kBF16, DType::kFP16, DType::kFP32}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Problem p = MakeProblem(c, dtype, FreshSeed());
    std::unique_ptr<Backend> backend = CreateCpuBackend(2);
    const ForwardOutputs fwd = RunForward(*backend, p);
    const BackwardOutputs got = RunBackward(*backend, p, fwd.out, fwd.lse);
    const ReferenceBackward want =
        ReferenceAttentionBackward(p.shape, p.options, p.q.values, p.k.values, p.v.values, p.dout.values);
    ExpectGradientsMatch(got, want, dtype);
  }
}

}  // namespace
}  // namespace attnd::testing
