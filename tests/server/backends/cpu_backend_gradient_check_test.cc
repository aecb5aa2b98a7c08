// Gradients checked by finite differences on tiny shapes, in two steps:
//   (a) the float64 oracle's backward against central differences of the oracle's own forward,
//       so the ground truth itself is verified;
//   (b) the CPU backend's FP32 backward against the (now verified) oracle gradients, element by
//       element; and, independent of the oracle, against central differences of the CPU forward.
#include <cmath>
#include <functional>
#include <memory>

#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/server/backends/attention_case.h"

namespace attnd::testing {
namespace {

std::vector<AttentionCase> TinyCases() {
  return {
      // Causal, packed, seqlen_q > seqlen_k and < seqlen_k, an empty key sequence, GQA.
      {"varlen_causal_gqa", {3, 4, 2}, {5, 2, 0}, 4, 2, 3, true, true, 0.f},
      // Dense, not causal, MQA, odd head_dim, custom scale.
      {"dense_mqa_scale", {4, 4}, {6, 6}, 2, 1, 5, false, false, 0.7f},
  };
}

// L = sum(out * dO), the scalar whose gradients the backward returns.
double Loss(const std::vector<double>& out, const std::vector<double>& dout) {
  double l = 0;
  for (size_t i = 0; i < out.size(); ++i) l += out[i] * dout[i];
  return l;
}

// Central differences of loss(x) over every element of x.
std::vector<double> NumericGradient(std::vector<double>& x, double step,
                                    const std::function<double()>& loss) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + step;
    const double up = loss();
    x[i] = x0 - step;
    const double down = loss();
    x[i] = x0;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

void ExpectClose(const std::vector<double>& got, const std::vector<double>& want, double abs_tol,
                 double rel_tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= abs_tol + rel_tol * std::fabs(want[i])) && bad++ < 5) {
      ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", expected " << want[i];
    }
  }
}

TEST(CpuBackendGradientCheck, OracleBackwardMatchesFiniteDifferencesOfOracleForward) {
  for (const AttentionCase& c : TinyCases()) {
    SCOPED_TRACE(c.name);
    Problem p = MakeProblem(c, DType::kFP32, FreshSeed());
    std::vector<double> q = p.q.values, k = p.k.values, v = p.v.values;
    const std::vector<double>& dout = p.dout.values;
    auto loss = [&] { return Loss(ReferenceAttentionForward(p.shape, p.options, q, k, v).out, dout); };
    const ReferenceBackward g = ReferenceAttentionBackward(p.shape, p.options, q, k, v, dout);
    ExpectClose(g.grad_q, NumericGradient(q, 1e-6, loss), 1e-7, 1e-6, "dQ");
    ExpectClose(g.grad_k, NumericGradient(k, 1e-6, loss), 1e-7, 1e-6, "dK");
    ExpectClose(g.grad_v, NumericGradient(v, 1e-6, loss), 1e-7, 1e-6, "dV");
  }
}

TEST(CpuBackendGradientCheck, Fp32BackwardMatchesOracleGradientsElementwise) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(2);
  for (const AttentionCase& c : TinyCases()) {
    SCOPED_TRACE(c.name);
    const Problem p = MakeProblem(c, DType::kFP32, FreshSeed());
    const ForwardOutputs fwd = RunForward(*backend, p);
    const BackwardOutputs got = RunBackward(*backend, p, fwd.out, fwd.lse);
    const ReferenceBackward want =
        ReferenceAttentionBackward(p.shape, p.options, p.q.values, p.k.values, p.v.values, p.dout.values);
    ExpectClose(Decode(got.dq), want.grad_q, 2e-6, 1e-5, "dQ");
    ExpectClose(Decode(got.dk), want.grad_k, 2e-6, 1e-5, "dK");
    ExpectClose(Decode(got.dv), want.grad_v, 2e-6, 1e-5, "dV");
  }
}

// Independent of the oracle: the CPU backward is the derivative of the CPU forward. FP32 forward
// evaluations are noisy at ~1e-7, so the step is 1e-2 and the check is on the relative L2 error.
TEST(CpuBackendGradientCheck, Fp32BackwardMatchesFiniteDifferencesOfCpuForward) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  for (const AttentionCase& c : TinyCases()) {
    SCOPED_TRACE(c.name);
    Problem p = MakeProblem(c, DType::kFP32, FreshSeed());
    const ForwardOutputs fwd = RunForward(*backend, p);
    const BackwardOutputs got = RunBackward(*backend, p, fwd.out, fwd.lse);
    for (HostTensor* x : {&p.q, &p.k, &p.v}) {
      std::vector<double> values = x->values;
      auto loss = [&] {
        *x = Encode(DType::kFP32, values);
        return Loss(Decode(RunForward(*backend, p).out), p.dout.values);
      };
      const std::vector<double> numeric = NumericGradient(values, 1e-2, loss);
      *x = Encode(DType::kFP32, values);
      const HostTensor& analytic = x == &p.q ? got.dq : x == &p.k ? got.dk : got.dv;
      EXPECT_LE(RelativeL2Error(Decode(analytic), numeric), 2e-3) << (x == &p.q ? "dQ" : x == &p.k ? "dK" : "dV");
    }
  }
}

}  // namespace
}  // namespace attnd::testing
