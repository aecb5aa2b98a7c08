// AttentionServer's metrics and access log, end to end in one process: calls through the gRPC
// stub, then GET /metrics over HTTP from the exporter (--metrics_listen) and the access log file.
// FakeBackend makes the calls instant and lets the test hold them to see the gauges move.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "attnd/v1/attention.grpc.pb.h"
#include "server/service/attention_server.h"
#include "server/service/attention_service.h"
#include "tests/server/service/service_test_util.h"

namespace attnd {
namespace {

using testing::DenseForwardRequest;
using testing::FakeBackend;
using testing::FakeBackendState;
using testing::RequestSpec;

// The value of one exact series ("name{labels}") in an exposition, or nullopt.
std::optional<double> Sample(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return std::nullopt;
}

class ServiceMetricsTest : public ::testing::Test {
 protected:
  void Start(int workers, std::string access_log = "") {
    ServerOptions options;
    options.worker_threads = workers;
    options.metrics_listen = "127.0.0.1:0";
    options.access_log = std::move(access_log);
    absl::StatusOr<std::unique_ptr<AttentionServer>> server =
        AttentionServer::Start(options, std::make_unique<FakeBackend>(state_));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_FALSE(server_->metrics_address().empty());
    stub_ = v1::Attention::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  std::string Scrape() {
    httplib::Client client(absl::StrCat("http://", server_->metrics_address()));
    httplib::Result result = client.Get("/metrics");
    EXPECT_TRUE(result) << "no HTTP response from " << server_->metrics_address();
    if (!result) return "";
    EXPECT_EQ(result->status, 200);
    EXPECT_EQ(result->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    return result->body;
  }

  // Calls are recorded when gRPC is done with them, a moment after the client has its answer.
  bool WaitForSample(const std::string& series, double want, std::string* text) {
    const absl::Time end = absl::Now() + absl::Seconds(10);
    do {
      *text = Scrape();
      if (Sample(*text, series) == want) return true;
      absl::SleepFor(absl::Milliseconds(10));
    } while (absl::Now() < end);
    return false;
  }

  grpc::Status Forward(const v1::ForwardRequest& request, v1::ForwardResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    return stub_->Forward(&context, request, response);
  }

  std::shared_ptr<FakeBackendState> state_ = std::make_shared<FakeBackendState>();
  std::unique_ptr<AttentionServer> server_;
  std::unique_ptr<v1::Attention::Stub> stub_;
};

TEST_F(ServiceMetricsTest, CountsCallsByStatusBytesAndStages) {
  state_->head_dims = {16};
  Start(/*workers=*/2);
  const std::string before = Scrape();
  EXPECT_EQ(Sample(before, "attnd_requests_total{code=\"OK\",method=\"Forward\"}"), 0);
  EXPECT_EQ(Sample(before, "attnd_workers"), 2);
  EXPECT_EQ(Sample(before, "attnd_build_info{backend=\"fake\",version=\"" + std::string(AttndVersion()) + "\"}"), 1);

  int64_t request_bytes = 0, response_bytes = 0;
  for (int i = 0; i < 3; ++i) {
    const v1::ForwardRequest request = DenseForwardRequest(RequestSpec{.seed = static_cast<uint32_t>(i + 1)});
    v1::ForwardResponse response;
    ASSERT_TRUE(Forward(request, &response).ok());
    request_bytes += static_cast<int64_t>(request.ByteSizeLong());
    response_bytes += static_cast<int64_t>(response.ByteSizeLong());
  }
  v1::ForwardRequest bad = DenseForwardRequest(RequestSpec{.head_dim = 32});
  v1::ForwardResponse ignored;
  ASSERT_EQ(Forward(bad, &ignored).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request_bytes += static_cast<int64_t>(bad.ByteSizeLong());

  std::string text;
  ASSERT_TRUE(WaitForSample("attnd_request_stage_seconds_count{method=\"Forward\",stage=\"total\"}", 4, &text))
      << text;
  EXPECT_EQ(Sample(text, "attnd_requests_total{code=\"OK\",method=\"Forward\"}"), 3);
  EXPECT_EQ(Sample(text, "attnd_requests_total{code=\"INVALID_ARGUMENT\",method=\"Forward\"}"), 1);
  EXPECT_EQ(Sample(text, "attnd_request_bytes_total{method=\"Forward\"}"), request_bytes);
  EXPECT_EQ(Sample(text, "attnd_response_bytes_total{method=\"Forward\"}"), response_bytes);
  EXPECT_GT(response_bytes, 0);
  // The refused call never queued nor computed: only its total is observed.
  EXPECT_EQ(Sample(text, "attnd_request_stage_seconds_count{method=\"Forward\",stage=\"queue_wait\"}"), 3);
  EXPECT_EQ(Sample(text, "attnd_request_stage_seconds_count{method=\"Forward\",stage=\"compute\"}"), 3);
  EXPECT_EQ(Sample(text, "attnd_request_stage_seconds_bucket{method=\"Forward\",stage=\"total\",le=\"+Inf\"}"), 4);
  EXPECT_GT(*Sample(text, "attnd_request_stage_seconds_sum{method=\"Forward\",stage=\"total\"}"), 0);
}

TEST_F(ServiceMetricsTest, GaugesShowBusyWorkersQueueDepthAndCallsInFlight) {
  Start(/*workers=*/1);
  state_->Close();  // calls wait inside the backend
  constexpr int kCalls = 3;
  struct Call {
    grpc::ClientContext context;
    v1::ForwardRequest request = DenseForwardRequest(RequestSpec{});
    v1::ForwardResponse response;
    grpc::Status status;
    absl::Notification done;
  };
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(std::make_unique<Call>());
    Call* c = calls.back().get();
    stub_->async()->Forward(&c->context, &c->request, &c->response, [c](grpc::Status s) {
      c->status = std::move(s);
      c->done.Notify();
    });
  }
  std::string text;
  EXPECT_TRUE(WaitForSample("attnd_queue_depth", kCalls - 1, &text)) << text;
  EXPECT_EQ(Sample(text, "attnd_workers_busy"), 1);
  EXPECT_EQ(Sample(text, "attnd_calls_in_flight"), kCalls);
  state_->Open();
  for (auto& c : calls) {
    c->done.WaitForNotification();
    EXPECT_TRUE(c->status.ok()) << c->status.error_message();
  }
  EXPECT_TRUE(WaitForSample("attnd_calls_in_flight", 0, &text)) << text;
  EXPECT_EQ(Sample(text, "attnd_queue_depth"), 0);
  EXPECT_EQ(Sample(text, "attnd_workers_busy"), 0);
}

TEST_F(ServiceMetricsTest, AccessLogHasOneLinePerCall) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/attnd_access_", getpid(), ".log");
  std::remove(path.c_str());
  Start(/*workers=*/1, path);
  const v1::ForwardRequest request = DenseForwardRequest(RequestSpec{});
  v1::ForwardResponse response;
  ASSERT_TRUE(Forward(request, &response).ok());
  v1::ForwardRequest bad = request;
  bad.mutable_q()->clear_data();
  ASSERT_EQ(Forward(bad, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  server_->Shutdown(absl::Seconds(5));  // every call is done and logged

  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 2u);
  // A call is logged when gRPC reports it done (OnDone), which can come after the client already
  // has its response and has sent the next call: the two lines may be in either order.
  if (absl::StrContains(lines[0], "code=INVALID_ARGUMENT")) std::swap(lines[0], lines[1]);
  EXPECT_TRUE(absl::StrContains(lines[0], "log=access method=Forward code=OK peer=")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], absl::StrCat(" request_bytes=", request.ByteSizeLong(), " "))) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], " response_bytes=")) << lines[0];
  EXPECT_FALSE(absl::StrContains(lines[0], "compute_ms=-")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[1], "method=Forward code=INVALID_ARGUMENT")) << lines[1];
  EXPECT_TRUE(absl::StrContains(lines[1], " response_bytes=0 queue_ms=- compute_ms=- total_ms=")) << lines[1];
  std::remove(path.c_str());
}

TEST(ServiceMetricsOptionsTest, BadOrBusyMetricsAddressFailsTheStart) {
  auto state = std::make_shared<FakeBackendState>();
  ServerOptions options;
  options.metrics_listen = "127.0.0.1:70000";
  EXPECT_EQ(AttentionServer::Start(options, std::make_unique<FakeBackend>(state)).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.metrics_listen = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<AttentionServer>> first =
      AttentionServer::Start(options, std::make_unique<FakeBackend>(state));
  ASSERT_TRUE(first.ok()) << first.status();
  options.metrics_listen = (*first)->metrics_address();
  absl::StatusOr<std::unique_ptr<AttentionServer>> second =
      AttentionServer::Start(options, std::make_unique<FakeBackend>(state));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  options.metrics_listen = "";
  options.access_log = "/nonexistent-dir/access.log";
  EXPECT_EQ(AttentionServer::Start(options, std::make_unique<FakeBackend>(state)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnd
