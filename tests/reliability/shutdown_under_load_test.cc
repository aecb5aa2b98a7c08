// Shutdown under load, in-process: 64 callers keep Forward calls (small and 1 MiB, so some are
// still on the wire) flowing into one AttentionServer while it drains. With the client's retries
// off, every call must end OK with the right answer or UNAVAILABLE (which clients may retry
// elsewhere), never CANCELLED and never without an answer; every call the backend computed is
// answered OK. Repeated over several rounds, since the interesting instants are short.
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/attnd/client.h"
#include "server/service/attention_server.h"
#include "tests/server/service/service_test_util.h"

namespace attnd {
namespace {

using testing::DenseForwardRequest;
using testing::FakeBackend;
using testing::FakeBackendState;
using testing::RequestSpec;

constexpr int kCallers = 64;

struct RoundResult {
  std::map<absl::StatusCode, int> codes;
  int wrong = 0;          // OK with bytes that are not the request's (the fake backend echoes q)
  int unanswered = 0;     // callers still waiting long after the server stopped
  int computed = 0;       // calls that reached the backend
};

RoundResult RunRound(int round, absl::Duration load_before_shutdown) {
  auto state = std::make_shared<FakeBackendState>();
  ServerOptions options;
  options.worker_threads = 4;
  absl::StatusOr<std::unique_ptr<AttentionServer>> server =
      AttentionServer::Start(options, std::make_unique<FakeBackend>(state));
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return {};

  ClientOptions client_options;
  client_options.target = (*server)->address();
  client_options.retry_unavailable = false;  // see what the server sends, unretried
  client_options.retry_cancelled_by_server = false;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(client_options);
  EXPECT_TRUE(client.ok()) << client.status();
  if (!client.ok()) return {};

  const auto small = std::make_shared<const v1::ForwardRequest>(DenseForwardRequest(RequestSpec{.seed = 7}));
  const auto large = std::make_shared<const v1::ForwardRequest>(DenseForwardRequest(RequestSpec{
      .batch = 1, .seqlen_q = 512, .seqlen_k = 512, .heads_q = 4, .heads_kv = 4, .head_dim = 64,
      .dtype = DType::kFP32, .seed = 8}));

  absl::Mutex mu;
  RoundResult result;
  std::atomic<bool> stop{false};
  std::atomic<int> finished_callers{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; !stop.load(); ++i) {
        const auto& request = (c + i + round) % 8 == 0 ? large : small;
        absl::StatusOr<v1::ForwardResponse> r =
            (*client)->Forward(*request, CallOptions{.timeout = absl::Seconds(20)});
        absl::ReleasableMutexLock lock(&mu);
        ++result.codes[r.status().code()];
        if (r.ok() && r->out().data() != request->q().data()) ++result.wrong;
        // Callers keep calling through the whole drain and after it, as clients of a replica that
        // goes away do until they notice: the calls that arrive in the last instant matter most.
        if (!r.ok()) {
          lock.Release();
          absl::SleepFor(absl::Milliseconds(1));
        }
      }
      finished_callers.fetch_add(1);
    });
  }
  absl::SleepFor(load_before_shutdown);
  (*server)->Shutdown(absl::Seconds(10));
  stop = true;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (finished_callers.load() < kCallers && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(10));
  result.unanswered = kCallers - finished_callers.load();
  for (std::thread& t : callers) {
    if (result.unanswered == 0) t.join(); else t.detach();
  }
  result.computed = state->Entered();
  return result;
}

TEST(ShutdownUnderLoad, EveryCallEndsOkOrUnavailableNeverCancelled) {
  constexpr int kRounds = 8;
  std::map<absl::StatusCode, int> total;
  for (int round = 0; round < kRounds; ++round) {
    const RoundResult r = RunRound(round, absl::Milliseconds(150 + 40 * round));
    ASSERT_EQ(r.unanswered, 0) << "round " << round << ": calls never answered";
    EXPECT_EQ(r.wrong, 0) << "round " << round;
    int ok = 0;
    for (const auto& [code, n] : r.codes) {
      total[code] += n;
      if (code == absl::StatusCode::kOk) ok = n;
      EXPECT_TRUE(code == absl::StatusCode::kOk || code == absl::StatusCode::kUnavailable)
          << "round " << round << ": " << n << " calls ended " << absl::StatusCodeToString(code);
    }
    EXPECT_EQ(ok, r.computed) << "round " << round << ": every computed call is answered OK, and only those";
  }
  std::string summary;
  for (const auto& [code, n] : total) absl::StrAppend(&summary, absl::StatusCodeToString(code), "=", n, " ");
  std::printf("shutdown under load, %d rounds x %d callers: %s\n", kRounds, kCallers, summary.c_str());
  EXPECT_GT(total[absl::StatusCode::kOk], 0);
}

}  // namespace
}  // namespace attnd
