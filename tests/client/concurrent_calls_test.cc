// Many calls at once: async calls with callbacks from one client, and many clients (each on its own
// connection, and all sharing one) hammering one daemon; every answer must be right and belong to
// its own request.
#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "client/attnd/tensors.h"
#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/client/client_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd::testing {
namespace {

// A small random forward problem and its oracle answer; `seed` makes each one distinct.
struct Problem {
  AttentionShape shape;
  v1::ForwardRequest request;
  ReferenceForward want;
};

Problem MakeProblem(uint64_t seed, DType dtype = DType::kBF16) {
  Problem p;
  const int seqlen = 8 + static_cast<int>(seed % 23);  // different shapes too, so swaps would show
  p.shape = DenseShape(1, seqlen, seqlen + 3, 4, 2, 32);
  AttentionOptions options;
  options.causal = seed % 2 == 0;
  const auto q = RandomNormal(p.shape.q_elements(), 3 * seed);
  const auto k = RandomNormal(p.shape.kv_elements(), 3 * seed + 1);
  const auto v = RandomNormal(p.shape.kv_elements(), 3 * seed + 2);
  p.request = *MakeForwardRequest(p.shape, dtype, options, q, k, v);
  options.softmax_scale = 1.f / std::sqrt(32.f);
  p.want = ReferenceAttentionForward(p.shape, options, AsSent(dtype, q), AsSent(dtype, k), AsSent(dtype, v));
  return p;
}

::testing::AssertionResult Correct(const Problem& p, const v1::ForwardResponse& r) {
  ::testing::AssertionResult out = Matches("out", r.out(), WireQShape(p.shape), p.want.out, 1e-2);
  if (!out) return out;
  return Matches("lse", r.lse(), WireLseShape(p.shape), p.want.lse, 1e-5);
}

class ConcurrentCalls : public ::testing::Test {
 protected:
  void SetUp() override { StartLoopback(CreateCpuBackend(2), 4, &loopback_); }
  Loopback loopback_;
};

TEST_F(ConcurrentCalls, AsyncForwardCallbacksEachGetTheirOwnAnswer) {
  constexpr int kCalls = 12;
  std::vector<Problem> problems;
  for (int i = 0; i < kCalls; ++i) problems.push_back(MakeProblem(100 + i));
  absl::Mutex mu;
  std::vector<std::optional<absl::StatusOr<v1::ForwardResponse>>> results(kCalls);
  std::vector<std::shared_ptr<PendingCall>> calls;
  for (int i = 0; i < kCalls; ++i) {
    // Half by value (the call owns a copy), half shared (no copy).
    auto done = [&, i](absl::StatusOr<v1::ForwardResponse> r) {
      absl::MutexLock lock(&mu);
      results[i] = std::move(r);
    };
    if (i % 2 == 0) {
      calls.push_back(loopback_.client->ForwardAsync(problems[i].request, done));
    } else {
      calls.push_back(loopback_.client->ForwardAsync(
          std::make_shared<const v1::ForwardRequest>(problems[i].request), done));
    }
  }
  for (auto& call : calls) ASSERT_TRUE(call->WaitFor(absl::Seconds(30))) << "async call never completed";
  for (int i = 0; i < kCalls; ++i) {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(results[i].has_value()) << "callback " << i << " did not run before Wait() returned";
    ASSERT_TRUE(results[i]->ok()) << results[i]->status();
    EXPECT_TRUE(Correct(problems[i], **results[i])) << "call " << i;
    EXPECT_TRUE(calls[i]->done());
  }
}

TEST_F(ConcurrentCalls, AsyncBackwardCallback) {
  const AttentionShape shape = DenseShape(1, 13, 13, 2, 2, 16);
  const auto q = RandomNormal(shape.q_elements(), 1), k = RandomNormal(shape.kv_elements(), 2),
             v = RandomNormal(shape.kv_elements(), 3), g = RandomNormal(shape.q_elements(), 4);
  AttentionOptions options;
  options.causal = true;
  const v1::ForwardRequest forward = *MakeForwardRequest(shape, DType::kFP32, options, q, k, v);
  absl::StatusOr<v1::ForwardResponse> fr = loopback_.client->Forward(forward);
  ASSERT_TRUE(fr.ok()) << fr.status();
  std::optional<absl::StatusOr<v1::BackwardResponse>> result;
  auto call = loopback_.client->BackwardAsync(MakeBackwardRequest(forward, *fr, *MakeTensor(DType::kFP32, WireQShape(shape), g)),
                                              [&](absl::StatusOr<v1::BackwardResponse> r) { result = std::move(r); });
  ASSERT_TRUE(call->WaitFor(absl::Seconds(30)));
  ASSERT_TRUE(result.has_value() && result->ok()) << (result ? result->status() : absl::UnknownError("no result"));
  options.softmax_scale = 0.25f;
  const ReferenceBackward want = ReferenceAttentionBackward(shape, options, AsSent(DType::kFP32, q), AsSent(DType::kFP32, k),
                                                            AsSent(DType::kFP32, v), AsSent(DType::kFP32, g));
  EXPECT_TRUE(Matches("grad_q", (*result)->grad_q(), WireQShape(shape), want.grad_q, 1e-4));
  EXPECT_TRUE(Matches("grad_k", (*result)->grad_k(), WireKVShape(shape), want.grad_k, 1e-4));
  EXPECT_TRUE(Matches("grad_v", (*result)->grad_v(), WireKVShape(shape), want.grad_v, 1e-4));
}

// 16 threads x 4 calls. `shared`: all threads use one Client; otherwise each its own connection.
void Hammer(const std::string& address, Client* shared) {
  constexpr int kThreads = 16, kCallsEach = 4;
  std::vector<std::vector<Problem>> problems(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kCallsEach; ++i) problems[t].push_back(MakeProblem(1000 + t * kCallsEach + i));
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<Client> own;
      Client* client = shared;
      if (client == nullptr) {
        ClientOptions options = OptionsFor(address);
        options.dedicated_connection = true;
        absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options);
        if (!c.ok()) {
          ADD_FAILURE() << c.status();
          ++failures;
          return;
        }
        own = std::move(*c);
        client = own.get();
      }
      for (const Problem& p : problems[t]) {
        absl::StatusOr<v1::ForwardResponse> r = client->Forward(p.request);
        if (!r.ok()) {
          ADD_FAILURE() << "thread " << t << ": " << r.status();
          ++failures;
        } else if (::testing::AssertionResult ok = Correct(p, *r); !ok) {
          ADD_FAILURE() << "thread " << t << ": " << ok.message();
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(ConcurrentCalls, SixteenClientsOnTheirOwnConnections) { Hammer(loopback_.server->address(), nullptr); }

TEST_F(ConcurrentCalls, SixteenThreadsSharingOneClient) {
  Hammer(loopback_.server->address(), loopback_.client.get());
}

}  // namespace
}  // namespace attnd::testing
