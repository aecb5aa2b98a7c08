// Helpers of the client tests: random inputs, the values a dtype actually carries, comparisons
// with the float64 oracle, and an in-process daemon on a loopback port.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attnd/v1/attention.pb.h"
#include "client/attnd/client.h"
#include "gtest/gtest.h"
#include "server/backend.h"
#include "server/core/attention_problem.h"
#include "server/service/attention_server.h"
#include "tests/client/attention_case.h"

namespace attnd::testing {

// n normal(0, 1) floats from `seed`.
std::vector<float> RandomNormal(int64_t n, uint64_t seed);

// The values `x` becomes once rounded to `dtype` (what the daemon receives), as doubles.
std::vector<double> AsSent(DType dtype, const std::vector<float>& x);

// Succeeds when `got` (any wire dtype) has `shape`, infinities exactly where `want` has them, no NaN,
// and relative L2 error (over finite elements) at most `tolerance`. The message gives the error.
::testing::AssertionResult Matches(const char* name, const v1::Tensor& got, const std::vector<int64_t>& shape,
                                   const std::vector<double>& want, double tolerance);

// Relative L2 error of `got` against `want` over elements finite in both (for logging).
double RelativeError(const v1::Tensor& got, const std::vector<double>& want);

// An AttentionServer on 127.0.0.1:<free port> serving `backend` with `workers` worker threads,
// plus a connected Client. Fails the test (ASSERT) if either cannot start.
struct Loopback {
  std::unique_ptr<AttentionServer> server;
  std::unique_ptr<Client> client;
};
void StartLoopback(std::unique_ptr<Backend> backend, int workers, Loopback* loopback);

// A parameterized suite whose cases share one daemon on loopback (CPU backend, 2 threads, 2
// workers), started once per suite: starting a server per case would dominate the run time.
class CpuLoopbackSuite : public ::testing::TestWithParam<AttentionCase> {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  static Loopback* loopback_;
};

// ClientOptions for `address` with a 10 s connect timeout.
ClientOptions OptionsFor(const std::string& address);

}  // namespace attnd::testing
