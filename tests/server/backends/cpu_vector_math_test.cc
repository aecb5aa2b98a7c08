// The CPU backend's softmax helpers: exp2 accurate to a few float ulps (the end-to-end FP32
// tolerance alone would let a 1e-6 error through), exact zeros for masked entries, and
// reductions that agree with the plain sums.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "server/backends/cpu/vector_math.h"

namespace attnd::cpu {
namespace {

TEST(CpuVectorMath, Exp2IsWithinFourUlpsOnTheSoftmaxRange) {
  double worst = 0;
  for (double x = -126.0; x <= 0.0; x += 1.0 / 4096) {
    const double want = std::exp2(static_cast<double>(static_cast<float>(x)));
    const double got = Exp2(static_cast<float>(x));
    worst = std::max(worst, std::fabs(got - want) / want);
  }
  EXPECT_LE(worst, 4 * 5.96e-8) << "max relative error of Exp2 on [-126, 0]";
  EXPECT_EQ(Exp2(0.f), 1.f);
  EXPECT_EQ(Exp2(-1.f), 0.5f);
  EXPECT_FLOAT_EQ(Exp2(10.f), 1024.f);
}

TEST(CpuVectorMath, Exp2GivesExactZeroBelowTheNormalRange) {
  for (float x : {-126.5f, -150.f, -1e30f, -std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(Exp2(x), 0.f) << x;  // lse = +inf rows contribute nothing
  }
  EXPECT_TRUE(std::isnan(Exp2(std::numeric_limits<float>::quiet_NaN())));
}

TEST(CpuVectorMath, ReductionsMatchPlainSums) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (int n : {1, 15, 16, 17, 64, 100}) {
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) x[size_t(i)] = normal(rng), y[size_t(i)] = normal(rng);
    double sum = 0, dot = 0, abs_sum = 0, abs_dot = 0;
    float mx = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; ++i) {
      sum += x[size_t(i)], abs_sum += std::fabs(x[size_t(i)]);
      dot += double(x[size_t(i)]) * y[size_t(i)], abs_dot += std::fabs(double(x[size_t(i)]) * y[size_t(i)]);
      mx = std::max(mx, x[size_t(i)]);
    }
    EXPECT_EQ(RowMax(x.data(), n), mx) << n;
    EXPECT_NEAR(RowSum(x.data(), n), sum, 1e-6 * abs_sum) << n;
    EXPECT_NEAR(RowDot(x.data(), y.data(), n), dot, 1e-6 * abs_dot) << n;
  }
}

}  // namespace
}  // namespace attnd::cpu
