// Every limit of the daemon, hit on purpose through a real AttentionServer: the status the caller
// gets names the limit, nothing is computed for a refused call, and the server keeps serving.
//   max_request_bytes        RESOURCE_EXHAUSTED "request: ... exceed max_request_bytes" (and gRPC's
//                            own RESOURCE_EXHAUSTED past max_request_bytes + 1 MiB on the wire)
//   max_tokens_per_request   RESOURCE_EXHAUSTED "q.shape: ... exceed max_tokens_per_request"
//   max_concurrent_streams   not an error: calls beyond it wait on the client until a stream frees
//   max_queued_calls         RESOURCE_EXHAUSTED "server busy: too many calls are waiting for a worker"
//   max_queue_requests       RESOURCE_EXHAUSTED "server busy: ... batch queue (max_queue_requests"
// (Device memory, --gpu_memory_bytes, is the engine's: its pool tests cover it on the GPU.)
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "client/attnd/client.h"
#include "server/engine/batching_backend.h"
#include "server/service/attention_server.h"
#include "tests/server/service/service_test_util.h"

namespace attnd {
namespace {

using testing::DenseForwardRequest;
using testing::FakeBackend;
using testing::FakeBackendState;
using testing::RequestSpec;

class LimitsTest : public ::testing::Test {
 protected:
  void Start(ServerOptions options, std::unique_ptr<Backend> backend = nullptr) {
    if (backend == nullptr) backend = std::make_unique<FakeBackend>(state_);
    auto server = AttentionServer::Start(options, std::move(backend));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ClientOptions client;
    client.target = server_->address();
    client.retry_unavailable = false;
    client.dedicated_connection = true;  // one connection: the per-connection limit applies to it
    auto connected = Client::Connect(client);
    ASSERT_TRUE(connected.ok()) << connected.status();
    client_ = *std::move(connected);
  }

  // Starts `n` forward calls; they finish on gRPC's threads.
  std::vector<std::shared_ptr<PendingCall>> StartCalls(int n, std::vector<absl::Status>* statuses,
                                                       absl::Duration timeout = absl::Seconds(20)) {
    statuses->assign(n, absl::UnknownError("not finished"));
    std::vector<std::shared_ptr<PendingCall>> calls;
    for (int i = 0; i < n; ++i) {
      calls.push_back(client_->ForwardAsync(
          DenseForwardRequest(RequestSpec{.seed = static_cast<uint32_t>(i)}),
          [statuses, i](absl::StatusOr<v1::ForwardResponse> r) { (*statuses)[i] = r.status(); },
          CallOptions{.timeout = timeout}));
    }
    return calls;
  }

  absl::Status ForwardOnce(const v1::ForwardRequest& request) { return client_->Forward(request).status(); }

  // Waits until `done()` holds: the queue under test is full. Waiting on the validation count alone
  // would race: a validated call may not have reached the queue yet, and the probe call could take
  // its place and then wait behind the closed backend.
  static bool WaitUntil(const std::function<bool()>& done) {
    for (int i = 0; i < 1000; ++i) {
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  std::shared_ptr<FakeBackendState> state_ = std::make_shared<FakeBackendState>();
  std::unique_ptr<AttentionServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(LimitsTest, RequestBytesOverTheLimitAreResourceExhausted) {
  ServerOptions options;
  options.max_request_bytes = 64 << 10;
  Start(options);
  // 2 x 48 x 4 x 64 fp32 = 96 KiB of q alone: over the limit, under gRPC's receive cap.
  const v1::ForwardRequest over = DenseForwardRequest(RequestSpec{
      .batch = 2, .seqlen_q = 48, .seqlen_k = 8, .heads_q = 4, .heads_kv = 4, .head_dim = 64, .dtype = DType::kFP32});
  absl::Status status = ForwardOnce(over);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "exceed max_request_bytes = 65536")) << status;

  // 1.5 MiB: past the limit plus the 1 MiB gRPC allows for framing, refused by gRPC itself.
  const v1::ForwardRequest far_over = DenseForwardRequest(RequestSpec{
      .batch = 1, .seqlen_q = 1536, .seqlen_k = 8, .heads_q = 4, .heads_kv = 4, .head_dim = 64, .dtype = DType::kFP32});
  status = ForwardOnce(far_over);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;

  EXPECT_EQ(state_->Entered(), 0);
  EXPECT_TRUE(ForwardOnce(DenseForwardRequest(RequestSpec{})).ok()) << "the server keeps serving";
}

// Clients stream requests over a few MiB by default (ClientOptions::stream_above_bytes): a lowered
// --max_request_bytes must hold streamed requests too (unless --max_stream_request_bytes is set),
// and the refusal names that flag.
TEST_F(LimitsTest, AStreamedRequestIsHeldToALoweredRequestLimit) {
  ServerOptions options;
  options.max_request_bytes = 64 << 10;
  Start(options);
  ClientOptions streaming;
  streaming.target = server_->address();
  streaming.retry_unavailable = false;
  streaming.stream_above_bytes = 16 << 10;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(streaming);
  ASSERT_TRUE(client.ok()) << client.status();

  // q alone is 96 KiB.
  const v1::ForwardRequest over = DenseForwardRequest(RequestSpec{
      .batch = 2, .seqlen_q = 48, .seqlen_k = 8, .heads_q = 4, .heads_kv = 4, .head_dim = 64, .dtype = DType::kFP32});
  const absl::Status status = (*client)->Forward(over).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "exceed max_request_bytes = 65536")) << status;
  EXPECT_FALSE(absl::StrContains(status.message(), "ForwardStream")) << "no stream could carry it either";

  // 3 x 16 KiB: under the limit, over stream_above_bytes, so streamed, and served.
  const v1::ForwardRequest under = DenseForwardRequest(RequestSpec{
      .batch = 1, .seqlen_q = 16, .seqlen_k = 16, .heads_q = 4, .heads_kv = 4, .head_dim = 64, .dtype = DType::kFP32});
  const absl::StatusOr<v1::ForwardResponse> served = (*client)->Forward(under);
  EXPECT_TRUE(served.ok()) << served.status();
  // The count is recorded as the call ends, just after its answer.
  auto& streamed = server_->metrics().GetCounter("attnd_requests_total", "", {{"code", "OK"}, {"method", "ForwardStream"}});
  EXPECT_TRUE(WaitUntil([&] { return streamed.Value() == 1; })) << "the request under the limit did not go as a stream";
  EXPECT_EQ(state_->Entered(), 1);
}

TEST_F(LimitsTest, TokensOverTheLimitAreResourceExhaustedNamingTheTensor) {
  ServerOptions options;
  options.max_tokens_per_request = 100;
  Start(options);
  absl::Status status = ForwardOnce(DenseForwardRequest(RequestSpec{.batch = 3, .seqlen_q = 34, .seqlen_k = 5}));
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "q.shape: 102 tokens")) << status;
  status = ForwardOnce(DenseForwardRequest(RequestSpec{.batch = 2, .seqlen_q = 5, .seqlen_k = 51}));
  EXPECT_TRUE(absl::StrContains(status.message(), "k.shape: 102 tokens")) << status;
  EXPECT_TRUE(ForwardOnce(DenseForwardRequest(RequestSpec{.batch = 2, .seqlen_q = 50, .seqlen_k = 50})).ok());
}

TEST_F(LimitsTest, CallsBeyondTheConcurrentStreamsOfAConnectionWaitOnTheClient) {
  ServerOptions options;
  options.max_concurrent_streams = 2;
  options.worker_threads = 8;
  Start(options);
  state_->Close();
  std::vector<absl::Status> statuses;
  auto calls = StartCalls(6, &statuses);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 2, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(state_->Checks(), 2) << "only max_concurrent_streams calls of one connection reach the server";
  // A call queued behind them on the client runs out of time there.
  std::vector<absl::Status> late_status;
  auto late = StartCalls(1, &late_status, absl::Milliseconds(200));
  ASSERT_TRUE(late[0]->WaitFor(absl::Seconds(10)));
  EXPECT_EQ(late_status[0].code(), absl::StatusCode::kDeadlineExceeded) << late_status[0];
  state_->Open();
  for (auto& call : calls) ASSERT_TRUE(call->WaitFor(absl::Seconds(20)));
  for (const absl::Status& s : statuses) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(state_->Entered(), 6);
}

TEST_F(LimitsTest, CallsBeyondTheWorkerQueueAreRefusedAtOnce) {
  ServerOptions options;
  options.worker_threads = 1;
  options.max_queued_calls = 2;
  Start(options);
  state_->Close();
  // One call first, until the worker holds it: sent together, all three could reach the queue before
  // the worker takes one, and the third would be refused instead of the probe below.
  std::vector<absl::Status> statuses, queued_statuses;
  auto held = StartCalls(1, &statuses);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));
  auto queued = StartCalls(2, &queued_statuses);
  ASSERT_TRUE(WaitUntil([this] { return absl::StrContains(server_->metrics().Render(), "\nattnd_queue_depth 2\n"); }));
  const absl::Status busy = ForwardOnce(DenseForwardRequest(RequestSpec{}));
  EXPECT_EQ(busy.code(), absl::StatusCode::kResourceExhausted) << busy;
  EXPECT_TRUE(absl::StrContains(busy.message(), "server busy")) << busy;
  state_->Open();
  for (auto& call : held) ASSERT_TRUE(call->WaitFor(absl::Seconds(20)));
  for (auto& call : queued) ASSERT_TRUE(call->WaitFor(absl::Seconds(20)));
  for (const absl::Status& s : statuses) EXPECT_TRUE(s.ok()) << s;
  for (const absl::Status& s : queued_statuses) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(state_->Entered(), 3);
}

TEST_F(LimitsTest, CallsBeyondTheBatchQueueAreRefusedAtOnce) {
  engine::BatcherOptions batcher;
  batcher.max_queue_requests = 1;
  batcher.executor_threads = 1;
  batcher.max_batch_requests = 1;
  ServerOptions options;
  options.worker_threads = 8;
  auto backend = std::make_unique<BatchingBackend>(std::make_unique<FakeBackend>(state_), batcher);
  const BatchingBackend* batching = backend.get();
  Start(options, std::move(backend));
  state_->Close();
  std::vector<absl::Status> statuses;
  auto computing = StartCalls(1, &statuses);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));
  std::vector<absl::Status> queued_status;
  auto queued = StartCalls(1, &queued_status);
  ASSERT_TRUE(WaitUntil([batching] { return batching->Stats().queue_depth == 1; }));
  const absl::Status busy = ForwardOnce(DenseForwardRequest(RequestSpec{}));
  EXPECT_EQ(busy.code(), absl::StatusCode::kResourceExhausted) << busy;
  EXPECT_TRUE(absl::StrContains(busy.message(), "max_queue_requests 1")) << busy;
  state_->Open();
  ASSERT_TRUE(computing[0]->WaitFor(absl::Seconds(20)));
  ASSERT_TRUE(queued[0]->WaitFor(absl::Seconds(20)));
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
  EXPECT_TRUE(queued_status[0].ok()) << queued_status[0];
}

}  // namespace
}  // namespace attnd
