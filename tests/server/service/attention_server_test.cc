// AttentionServer on loopback (port 0), driven through the generated stub: round trips, bad
// requests (each followed by a good one), concurrency, deadlines, cancellation, server info,
// health, reflection and shutdown with calls in flight. FakeBackend makes outputs exact and lets a
// test hold calls inside the backend; the CPU backend is checked against the float64 oracle.
#include "server/service/attention_server.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "attnd/v1/attention.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/service/worker_pool.h"
#include "tests/server/service/service_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd {
namespace {

using testing::BackwardRequestFor;
using testing::Decode;
using testing::DenseForwardRequest;
using testing::FakeBackend;
using testing::FakeBackendState;
using testing::PackedForwardRequest;
using testing::RequestSpec;

std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

std::chrono::system_clock::time_point In(absl::Duration d) { return absl::ToChronoTime(absl::Now() + d); }

// One asynchronous call through the stub's callback API.
template <typename Request, typename Response>
struct AsyncCall {
  grpc::ClientContext context;
  Request request;
  Response response;
  grpc::Status status;
  absl::Notification done;
};
using AsyncForward = AsyncCall<v1::ForwardRequest, v1::ForwardResponse>;

void StartForward(v1::Attention::Stub* stub, AsyncForward* call) {
  stub->async()->Forward(&call->context, &call->request, &call->response, [call](grpc::Status s) {
    call->status = std::move(s);
    call->done.Notify();
  });
}

// The fake backend's forward: out is q's bytes, lse[i] = i * scale.
void ExpectFakeForward(const v1::ForwardRequest& request, const v1::ForwardResponse& response, float scale) {
  EXPECT_EQ(response.out().dtype(), request.q().dtype());
  EXPECT_EQ(testing::Shape(response.out()), testing::Shape(request.q()));
  EXPECT_TRUE(response.out().data() == request.q().data()) << "out bytes differ from q";
  EXPECT_EQ(response.lse().dtype(), v1::DTYPE_FP32);
  EXPECT_EQ(testing::Shape(response.lse()), testing::WireLseShape(request));
  const std::vector<double> lse = Decode(response.lse().data(), DType::kFP32);
  int64_t q_rows = 1;
  for (int i = 0; i + 2 < request.q().shape_size(); ++i) q_rows *= request.q().shape(i);
  ASSERT_EQ(static_cast<int64_t>(lse.size()), q_rows * request.q().shape(request.q().shape_size() - 2));
  for (size_t i = 0; i < lse.size(); ++i) ASSERT_FLOAT_EQ(lse[i], static_cast<float>(i) * scale) << i;
}

class AttentionServerTest : public ::testing::Test {
 protected:
  void StartServer(int workers = 2, ServerOptions options = {}) {
    options.worker_threads = workers;
    absl::StatusOr<std::unique_ptr<AttentionServer>> server =
        AttentionServer::Start(options, std::make_unique<FakeBackend>(state_));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = Connect(server_->address());
    stub_ = v1::Attention::NewStub(channel_);
  }

  grpc::Status Forward(const v1::ForwardRequest& request, v1::ForwardResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    return stub_->Forward(&context, request, response);
  }

  void ExpectGoodForwardSucceeds() {
    v1::ForwardRequest request = DenseForwardRequest(RequestSpec{});
    v1::ForwardResponse response;
    grpc::Status status = Forward(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ExpectFakeForward(request, response, 0.25f);
  }

  std::shared_ptr<FakeBackendState> state_ = std::make_shared<FakeBackendState>();
  std::unique_ptr<AttentionServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Attention::Stub> stub_;
};

TEST_F(AttentionServerTest, PicksAFreePortAndReportsADialableAddress) {
  StartServer();
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));

  ServerOptions wildcard;
  wildcard.listen = "0.0.0.0:0";
  absl::StatusOr<std::unique_ptr<AttentionServer>> other =
      AttentionServer::Start(wildcard, std::make_unique<FakeBackend>(state_));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ((*other)->address(), "127.0.0.1:" + std::to_string((*other)->port()));
  auto stub = v1::Attention::NewStub(Connect((*other)->address()));
  grpc::ClientContext context;
  v1::ServerInfo info;
  EXPECT_TRUE(stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
}

TEST_F(AttentionServerTest, PortInUseIsAnError) {
  StartServer();
  ServerOptions same;
  same.listen = server_->address();
  absl::StatusOr<std::unique_ptr<AttentionServer>> other =
      AttentionServer::Start(same, std::make_unique<FakeBackend>(state_));
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(other.status().message(), server_->address())) << other.status();
}

TEST_F(AttentionServerTest, MalformedListenAddressesAreRefused) {
  for (const std::string listen : {"127.0.0.1:99999", "127.0.0.1", ":50051", "127.0.0.1:-1", "127.0.0.1:http", ""}) {
    ServerOptions options;
    options.listen = listen;
    absl::StatusOr<std::unique_ptr<AttentionServer>> server =
        AttentionServer::Start(options, std::make_unique<FakeBackend>(state_));
    ASSERT_FALSE(server.ok()) << listen;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << listen;
    EXPECT_TRUE(absl::StartsWith(server.status().message(), "listen:")) << server.status();
  }
}

TEST_F(AttentionServerTest, BadOptionsAreRefused) {
  EXPECT_EQ(AttentionServer::Start(ServerOptions{}, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  for (int64_t bytes : {int64_t{0}, int64_t{-1}, kMaxRequestBytesLimit + 1}) {
    ServerOptions options;
    options.max_request_bytes = bytes;
    absl::StatusOr<std::unique_ptr<AttentionServer>> server =
        AttentionServer::Start(options, std::make_unique<FakeBackend>(state_));
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << bytes;
    EXPECT_TRUE(absl::StartsWith(server.status().message(), "max_request_bytes")) << server.status();
  }
  ServerOptions options;
  options.max_tokens_per_request = 0;
  EXPECT_EQ(AttentionServer::Start(options, std::make_unique<FakeBackend>(state_)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AttentionServerTest, ServesOnAUnixSocket) {
  ServerOptions options;
  options.listen = "unix:" + ::testing::TempDir() + "attnd_test_" + std::to_string(getpid()) + ".sock";
  options.worker_threads = 1;
  absl::StatusOr<std::unique_ptr<AttentionServer>> server =
      AttentionServer::Start(options, std::make_unique<FakeBackend>(state_));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->port(), 0);
  EXPECT_EQ((*server)->address(), options.listen);
  auto stub = v1::Attention::NewStub(Connect((*server)->address()));
  grpc::ClientContext context;
  v1::ForwardRequest request = DenseForwardRequest(RequestSpec{});
  v1::ForwardResponse response;
  grpc::Status status = stub->Forward(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ExpectFakeForward(request, response, 0.25f);
}

TEST_F(AttentionServerTest, ForwardRoundTripDenseAndPacked) {
  StartServer();
  ExpectGoodForwardSucceeds();

  v1::ForwardRequest packed = PackedForwardRequest({3, 1, 4}, {2, 0, 5}, 4, 2, 8, DType::kFP32);
  packed.mutable_params()->set_softmax_scale(0.5f);
  v1::ForwardResponse response;
  grpc::Status status = Forward(packed, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ExpectFakeForward(packed, response, 0.5f);
  EXPECT_EQ(testing::Shape(response.lse()), (std::vector<int64_t>{4, 8}));  // [heads_q, total_q]
}

TEST_F(AttentionServerTest, BackwardRoundTrip) {
  StartServer();
  RequestSpec spec;
  spec.dtype = DType::kFP16;
  v1::BackwardRequest request = BackwardRequestFor(DenseForwardRequest(spec));
  v1::BackwardResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub_->Backward(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  for (const auto& [grad, like, source] :
       {std::tuple{&response.grad_q(), &request.q(), &request.grad_out()},
        std::tuple{&response.grad_k(), &request.k(), &request.k()},
        std::tuple{&response.grad_v(), &request.v(), &request.v()}}) {
    EXPECT_EQ(grad->dtype(), v1::DTYPE_FP16);
    EXPECT_EQ(testing::Shape(*grad), testing::Shape(*like));
    EXPECT_TRUE(grad->data() == source->data());
  }
}

TEST_F(AttentionServerTest, BadRequestsGetTheirStatusAndTheServerKeepsServing) {
  state_->head_dims = {16, 32};
  StartServer();
  struct Case {
    std::string name;
    std::function<void(v1::ForwardRequest&)> mutate;
    grpc::StatusCode code;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"missing q", [](auto& r) { r.clear_q(); }, grpc::StatusCode::INVALID_ARGUMENT, "q: missing"},
      {"unspecified dtype", [](auto& r) { r.mutable_v()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       grpc::StatusCode::INVALID_ARGUMENT, "v.dtype"},
      {"rank 2", [](auto& r) { r.mutable_q()->mutable_shape()->Truncate(2); }, grpc::StatusCode::INVALID_ARGUMENT,
       "q.shape"},
      {"bytes short", [](auto& r) { r.mutable_k()->mutable_data()->resize(3); }, grpc::StatusCode::INVALID_ARGUMENT,
       "k.data"},
      {"heads not divisible",
       [](auto& r) {
         r.mutable_k()->set_shape(2, 3);
         r.mutable_v()->set_shape(2, 3);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "k.shape[2] (heads_kv)"},
      {"cu_seqlens on dense", [](auto& r) { r.mutable_params()->add_cu_seqlens_q(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "params.cu_seqlens_q"},
      {"head_dim the backend lacks",
       [](auto& r) {
         r = DenseForwardRequest(RequestSpec{.head_dim = 8});
       },
       grpc::StatusCode::INVALID_ARGUMENT, "q.shape"},
      {"negative scale", [](auto& r) { r.mutable_params()->set_softmax_scale(-1.f); },
       grpc::StatusCode::INVALID_ARGUMENT, "params.softmax_scale"},
      {"too many tokens", [](auto& r) { r = DenseForwardRequest(RequestSpec{.batch = 1, .seqlen_q = 1025}); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "q.shape"},
  };
  ServerOptions options;
  options.max_tokens_per_request = 1024;
  server_.reset();
  StartServer(2, options);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ForwardRequest request = DenseForwardRequest(RequestSpec{});
    c.mutate(request);
    v1::ForwardResponse response;
    grpc::Status status = Forward(request, &response);
    EXPECT_EQ(status.error_code(), c.code) << status.error_message();
    EXPECT_TRUE(absl::StartsWith(status.error_message(), c.field)) << status.error_message();
    EXPECT_FALSE(response.has_out());
    ExpectGoodForwardSucceeds();
  }
  // A malformed backward too.
  v1::BackwardRequest backward = BackwardRequestFor(DenseForwardRequest(RequestSpec{}));
  backward.mutable_lse()->set_dtype(v1::DTYPE_FP16);
  v1::BackwardResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub_->Backward(&context, backward, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StartsWith(status.error_message(), "lse.dtype")) << status.error_message();
  ExpectGoodForwardSucceeds();
  EXPECT_EQ(state_->Entered(), static_cast<int>(cases.size()) + 1) << "only good requests reach the backend";
}

TEST_F(AttentionServerTest, BackendErrorsReachTheClientAndTheServerKeepsServing) {
  StartServer();
  {
    absl::MutexLock l(&state_->mu);
    state_->fail_with = absl::InternalError("fake backend failure");
  }
  v1::ForwardResponse response;
  grpc::Status status = Forward(DenseForwardRequest(RequestSpec{}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(status.error_message(), "fake backend failure");
  {
    absl::MutexLock l(&state_->mu);
    state_->fail_with = absl::OkStatus();
  }
  ExpectGoodForwardSucceeds();
}

TEST_F(AttentionServerTest, RequestsLargerThanGrpcDefaultPass) {
  StartServer();
  // 3 x 4 MiB: over gRPC's default 4 MiB receive limit, well under max_request_bytes.
  RequestSpec spec{.batch = 1, .seqlen_q = 4096, .seqlen_k = 4096, .heads_q = 8, .heads_kv = 8, .head_dim = 64};
  v1::ForwardRequest request = DenseForwardRequest(spec);
  v1::ForwardResponse response;
  grpc::Status status = Forward(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ExpectFakeForward(request, response, 0.125f);
}

TEST_F(AttentionServerTest, RequestsOverMaxRequestBytesAreResourceExhausted) {
  ServerOptions options;
  options.max_request_bytes = 4096;  // the default test request is 3072 bytes, seqlen 9 is 4608
  StartServer(2, options);
  ExpectGoodForwardSucceeds();
  // Just over: refused by validation, naming the request.
  v1::ForwardResponse response;
  grpc::Status status = Forward(DenseForwardRequest(RequestSpec{.seqlen_q = 9, .seqlen_k = 9}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StartsWith(status.error_message(), "request:")) << status.error_message();
  // Far over: gRPC refuses the message before it is parsed.
  status = Forward(DenseForwardRequest(RequestSpec{.seqlen_q = 4096, .seqlen_k = 4096, .head_dim = 64}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ExpectGoodForwardSucceeds();
}

TEST_F(AttentionServerTest, ThirtyTwoConcurrentCallsAllGetTheirOwnAnswer) {
  StartServer(4);
  constexpr int kCalls = 32;
  std::vector<std::unique_ptr<AsyncForward>> calls;
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<AsyncForward>();
    RequestSpec spec;
    spec.seed = 100 + i;
    spec.seqlen_q = 1 + i;
    spec.dtype = i % 3 == 0 ? DType::kBF16 : i % 3 == 1 ? DType::kFP16 : DType::kFP32;
    call->request = DenseForwardRequest(spec);
    call->context.set_deadline(In(absl::Seconds(30)));
    calls.push_back(std::move(call));
  }
  for (auto& call : calls) StartForward(stub_.get(), call.get());
  for (auto& call : calls) {
    ASSERT_TRUE(call->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
    ASSERT_TRUE(call->status.ok()) << call->status.error_message();
    ExpectFakeForward(call->request, call->response, 0.25f);
  }
  EXPECT_EQ(state_->Entered(), kCalls);
}

TEST_F(AttentionServerTest, CallWhoseDeadlinePassesInTheQueueIsNotComputed) {
  StartServer(/*workers=*/1);
  state_->Close();
  AsyncForward blocker;
  blocker.request = DenseForwardRequest(RequestSpec{});
  StartForward(stub_.get(), &blocker);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));

  AsyncForward late;
  late.request = DenseForwardRequest(RequestSpec{});
  late.context.set_deadline(In(absl::Milliseconds(300)));
  StartForward(stub_.get(), &late);
  ASSERT_TRUE(late.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server's deadline is the client's timeout counted from when the call arrived, a little
  // later; let it (or the client's RST_STREAM) pass before the worker frees up.
  absl::SleepFor(absl::Milliseconds(500));

  state_->Open();
  ASSERT_TRUE(blocker.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(blocker.status.ok()) << blocker.status.error_message();
  // One worker, FIFO: by the time this call is computed the expired one has been dropped.
  ExpectGoodForwardSucceeds();
  EXPECT_EQ(state_->Checks(), 3);
  EXPECT_EQ(state_->Entered(), 2) << "the expired call must not be computed";
}

TEST_F(AttentionServerTest, CancelledCallIsNotComputed) {
  StartServer(/*workers=*/1);
  state_->Close();
  AsyncForward blocker;
  blocker.request = DenseForwardRequest(RequestSpec{});
  StartForward(stub_.get(), &blocker);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));

  AsyncForward cancelled;
  cancelled.request = DenseForwardRequest(RequestSpec{});
  StartForward(stub_.get(), &cancelled);
  // Validated (and so queued) on the server before the client gives up.
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::checks, 2, absl::Seconds(10)));
  cancelled.context.TryCancel();
  ASSERT_TRUE(cancelled.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED);
  // The client's callback fires at once; the server learns of the cancellation when the
  // RST_STREAM arrives, microseconds later on loopback. Give it ample time before the worker frees.
  absl::SleepFor(absl::Milliseconds(500));

  state_->Open();
  ASSERT_TRUE(blocker.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(blocker.status.ok());
  ExpectGoodForwardSucceeds();
  EXPECT_EQ(state_->Entered(), 2) << "the cancelled call must not be computed";
}

TEST_F(AttentionServerTest, GetServerInfoDescribesBackendAndLimits) {
  state_->head_dims = {64, 128};
  ServerOptions options;
  options.max_request_bytes = 1 << 20;
  options.max_tokens_per_request = 4096;
  StartServer(2, options);
  grpc::ClientContext context;
  v1::ServerInfo info;
  ASSERT_TRUE(stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  EXPECT_FALSE(info.version().empty());
  EXPECT_EQ(info.backend(), "fake");
  EXPECT_NE(std::find(info.available_backends().begin(), info.available_backends().end(), "cpu"),
            info.available_backends().end());
  ASSERT_EQ(info.devices_size(), 1);
  EXPECT_EQ(info.devices(0).name(), "fake device");
  EXPECT_EQ(info.devices(0).multiprocessors(), 3);
  EXPECT_EQ(std::vector<int>(info.supported_dtypes().begin(), info.supported_dtypes().end()),
            (std::vector<int>{v1::DTYPE_BF16, v1::DTYPE_FP16, v1::DTYPE_FP32}));
  EXPECT_EQ(std::vector<int>(info.supported_head_dims().begin(), info.supported_head_dims().end()),
            (std::vector<int>{64, 128}));
  EXPECT_EQ(info.limits().max_request_bytes(), 1 << 20);
  EXPECT_EQ(info.limits().max_tokens_per_request(), 4096);
  EXPECT_EQ(info.limits().max_head_dim(), 256);
}

TEST_F(AttentionServerTest, HealthCheckIsServing) {
  StartServer();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service : {"", "attnd.v1.Attention"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status = health->Check(&context, request, &response);
    ASSERT_TRUE(status.ok()) << service << ": " << status.error_message();
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

TEST_F(AttentionServerTest, HealthCheckOfAnUnknownServiceIsNotFound) {
  StartServer();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service("no.such.Service");
  grpc::health::v1::HealthCheckResponse response;
  EXPECT_EQ(health->Check(&context, request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
}

// Draining: watchers hear NOT_SERVING, the call in flight completes, and an open Watch does not
// hold the shutdown for the whole grace period.
TEST_F(AttentionServerTest, HealthWatchSeesNotServingAndDoesNotHoldTheShutdown) {
  StartServer(1);
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext watch_context;
  auto watch = health->Watch(&watch_context, grpc::health::v1::HealthCheckRequest());
  grpc::health::v1::HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  state_->Close();
  AsyncForward in_flight;
  in_flight.request = DenseForwardRequest(RequestSpec{});
  StartForward(stub_.get(), &in_flight);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));
  const absl::Time start = absl::Now();
  std::thread shutdown([this] { server_->Shutdown(absl::Seconds(30)); });
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  // Still draining: a health check on a new call answers NOT_SERVING.
  {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, grpc::health::v1::HealthCheckRequest(), &response).ok());
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  }

  state_->Open();
  ASSERT_TRUE(in_flight.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(in_flight.status.ok()) << in_flight.status.error_message();
  shutdown.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "Shutdown waited for the health watch";
  while (watch->Read(&update)) {  // the watch ends with the server, NOT_SERVING to the last
    EXPECT_EQ(update.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  }
  EXPECT_FALSE(watch->Finish().ok());
}

TEST_F(AttentionServerTest, ReflectionListsTheAttentionService) {
  StartServer();
  // grpc.reflection.v1alpha.ServerReflectionRequest{list_services: ""} is field 7, an empty string.
  grpc::GenericStub stub(channel_);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  auto call = stub.PrepareCall(&context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&cq](void* tag) {
    void* got = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&got, &ok));
    EXPECT_EQ(got, tag);
    return ok;
  };
  int tags[6];
  call->StartCall(&tags[0]);
  ASSERT_TRUE(step(&tags[0]));
  grpc::Slice slice(std::string("\x3a\x00", 2));
  grpc::ByteBuffer request(&slice, 1);
  call->Write(request, &tags[1]);
  ASSERT_TRUE(step(&tags[1]));
  call->WritesDone(&tags[2]);
  ASSERT_TRUE(step(&tags[2]));
  grpc::ByteBuffer reply;
  call->Read(&reply, &tags[3]);
  ASSERT_TRUE(step(&tags[3]));
  grpc::ByteBuffer none;
  call->Read(&none, &tags[4]);
  EXPECT_FALSE(step(&tags[4]));
  grpc::Status status;
  call->Finish(&status, &tags[5]);
  ASSERT_TRUE(step(&tags[5]));
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(reply.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_TRUE(absl::StrContains(bytes, "attnd.v1.Attention")) << bytes;
  EXPECT_TRUE(absl::StrContains(bytes, "grpc.health.v1.Health")) << bytes;
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(AttentionServerTest, ShutdownLetsInFlightCallsFinishAndRefusesNewOnes) {
  StartServer(/*workers=*/2);
  state_->Close();
  std::vector<std::unique_ptr<AsyncForward>> calls;
  for (int i = 0; i < 4; ++i) {
    auto call = std::make_unique<AsyncForward>();
    call->request = DenseForwardRequest(RequestSpec{.seed = static_cast<uint32_t>(10 + i)});
    StartForward(stub_.get(), call.get());
    calls.push_back(std::move(call));
  }
  // Two running in the backend, two validated and queued.
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 2, absl::Seconds(10)));
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::checks, 4, absl::Seconds(10)));
  std::atomic<bool> shut_down{false};
  std::thread shutdown([&] {
    server_->Shutdown(absl::Seconds(20));
    shut_down = true;
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(shut_down) << "Shutdown must wait for the calls in flight";

  // New calls are refused while draining, on the open channel and on a new connection.
  for (auto* stub : {stub_.get(), v1::Attention::NewStub(Connect(server_->address())).release()}) {
    grpc::ClientContext late_context;
    late_context.set_deadline(In(absl::Seconds(5)));
    v1::ForwardResponse late_response;
    grpc::Status late = stub->Forward(&late_context, DenseForwardRequest(RequestSpec{}), &late_response);
    EXPECT_EQ(late.error_code(), grpc::StatusCode::UNAVAILABLE) << late.error_message();
    EXPECT_TRUE(absl::StrContains(late.error_message(), "shutting down")) << late.error_message();
    if (stub != stub_.get()) delete stub;
  }
  EXPECT_EQ(state_->Checks(), 4) << "a call arriving while draining is refused before validation";

  state_->Open();
  for (auto& call : calls) {
    ASSERT_TRUE(call->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_TRUE(call->status.ok()) << call->status.error_message();
    ExpectFakeForward(call->request, call->response, 0.25f);
  }
  shutdown.join();
  EXPECT_TRUE(shut_down);
  EXPECT_EQ(state_->Entered(), 4);
  server_->Wait();  // returns at once after Shutdown
  server_->Shutdown();  // idempotent
}

// Calls whose requests are still arriving when the drain starts are refused (UNAVAILABLE, which
// clients retry) and never computed; every call accepted before the drain completes.
TEST_F(AttentionServerTest, CallsStillArrivingWhenDrainingAreRefusedRetriably) {
  StartServer(/*workers=*/1);
  state_->Close();
  // 768 KiB each: the later ones are still on the wire when Shutdown begins.
  const v1::ForwardRequest large = DenseForwardRequest(RequestSpec{
      .batch = 1, .seqlen_q = 2048, .seqlen_k = 2048, .heads_q = 1, .heads_kv = 1, .head_dim = 32,
      .dtype = DType::kFP32});
  std::vector<std::unique_ptr<AsyncForward>> calls;
  for (int i = 0; i < 16; ++i) {
    calls.push_back(std::make_unique<AsyncForward>());
    calls.back()->request = large;
  }
  for (auto& call : calls) StartForward(stub_.get(), call.get());
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));
  const int accepted_before = state_->Checks();
  std::thread shutdown([this] { server_->Shutdown(absl::Seconds(30)); });
  absl::SleepFor(absl::Milliseconds(100));
  state_->Open();
  int ok = 0;
  for (auto& call : calls) {
    ASSERT_TRUE(call->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    if (call->status.ok()) {
      ++ok;
      ExpectFakeForward(call->request, call->response, 1.f / std::sqrt(32.f));
    } else {
      // Refused by the draining service (UNAVAILABLE "attnd is shutting down"), or still on the
      // wire when the server finally closed its connections (UNAVAILABLE); never CANCELLED.
      EXPECT_EQ(call->status.error_code(), grpc::StatusCode::UNAVAILABLE)
          << call->status.error_code() << " " << call->status.error_message();
    }
  }
  shutdown.join();
  EXPECT_GE(ok, accepted_before);
  EXPECT_EQ(ok, state_->Entered()) << "every accepted call is computed and answered";
}

TEST_F(AttentionServerTest, ShutdownCancelsCallsStillRunningWhenGraceEnds) {
  StartServer(/*workers=*/1);
  state_->Close();
  AsyncForward running, queued;
  running.request = DenseForwardRequest(RequestSpec{});
  queued.request = DenseForwardRequest(RequestSpec{});
  StartForward(stub_.get(), &running);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));
  StartForward(stub_.get(), &queued);
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::checks, 2, absl::Seconds(10)));

  std::thread shutdown([&] { server_->Shutdown(absl::Milliseconds(200)); });
  ASSERT_TRUE(running.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(queued.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // The server closes its connections at the deadline; clients see UNAVAILABLE, never CANCELLED.
  for (const AsyncForward* call : {&running, &queued}) {
    EXPECT_EQ(call->status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << call->status.error_code() << " " << call->status.error_message();
  }
  state_->Open();  // the backend call returns; Shutdown can complete
  shutdown.join();
  EXPECT_EQ(state_->Entered(), 1) << "the queued call must be dropped, not computed";
}

TEST_F(AttentionServerTest, DestructorShutsDown) {
  StartServer();
  ExpectGoodForwardSucceeds();
  server_.reset();
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(2)));
  v1::ServerInfo info;
  EXPECT_FALSE(stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
}

// The real CPU backend behind the server, checked against the float64 oracle.
TEST(AttentionServerCpuTest, ForwardAndBackwardMatchTheReference) {
  ServerOptions options;
  options.worker_threads = 2;
  absl::StatusOr<std::unique_ptr<AttentionServer>> server = AttentionServer::Start(options, CreateCpuBackend(2));
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::Attention::NewStub(Connect((*server)->address()));

  struct Case {
    std::string name;
    v1::ForwardRequest request;
  };
  std::vector<Case> cases;
  cases.push_back({"dense bf16 causal gqa sq<sk",
                   DenseForwardRequest(RequestSpec{.batch = 2, .seqlen_q = 17, .seqlen_k = 33, .heads_q = 4,
                                                   .heads_kv = 2, .head_dim = 32, .dtype = DType::kBF16,
                                                   .causal = true, .seed = 7})});
  cases.push_back({"dense fp32 sq>sk", DenseForwardRequest(RequestSpec{.batch = 1, .seqlen_q = 20, .seqlen_k = 9,
                                                                       .heads_q = 2, .heads_kv = 1, .head_dim = 24,
                                                                       .dtype = DType::kFP32, .causal = true,
                                                                       .seed = 8})});
  cases.push_back({"packed fp16", PackedForwardRequest({3, 1, 9}, {5, 0, 9}, 4, 2, 16, DType::kFP16, 9)});
  cases.back().request.mutable_params()->set_softmax_scale(0.3f);

  for (Case& c : cases) {
    SCOPED_TRACE(c.name);
    const v1::ForwardRequest& request = c.request;
    absl::StatusOr<ValidatedForward> shape = ValidateForwardRequest(request, RequestLimits{}, nullptr);
    ASSERT_TRUE(shape.ok()) << shape.status();
    const DType dtype = shape->dtype;
    const std::vector<double> q = Decode(request.q().data(), dtype);
    const std::vector<double> k = Decode(request.k().data(), dtype);
    const std::vector<double> v = Decode(request.v().data(), dtype);
    const testing::ReferenceForward want = testing::ReferenceAttentionForward(shape->shape, shape->options, q, k, v);
    const double tolerance = dtype == DType::kFP32 ? 1e-5 : 1e-2;

    grpc::ClientContext context;
    v1::ForwardResponse response;
    grpc::Status status = stub->Forward(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_LT(testing::RelativeL2Error(Decode(response.out().data(), dtype), want.out), tolerance);
    const std::vector<double> lse = Decode(response.lse().data(), DType::kFP32);
    ASSERT_EQ(lse.size(), want.lse.size());
    for (size_t i = 0; i < lse.size(); ++i) {
      if (std::isinf(want.lse[i])) {
        EXPECT_TRUE(std::isinf(lse[i]) && lse[i] > 0) << "fully masked row " << i;
      } else {
        EXPECT_NEAR(lse[i], want.lse[i], 1e-3 * (1 + std::abs(want.lse[i]))) << i;
      }
    }

    // Backward from the server's own forward.
    v1::BackwardRequest backward = BackwardRequestFor(request);
    *backward.mutable_out() = response.out();
    *backward.mutable_lse() = response.lse();
    const testing::ReferenceBackward grads = testing::ReferenceAttentionBackward(
        shape->shape, shape->options, q, k, v, Decode(backward.grad_out().data(), dtype));
    grpc::ClientContext backward_context;
    v1::BackwardResponse backward_response;
    status = stub->Backward(&backward_context, backward, &backward_response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const double grad_tolerance = dtype == DType::kFP32 ? 1e-4 : 3e-2;
    EXPECT_LT(testing::RelativeL2Error(Decode(backward_response.grad_q().data(), dtype), grads.grad_q), grad_tolerance);
    EXPECT_LT(testing::RelativeL2Error(Decode(backward_response.grad_k().data(), dtype), grads.grad_k), grad_tolerance);
    EXPECT_LT(testing::RelativeL2Error(Decode(backward_response.grad_v().data(), dtype), grads.grad_v), grad_tolerance);
  }
}

TEST(WorkerPoolTest, RunsTasksInOrderPerThreadAndDrainsOnStop) {
  WorkerPool pool(1, 100);
  std::vector<int> order;
  absl::Mutex mu;
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(pool.Submit([&, i] {
      absl::MutexLock l(&mu);
      order.push_back(i);
    }));
  }
  pool.Stop();
  ASSERT_EQ(order.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(order[i], i);
  EXPECT_FALSE(pool.Submit([] {})) << "a stopped pool takes no work";
}

TEST(WorkerPoolTest, RefusesWorkBeyondItsQueueBound) {
  WorkerPool pool(1, 2);
  absl::Notification started, release;
  ASSERT_TRUE(pool.Submit([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  EXPECT_TRUE(pool.Submit([] {}));
  EXPECT_TRUE(pool.Submit([] {}));
  EXPECT_FALSE(pool.Submit([] {}));
  EXPECT_EQ(pool.queued(), 2u);
  release.Notify();
  pool.Stop();
  EXPECT_EQ(pool.queued(), 0u);
}

TEST(WorkerPoolTest, RunsTasksConcurrently) {
  WorkerPool pool(4, 100);
  EXPECT_EQ(pool.threads(), 4);
  absl::Mutex mu;
  int inside = 0;
  absl::Notification all_inside;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(pool.Submit([&] {
      absl::MutexLock l(&mu);
      if (++inside == 4) all_inside.Notify();
      mu.Await(absl::Condition(+[](int* n) { return *n == 4; }, &inside));
    }));
  }
  EXPECT_TRUE(all_inside.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

}  // namespace
}  // namespace attnd
