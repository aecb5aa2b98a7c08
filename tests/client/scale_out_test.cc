// Scale-out from the client's side: one Client whose target names three in-process daemons spreads
// its calls over all of them (round_robin), and when one daemon drains mid-load the calls it refuses
// with UNAVAILABLE are retried on the others: with retries on, no call fails and every answer is
// right. With retries off, a call may fail, but only with an explicit UNAVAILABLE, never silently.
#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "client/attnd/tensors.h"
#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/client/client_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd::testing {
namespace {

// Counts the calls that reach the backend, i.e. the calls this daemon computed.
class CountingBackend final : public Backend {
 public:
  CountingBackend(std::unique_ptr<Backend> inner, std::atomic<int>* calls) : inner_(std::move(inner)), calls_(calls) {}

  std::string_view name() const override { return inner_->name(); }
  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    return inner_->CheckSupported(shape, dtype);
  }
  absl::Status Forward(const ForwardArgs& args) override {
    calls_->fetch_add(1);
    return inner_->Forward(args);
  }
  absl::Status Backward(const BackwardArgs& args) override {
    calls_->fetch_add(1);
    return inner_->Backward(args);
  }

 private:
  std::unique_ptr<Backend> inner_;
  std::atomic<int>* calls_;
};

struct Problem {
  AttentionShape shape;
  v1::ForwardRequest request;
  ReferenceForward want;
};

Problem MakeProblem(uint64_t seed) {
  Problem p;
  const int seqlen = 5 + static_cast<int>(seed % 13);
  p.shape = DenseShape(1, seqlen, seqlen + 2, 2, 1, 32);
  AttentionOptions options;
  options.causal = seed % 2 == 1;
  const auto q = RandomNormal(p.shape.q_elements(), 3 * seed);
  const auto k = RandomNormal(p.shape.kv_elements(), 3 * seed + 1);
  const auto v = RandomNormal(p.shape.kv_elements(), 3 * seed + 2);
  p.request = *MakeForwardRequest(p.shape, DType::kBF16, options, q, k, v);
  options.softmax_scale = 1.f / std::sqrt(32.f);
  p.want = ReferenceAttentionForward(p.shape, options, AsSent(DType::kBF16, q), AsSent(DType::kBF16, k),
                                     AsSent(DType::kBF16, v));
  return p;
}

constexpr int kServers = 3;
constexpr int kThreads = 4;
constexpr int kCallsPerThread = 60;
constexpr int kCalls = kThreads * kCallsPerThread;
// Server 0 starts draining once this many calls have finished, about a third of the run.
constexpr int kShutdownAfter = kCalls / 3;

class ScaleOut : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::string> addresses;
    for (int i = 0; i < kServers; ++i) {
      ServerOptions options;
      options.listen = "127.0.0.1:0";
      options.worker_threads = 2;
      auto server = AttentionServer::Start(
          options, std::make_unique<CountingBackend>(CreateCpuBackend(1), &calls_[i]));
      ASSERT_TRUE(server.ok()) << server.status();
      servers_[i] = std::move(*server);
      addresses.push_back(absl::StrCat("127.0.0.1:", servers_[i]->port()));
    }
    target_ = absl::StrCat("ipv4:", absl::StrJoin(addresses, ","));
    for (int i = 0; i < 16; ++i) problems_.push_back(MakeProblem(500 + i));
  }

  // Runs kThreads x kCallsPerThread blocking forward calls through `client`; server 0 drains after
  // kShutdownAfter calls have finished. Records every outcome.
  void RunLoadAndDrainOne(Client& client) {
    std::atomic<int> finished{0};
    std::thread drainer([&] {
      const absl::Time give_up = absl::Now() + absl::Seconds(10);
      while (finished.load() < kShutdownAfter && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
      for (int i = 0; i < kServers; ++i) calls_at_shutdown_[i] = calls_[i].load();
      servers_[0]->Shutdown(absl::Seconds(5));  // accepted calls complete; new ones get UNAVAILABLE
      drained_ = true;
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int c = 0; c < kCallsPerThread; ++c) {
          const Problem& p = problems_[(t * kCallsPerThread + c) % problems_.size()];
          absl::StatusOr<v1::ForwardResponse> r = client.Forward(p.request, CallOptions{.timeout = absl::Seconds(10)});
          absl::MutexLock lock(&mu_);
          if (r.ok()) {
            ::testing::AssertionResult out = Matches("out", r->out(), WireQShape(p.shape), p.want.out, 1e-2);
            ::testing::AssertionResult lse = Matches("lse", r->lse(), WireLseShape(p.shape), p.want.lse, 1e-5);
            if (!out || !lse) wrong_.push_back(absl::StrCat(out.message(), " ", lse.message()));
            ++ok_;
          } else {
            failures_.push_back(r.status());
          }
          finished.fetch_add(1);
        }
      });
    }
    for (auto& thread : threads) thread.join();
    drainer.join();
  }

  std::atomic<int> calls_[kServers] = {};
  int calls_at_shutdown_[kServers] = {};
  std::unique_ptr<AttentionServer> servers_[kServers];
  std::string target_;
  std::vector<Problem> problems_;
  bool drained_ = false;

  absl::Mutex mu_;
  int ok_ = 0;
  std::vector<std::string> wrong_;
  std::vector<absl::Status> failures_;
};

TEST_F(ScaleOut, RoundRobinSpreadsCallsAndRetriesSurviveADrainingServer) {
  const absl::Time start = absl::Now();
  ClientOptions options = OptionsFor(target_);
  ASSERT_EQ(options.load_balancing_policy, "round_robin");  // the defaults are what this test checks
  ASSERT_TRUE(options.retry_unavailable);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  RunLoadAndDrainOne(**client);

  ASSERT_TRUE(drained_);
  EXPECT_TRUE(failures_.empty()) << failures_.size() << " calls failed, first: " << failures_.front();
  EXPECT_TRUE(wrong_.empty()) << wrong_.size() << " wrong answers, first: " << wrong_.front();
  EXPECT_EQ(ok_, kCalls);
  // Every answer was computed by exactly one daemon: none lost, none computed twice.
  EXPECT_EQ(calls_[0] + calls_[1] + calls_[2], kCalls);
  // Before the drain, round_robin used all three daemons.
  for (int i = 0; i < kServers; ++i) {
    EXPECT_GT(calls_at_shutdown_[i], 0) << "server " << i << " got no call before the drain";
  }
  // After it, the other two took the rest of the load, both of them.
  for (int i = 1; i < kServers; ++i) {
    EXPECT_GT(calls_[i] - calls_at_shutdown_[i], kCalls / 6) << "server " << i << " after the drain";
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  std::cerr << "calls per server: " << calls_[0] << " " << calls_[1] << " " << calls_[2] << " (at the drain: "
            << calls_at_shutdown_[0] << " " << calls_at_shutdown_[1] << " " << calls_at_shutdown_[2] << ")\n";
}

TEST_F(ScaleOut, WithoutRetriesAFailedCallSaysUnavailable) {
  ClientOptions options = OptionsFor(target_);
  options.retry_unavailable = false;
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  RunLoadAndDrainOne(**client);

  ASSERT_TRUE(drained_);
  EXPECT_TRUE(wrong_.empty()) << wrong_.size() << " wrong answers, first: " << wrong_.front();
  // Each call either succeeded with the right answer or failed explicitly: UNAVAILABLE (refused by
  // the draining daemon) or CANCELLED (cancelled as the daemon's gRPC server stopped).
  EXPECT_EQ(ok_ + static_cast<int>(failures_.size()), kCalls);
  for (const absl::Status& status : failures_) {
    EXPECT_TRUE(status.code() == absl::StatusCode::kUnavailable || status.code() == absl::StatusCode::kCancelled)
        << status;
  }
  EXPECT_EQ(calls_[0] + calls_[1] + calls_[2], ok_);
  std::cerr << failures_.size() << " of " << kCalls << " calls failed without retries\n";
}

TEST(ScaleOutOptions, ServiceConfigCarriesRoundRobinAndTheRetryPolicy) {
  ClientOptions options;
  absl::StatusOr<std::string> config = ServiceConfigJson(options);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config,
            "{\"loadBalancingConfig\":[{\"round_robin\":{}}],\"methodConfig\":[{\"name\":[{\"service\":"
            "\"attnd.v1.Attention\"}],\"retryPolicy\":{\"maxAttempts\":4,\"initialBackoff\":\"0.050000000s\","
            "\"maxBackoff\":\"1.000000000s\",\"backoffMultiplier\":2,\"retryableStatusCodes\":[\"UNAVAILABLE\",\"CANCELLED\"]}}]}");
  options.retry_unavailable = false;
  options.load_balancing_policy = "pick_first";
  EXPECT_EQ(*ServiceConfigJson(options), "{\"loadBalancingConfig\":[{\"pick_first\":{}}]}");
}

TEST(ScaleOutOptions, BadOptionsAreInvalidArgumentNamingTheField) {
  ClientOptions options = OptionsFor("127.0.0.1:1");
  options.load_balancing_policy = "least_request";
  auto client = Client::Connect(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(client.status().message().find("load_balancing_policy"), std::string::npos) << client.status();
  options = OptionsFor("127.0.0.1:1");
  options.retry_max_attempts = 1;
  client = Client::Connect(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(client.status().message().find("retry_max_attempts"), std::string::npos) << client.status();
}

}  // namespace
}  // namespace attnd::testing
