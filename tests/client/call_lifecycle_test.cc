// How calls end when things go wrong: deadlines, cancellation, the daemon shutting down under
// running calls, a dead address, a bad request. Every call must end with a clear status, promptly,
// and never hang; the daemon must keep serving the next good request.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/attnd/tensors.h"
#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "tests/client/client_test_util.h"
#include "tests/client/test_backends.h"
#include "tests/support/reference_attention.h"

namespace attnd::testing {
namespace {

v1::ForwardRequest SmallRequest(uint64_t seed = 1) {
  const AttentionShape shape = DenseShape(1, 16, 16, 2, 2, 32);
  return *MakeForwardRequest(shape, DType::kBF16, {}, RandomNormal(shape.q_elements(), seed),
                             RandomNormal(shape.kv_elements(), seed + 1), RandomNormal(shape.kv_elements(), seed + 2));
}

// About 8.6 GFLOP (1 x 1024 x 16 heads x 128, fp32): far longer than a few milliseconds on a CPU.
v1::ForwardRequest BigRequest() {
  const AttentionShape shape = DenseShape(1, 1024, 1024, 16, 16, 128);
  const auto x = RandomNormal(shape.q_elements(), 7);
  return *MakeForwardRequest(shape, DType::kFP32, {}, x, x, x);
}

void ExpectServes(Client& client) {
  absl::StatusOr<v1::ForwardResponse> r = client.Forward(SmallRequest(99), {.timeout = absl::Seconds(30)});
  EXPECT_TRUE(r.ok()) << "the daemon stopped serving: " << r.status();
}

// A loopback port with nothing listening: bound, then closed.
int DeadPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(CallLifecycle, PerCallDeadlineExceededOnABigRequest) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(2), 2, &lb);
  const v1::ForwardRequest big = BigRequest();
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::ForwardResponse> r = lb.client->Forward(big, {.timeout = absl::Milliseconds(5)});
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_LT(took, absl::Seconds(2)) << "the client waited for the computation instead of its deadline";
  ExpectServes(*lb.client);
}

TEST(CallLifecycle, DefaultDeadlineFromClientOptions) {
  Loopback lb;
  auto gated = std::make_unique<GatedBackend>(CreateCpuBackend(1));
  GatedBackend* gate = gated.get();
  StartLoopback(std::move(gated), 2, &lb);
  ClientOptions options = OptionsFor(lb.server->address());
  options.default_timeout = absl::Milliseconds(200);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<v1::ForwardResponse> r = (*client)->Forward(SmallRequest());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  gate->Open();
  ExpectServes(**client);
}

TEST(CallLifecycle, CancelAnAsyncCallInsideTheDaemon) {
  Loopback lb;
  auto gated = std::make_unique<GatedBackend>(CreateCpuBackend(1));
  GatedBackend* gate = gated.get();
  StartLoopback(std::move(gated), 2, &lb);
  std::optional<absl::Status> status;
  auto call = lb.client->ForwardAsync(SmallRequest(), [&](absl::StatusOr<v1::ForwardResponse> r) { status = r.status(); });
  ASSERT_TRUE(gate->WaitForEntered(1, absl::Seconds(10))) << "the call never reached the backend";
  EXPECT_FALSE(call->done());
  const absl::Time start = absl::Now();
  call->Cancel();
  ASSERT_TRUE(call->WaitFor(absl::Seconds(5))) << "a cancelled call did not end";
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->code(), absl::StatusCode::kCancelled) << *status;
  call->Cancel();  // cancelling a finished call is harmless
  gate->Open();
  ExpectServes(*lb.client);
}

TEST(CallLifecycle, ShutdownLetsInFlightCallsFinish) {
  Loopback lb;
  auto gated = std::make_unique<GatedBackend>(CreateCpuBackend(2));
  GatedBackend* gate = gated.get();
  StartLoopback(std::move(gated), 2, &lb);
  constexpr int kCalls = 4;  // 2 running in the workers, 2 queued behind them
  std::vector<v1::ForwardRequest> requests;
  std::vector<std::optional<absl::StatusOr<v1::ForwardResponse>>> results(kCalls);
  std::vector<std::shared_ptr<PendingCall>> calls;
  for (int i = 0; i < kCalls; ++i) requests.push_back(SmallRequest(10 * i));
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(lb.client->ForwardAsync(requests[i], [&, i](absl::StatusOr<v1::ForwardResponse> r) {
      results[i] = std::move(r);
    }));
  }
  ASSERT_TRUE(gate->WaitForEntered(2, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(50));  // let the other two reach the queue
  std::thread shutdown([&] { lb.server->Shutdown(absl::Seconds(30)); });
  absl::SleepFor(absl::Milliseconds(100));
  // Draining: a new call is refused, promptly.
  absl::StatusOr<v1::ForwardResponse> late = lb.client->Forward(SmallRequest(), {.timeout = absl::Seconds(5)});
  EXPECT_FALSE(late.ok());
  EXPECT_NE(late.status().code(), absl::StatusCode::kDeadlineExceeded) << late.status();
  gate->Open();
  shutdown.join();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(calls[i]->WaitFor(absl::Seconds(10))) << "call " << i << " hung";
    ASSERT_TRUE(results[i].has_value());
    EXPECT_TRUE(results[i]->ok()) << "call " << i << " in flight at shutdown: " << results[i]->status();
  }
}

TEST(CallLifecycle, ShutdownWithAShortGraceEndsEveryCall) {
  Loopback lb;
  auto gated = std::make_unique<GatedBackend>(CreateCpuBackend(1));
  GatedBackend* gate = gated.get();
  StartLoopback(std::move(gated), 1, &lb);
  constexpr int kCalls = 3;
  std::vector<std::optional<absl::Status>> statuses(kCalls);
  std::vector<std::shared_ptr<PendingCall>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(lb.client->ForwardAsync(SmallRequest(i), [&, i](absl::StatusOr<v1::ForwardResponse> r) {
      statuses[i] = r.status();
    }));
  }
  ASSERT_TRUE(gate->WaitForEntered(1, absl::Seconds(10)));
  // The grace runs out while a call is stuck in the backend: clients must hear about it at once,
  // even though the backend itself cannot be interrupted.
  std::thread shutdown([&] { lb.server->Shutdown(absl::Milliseconds(100)); });
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(calls[i]->WaitFor(absl::Seconds(10))) << "call " << i << " hung after the grace period";
    ASSERT_TRUE(statuses[i].has_value());
    EXPECT_FALSE(statuses[i]->ok()) << "call " << i;
    EXPECT_TRUE(statuses[i]->code() == absl::StatusCode::kCancelled ||
                statuses[i]->code() == absl::StatusCode::kUnavailable ||
                statuses[i]->code() == absl::StatusCode::kAborted)
        << "call " << i << ": " << *statuses[i];
  }
  gate->Open();
  shutdown.join();
}

TEST(CallLifecycle, DeadAddressIsUnavailableWithinTheDeadline) {
  const std::string address = "127.0.0.1:" + std::to_string(DeadPort());
  ClientOptions options = OptionsFor(address);
  options.connect_timeout = absl::Milliseconds(500);
  absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable) << client.status();
  EXPECT_NE(client.status().message().find(address), absl::string_view::npos) << client.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));

  // Lazily connected: the call itself fails fast with UNAVAILABLE, long before its deadline ...
  options.connect_timeout = absl::ZeroDuration();
  client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  start = absl::Now();
  absl::StatusOr<v1::ForwardResponse> r = (*client)->Forward(SmallRequest(), {.timeout = absl::Seconds(5)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // ... and with wait_for_ready it waits, but no longer than its deadline.
  start = absl::Now();
  r = (*client)->Forward(SmallRequest(), {.timeout = absl::Milliseconds(300), .wait_for_ready = true});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(CallLifecycle, EmptyTargetIsInvalid) {
  EXPECT_EQ(Client::Connect(ClientOptions{}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CallLifecycle, BadRequestKeepsCodeAndMessageAndTheDaemonServesOn) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(1), 1, &lb);
  v1::ForwardRequest bad = SmallRequest();
  bad.mutable_k()->set_dtype(v1::DTYPE_UNSPECIFIED);
  absl::StatusOr<v1::ForwardResponse> r = lb.client->Forward(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("k"), absl::string_view::npos) << r.status();
  bad = SmallRequest();
  bad.mutable_q()->mutable_data()->resize(10);
  r = lb.client->Forward(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("q"), absl::string_view::npos) << r.status();
  ExpectServes(*lb.client);
}

TEST(CallLifecycle, MessagesFarOverFourMebibytesPassBothWays) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(2), 1, &lb);
  // q and out are 16 MiB of fp32 each (gRPC's default receive limit is 4 MiB); few keys keep it cheap.
  const AttentionShape shape = DenseShape(1, 16384, 16, 4, 4, 64);
  const auto q = RandomNormal(shape.q_elements(), 1), k = RandomNormal(shape.kv_elements(), 2),
             v = RandomNormal(shape.kv_elements(), 3);
  const v1::ForwardRequest request = *MakeForwardRequest(shape, DType::kFP32, {}, q, k, v);
  ASSERT_EQ(request.q().data().size(), 16u << 20);
  absl::StatusOr<v1::ForwardResponse> r = lb.client->Forward(request);
  ASSERT_TRUE(r.ok()) << r.status();
  AttentionOptions options;
  options.softmax_scale = 0.125f;
  const ReferenceForward want = ReferenceAttentionForward(shape, options, AsSent(DType::kFP32, q),
                                                          AsSent(DType::kFP32, k), AsSent(DType::kFP32, v));
  EXPECT_TRUE(Matches("out", r->out(), WireQShape(shape), want.out, 1e-5));
  EXPECT_TRUE(Matches("lse", r->lse(), WireLseShape(shape), want.lse, 1e-5));
}

TEST(CallLifecycle, ServerInfoDescribesTheCpuBackend) {
  Loopback lb;
  StartLoopback(CreateCpuBackend(1), 1, &lb);
  absl::StatusOr<v1::ServerInfo> info = lb.client->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->backend(), "cpu");
  EXPECT_FALSE(info->version().empty());
  std::vector<int> dtypes(info->supported_dtypes().begin(), info->supported_dtypes().end());
  for (v1::DType d : {v1::DTYPE_BF16, v1::DTYPE_FP16, v1::DTYPE_FP32}) {
    EXPECT_NE(std::find(dtypes.begin(), dtypes.end(), d), dtypes.end()) << v1::DType_Name(d);
  }
  EXPECT_GT(info->limits().max_request_bytes(), 16 << 20);
  EXPECT_EQ(info->limits().max_head_dim(), 256);
}

}  // namespace
}  // namespace attnd::testing
