#include "tests/client/client_test_util.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "client/attnd/tensors.h"
#include "server/backends/cpu/cpu_backend.h"

namespace attnd::testing {

std::vector<float> RandomNormal(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  return x;
}

std::vector<double> AsSent(DType dtype, const std::vector<float>& x) {
  std::vector<float> rounded(x.size());
  EXPECT_TRUE(DecodeFloats(dtype, EncodeFloats(dtype, x), absl::MakeSpan(rounded)).ok());
  return std::vector<double>(rounded.begin(), rounded.end());
}

::testing::AssertionResult Matches(const char* name, const v1::Tensor& got, const std::vector<int64_t>& shape,
                                   const std::vector<double>& want, double tolerance) {
  if (!std::equal(got.shape().begin(), got.shape().end(), shape.begin(), shape.end())) {
    return ::testing::AssertionFailure() << name << ": wrong shape (" << got.shape().size() << " dims, "
                                         << NumElements(got.shape()) << " elements)";
  }
  absl::StatusOr<std::vector<float>> values = TensorToFloats(got, name);
  if (!values.ok()) return ::testing::AssertionFailure() << values.status();
  if (values->size() != want.size()) {
    return ::testing::AssertionFailure() << name << ": " << values->size() << " elements, oracle has " << want.size();
  }
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double a = (*values)[i], b = want[i];
    if (std::isnan(a)) return ::testing::AssertionFailure() << name << "[" << i << "] is NaN";
    if (std::isinf(a) || std::isinf(b)) {
      if (a != b) return ::testing::AssertionFailure() << name << "[" << i << "] = " << a << ", oracle " << b;
      continue;
    }
    diff2 += (a - b) * (a - b);
    ref2 += b * b;
  }
  const double rel = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  if (!(rel <= tolerance)) {
    return ::testing::AssertionFailure() << name << ": relative L2 error " << rel << " > " << tolerance;
  }
  return ::testing::AssertionSuccess() << name << ": relative L2 error " << rel;
}

double RelativeError(const v1::Tensor& got, const std::vector<double>& want) {
  absl::StatusOr<std::vector<float>> values = TensorToFloats(got);
  if (!values.ok() || values->size() != want.size()) return INFINITY;
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite((*values)[i]) || !std::isfinite(want[i])) continue;
    diff2 += ((*values)[i] - want[i]) * ((*values)[i] - want[i]);
    ref2 += want[i] * want[i];
  }
  return ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
}

ClientOptions OptionsFor(const std::string& address) {
  ClientOptions options;
  options.target = address;
  options.connect_timeout = absl::Seconds(10);
  return options;
}

void StartLoopback(std::unique_ptr<Backend> backend, int workers, Loopback* loopback) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.worker_threads = workers;
  absl::StatusOr<std::unique_ptr<AttentionServer>> server = AttentionServer::Start(options, std::move(backend));
  ASSERT_TRUE(server.ok()) << server.status();
  loopback->server = std::move(*server);
  ASSERT_GT(loopback->server->port(), 0);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(OptionsFor(loopback->server->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  loopback->client = std::move(*client);
}

Loopback* CpuLoopbackSuite::loopback_ = nullptr;

void CpuLoopbackSuite::SetUpTestSuite() {
  loopback_ = new Loopback;
  StartLoopback(CreateCpuBackend(2), 2, loopback_);
}

void CpuLoopbackSuite::TearDownTestSuite() {
  delete loopback_;
  loopback_ = nullptr;
}

}  // namespace attnd::testing
