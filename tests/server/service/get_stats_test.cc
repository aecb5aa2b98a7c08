// GetStats and the engine's Prometheus series, end to end in one process: an AttentionServer over
// the daemon's engine stack on the CPU backend (StageTimingBackend > BatchingBackend > CPU), calls
// through the gRPC stub, then GetStats and GET /metrics.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "attnd/v1/attention.grpc.pb.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/engine/batching_backend.h"
#include "server/engine/engine_metrics.h"
#include "server/engine/stage_timing_backend.h"
#include "server/service/attention_server.h"
#include "tests/server/service/service_test_util.h"

namespace attnd {
namespace {

using testing::DenseForwardRequest;
using testing::RequestSpec;

class GetStatsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine::BatcherOptions batching;
    batching.max_queue_delay = absl::Milliseconds(1);
    auto engine = std::make_unique<engine::StageTimingBackend>(
        std::make_unique<BatchingBackend>(CreateCpuBackend(2), batching));
    engine_ = engine.get();
    ServerOptions options;
    options.worker_threads = 8;
    options.metrics_listen = "127.0.0.1:0";
    absl::StatusOr<std::unique_ptr<AttentionServer>> server = AttentionServer::Start(options, std::move(engine));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    RegisterEngineMetrics(server_->metrics(), engine_);
    stub_ = v1::Attention::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  v1::ServerStats Stats() {
    grpc::ClientContext context;
    v1::ServerStats stats;
    EXPECT_TRUE(stub_->GetStats(&context, v1::GetStatsRequest(), &stats).ok());
    return stats;
  }

  const Backend* engine_ = nullptr;
  std::unique_ptr<AttentionServer> server_;
  std::unique_ptr<v1::Attention::Stub> stub_;
};

TEST_F(GetStatsTest, CountsEachComputedCallOnceInEveryStageItReached) {
  const v1::ServerStats before = Stats();
  EXPECT_EQ(before.engine().total_us().count(), 0);
  EXPECT_TRUE(before.has_batcher());
  constexpr int kCalls = 5;
  for (int i = 0; i < kCalls; ++i) {
    grpc::ClientContext context;
    v1::ForwardResponse response;
    ASSERT_TRUE(stub_->Forward(&context, DenseForwardRequest(RequestSpec{.seed = uint32_t(i + 1)}), &response).ok());
  }
  grpc::ClientContext bad_context;
  v1::ForwardResponse ignored;
  ASSERT_FALSE(stub_->Forward(&bad_context, DenseForwardRequest(RequestSpec{.head_dim = 0}), &ignored).ok());

  // The service records a call when gRPC is done with it, a moment after the client has its answer.
  v1::ServerStats after;
  const absl::Time end = absl::Now() + absl::Seconds(10);
  do {
    after = Stats();
  } while (after.service().total_us().count() < kCalls && absl::Now() < end);
  EXPECT_EQ(after.service().total_us().count(), kCalls);  // the refused call is not a computed one
  EXPECT_EQ(after.service().worker_queue_us().count(), kCalls);
  const v1::EngineLatencies& e = after.engine();
  EXPECT_EQ(e.total_us().count(), kCalls);
  EXPECT_EQ(e.queue_us().count(), kCalls);
  EXPECT_EQ(e.other_us().count(), kCalls);
  EXPECT_EQ(e.h2d_us().count(), 0);  // the CPU backend has no device copies
  EXPECT_EQ(e.kernel_us().count(), 0);
  EXPECT_GE(e.total_us().sum(), e.queue_us().sum());
  EXPECT_EQ(after.batcher().completed_ok(), kCalls);
  EXPECT_EQ(after.batcher().requests_per_batch().sum(), kCalls);
  EXPECT_GT(after.uptime_s(), before.uptime_s());
  EXPECT_GT(after.service().total_us().sum(), 0);
}

TEST_F(GetStatsTest, EngineSeriesReachTheExporter) {
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext context;
    v1::ForwardResponse response;
    ASSERT_TRUE(stub_->Forward(&context, DenseForwardRequest(RequestSpec{.seed = uint32_t(i + 7)}), &response).ok());
  }
  httplib::Client client(absl::StrCat("http://", server_->metrics_address()));
  const std::vector<std::string> expected = {
      "attnd_request_stage_seconds_count{method=\"Forward\",stage=\"batch_queue\"} 3",
      "attnd_batch_requests_sum 3", "attnd_batcher_requests_total{outcome=\"ok\"} 3", "attnd_batch_queue_depth 0"};
  auto missing = [&](const std::string& text) {
    for (const std::string& line : expected)
      if (text.find(line + "\n") == std::string::npos) return line;
    return std::string();
  };
  std::string text;
  const absl::Time end = absl::Now() + absl::Seconds(10);
  do {  // the service records a call a moment after the client has its answer
    absl::SleepFor(absl::Milliseconds(10));
    httplib::Result result = client.Get("/metrics");
    ASSERT_TRUE(result);
    text = result->body;
  } while (!missing(text).empty() && absl::Now() < end);
  EXPECT_EQ(missing(text), "") << text;
}

}  // namespace
}  // namespace attnd
