// The zero-copy wire end to end: attnd::Client's paths (message bytes, caller buffers, streamed
// chunks) give byte for byte what a stock protobuf client gets, and streamed calls carry what a
// unary call may not, with clear errors for broken streams.
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>

#include <condition_variable>
#include <mutex>

#include "attnd/v1/attention.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/client/transport_test_util.h"

namespace attnd::testing {
namespace {

// A shape with nothing round about it: odd lengths, GQA, causal with seqlen_q != seqlen_k.
AttentionShape OddShape() { return DenseShape(2, 37, 53, 4, 2, 64); }

std::unique_ptr<v1::Attention::Stub> StockStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return v1::Attention::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

class WireRoundTrip : public ::testing::Test {
 protected:
  void SetUp() override { StartTransportDaemon(&d_); }
  TransportDaemon d_;
};

TEST_F(WireRoundTrip, ForwardPathsMatchAStockClientByteForByte) {
  const v1::ForwardRequest request = RandomForward(OddShape(), 11, /*causal=*/true);
  v1::ForwardResponse stock;
  grpc::ClientContext context;
  ASSERT_TRUE(StockStub(d_.server->address())->Forward(&context, request, &stock).ok());

  absl::StatusOr<v1::ForwardResponse> messages = d_.client->Forward(request);
  ASSERT_TRUE(messages.ok()) << messages.status();
  EXPECT_EQ(messages->SerializeAsString(), stock.SerializeAsString());

  std::string out(stock.out().data().size(), '\0'), lse(stock.lse().data().size(), '\0');
  ForwardBuffers buffers;
  buffers.q = {request.q().data().data(), request.q().data().size()};
  buffers.k = {request.k().data().data(), request.k().data().size()};
  buffers.v = {request.v().data().data(), request.v().data().size()};
  buffers.out = {out.data(), out.size()};
  buffers.lse = {lse.data(), lse.size()};
  absl::StatusOr<v1::ForwardResponse> into = d_.client->Forward(WithoutData(request), buffers);
  ASSERT_TRUE(into.ok()) << into.status();
  EXPECT_EQ(out, stock.out().data());
  EXPECT_EQ(lse, stock.lse().data());
  EXPECT_TRUE(into->out().data().empty());
  EXPECT_EQ(into->SerializeAsString(), WithoutData(stock).SerializeAsString());
}

TEST_F(WireRoundTrip, BackwardPathsMatchAStockClientByteForByte) {
  const AttentionShape shape = OddShape();
  const v1::ForwardRequest forward = RandomForward(shape, 21, true);
  absl::StatusOr<v1::ForwardResponse> fwd = d_.client->Forward(forward);
  ASSERT_TRUE(fwd.ok());
  const v1::BackwardRequest request =
      MakeBackwardRequest(forward, *fwd, *MakeTensor(DType::kBF16, WireQShape(shape), RandomNormal(shape.q_elements(), 5)));
  v1::BackwardResponse stock;
  grpc::ClientContext context;
  ASSERT_TRUE(StockStub(d_.server->address())->Backward(&context, request, &stock).ok());
  absl::StatusOr<v1::BackwardResponse> messages = d_.client->Backward(request);
  ASSERT_TRUE(messages.ok()) << messages.status();
  EXPECT_EQ(messages->SerializeAsString(), stock.SerializeAsString());

  std::string dq(stock.grad_q().data().size(), '\0'), dk(stock.grad_k().data().size(), '\0'),
      dv(stock.grad_v().data().size(), '\0');
  BackwardBuffers buffers;
  buffers.grad_out = {request.grad_out().data().data(), request.grad_out().data().size()};
  buffers.grad_q = {dq.data(), dq.size()};
  buffers.grad_k = {dk.data(), dk.size()};
  buffers.grad_v = {dv.data(), dv.size()};
  v1::BackwardRequest header = request;
  header.mutable_grad_out()->clear_data();
  absl::StatusOr<v1::BackwardResponse> into = d_.client->Backward(header, buffers);
  ASSERT_TRUE(into.ok()) << into.status();
  EXPECT_EQ(dq, stock.grad_q().data());
  EXPECT_EQ(dk, stock.grad_k().data());
  EXPECT_EQ(dv, stock.grad_v().data());
}

TEST_F(WireRoundTrip, StreamedCallsMatchUnaryCallsByteForByte) {
  const AttentionShape shape = OddShape();
  const v1::ForwardRequest forward = RandomForward(shape, 31, true);
  absl::StatusOr<v1::ForwardResponse> unary = d_.client->Forward(forward);
  ASSERT_TRUE(unary.ok());
  for (size_t chunk : {size_t{1000}, size_t{4096}, size_t{1} << 20}) {
    absl::StatusOr<v1::ForwardResponse> streamed = d_.client->ForwardStream(forward, {}, {}, chunk);
    ASSERT_TRUE(streamed.ok()) << streamed.status();
    EXPECT_EQ(streamed->SerializeAsString(), unary->SerializeAsString()) << "chunk " << chunk;
  }
  const v1::BackwardRequest backward = MakeBackwardRequest(
      forward, *unary, *MakeTensor(DType::kBF16, WireQShape(shape), RandomNormal(shape.q_elements(), 6)));
  absl::StatusOr<v1::BackwardResponse> unary_bwd = d_.client->Backward(backward);
  ASSERT_TRUE(unary_bwd.ok());
  absl::StatusOr<v1::BackwardResponse> streamed_bwd = d_.client->BackwardStream(backward, {}, {}, 777);
  ASSERT_TRUE(streamed_bwd.ok()) << streamed_bwd.status();
  EXPECT_EQ(streamed_bwd->SerializeAsString(), unary_bwd->SerializeAsString());
}

TEST(WireLimits, StreamsCarryWhatTheUnaryLimitRefuses) {
  TransportDaemon d;
  StartTransportDaemon(&d, nullptr, [](ServerOptions& o) {
    o.max_request_bytes = 64 << 10;
    o.max_stream_request_bytes = 1 << 20;  // set explicitly: streams go further than unary calls
  });
  const AttentionShape shape = DenseShape(1, 200, 200, 2, 2, 64);  // 3 x 51200 bytes in
  const v1::ForwardRequest forward = RandomForward(shape, 41);
  absl::StatusOr<v1::ForwardResponse> unary = d.client->Forward(forward);
  ASSERT_EQ(unary.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(unary.status().message().find("ForwardStream"), std::string::npos) << unary.status();
  absl::StatusOr<v1::ForwardResponse> streamed = d.client->ForwardStream(forward, {}, {}, 16 << 10);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  // The same bytes the CPU backend gives for these inputs.
  std::unique_ptr<Backend> cpu = CreateCpuBackend(2);
  std::string out(shape.q_elements() * 2, '\0');
  std::vector<float> lse(shape.lse_elements());
  ForwardArgs args;
  args.shape = &shape;
  args.options.softmax_scale = 0.125f;
  args.q = forward.q().data().data();
  args.k = forward.k().data().data();
  args.v = forward.v().data().data();
  args.out = out.data();
  args.lse = lse.data();
  ASSERT_TRUE(cpu->Forward(args).ok());
  EXPECT_EQ(streamed->out().data(), out);
  EXPECT_EQ(streamed->lse().data(), std::string(reinterpret_cast<const char*>(lse.data()), lse.size() * 4));
}

// Broken streams from a stock client (generated sync stub): clear INVALID_ARGUMENT, naming what.
TEST_F(WireRoundTrip, BrokenStreamsAreRefusedNamingTheProblem) {
  const v1::ForwardRequest forward = RandomForward(DenseShape(1, 8, 8, 1, 1, 32), 51);
  auto run = [&](const std::vector<v1::ForwardStreamRequest>& messages) {
    grpc::ClientContext context;
    auto stream = StockStub(d_.server->address())->ForwardStream(&context);
    for (const auto& m : messages) stream->Write(m);
    stream->WritesDone();
    v1::ForwardStreamResponse ignored;
    while (stream->Read(&ignored)) {
    }
    return stream->Finish();
  };
  v1::ForwardStreamRequest with_data;
  *with_data.mutable_header() = forward;
  v1::ForwardStreamRequest header;
  *header.mutable_header() = WithoutData(forward);
  auto chunk = [&](uint32_t tensor, uint64_t offset, size_t n) {
    v1::ForwardStreamRequest m;
    m.mutable_chunk()->set_tensor(tensor);
    m.mutable_chunk()->set_offset(offset);
    m.mutable_chunk()->set_data(forward.q().data().substr(0, n));
    return m;
  };
  const size_t bytes = forward.q().data().size();
  struct Case {
    std::vector<v1::ForwardStreamRequest> messages;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{with_data}, "header.q.data"},
      {{header, chunk(1, 0, bytes)}, "k: the stream ended after 0 of its"},
      {{chunk(1, 0, 8), header}, "chunk: sent before the header"},
      {{header, chunk(1, 8, 8)}, "chunk.offset"},
      {{header, chunk(1, 0, bytes), chunk(1, bytes, 2)}, "run past the end of q"},
      {{header, chunk(9, 0, 8)}, "chunk.tensor"},
      {{}, "header: the stream ended without one"},
  };
  for (const Case& c : cases) {
    grpc::Status s = run(c.messages);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.says << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.says), std::string::npos) << s.error_message();
  }
}

TEST_F(WireRoundTrip, AnOutputBufferOfTheWrongSizeIsDataLoss) {
  const v1::ForwardRequest request = RandomForward(DenseShape(1, 8, 8, 1, 1, 32), 61);
  std::string out(10, '\0');
  ForwardBuffers buffers;
  buffers.out = {out.data(), out.size()};
  absl::StatusOr<v1::ForwardResponse> r = d_.client->Forward(request, buffers);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("out"), std::string::npos) << r.status();
}

TEST_F(WireRoundTrip, AMalformedMessageIsInvalidArgumentAndTheDaemonServesOn) {
  grpc::GenericStub generic(grpc::CreateChannel(d_.server->address(), grpc::InsecureChannelCredentials()));
  const std::string junk("\x0a\xff\xff\xff\x0f garbage", 13);
  grpc::Slice slice(junk.data(), junk.size());
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  generic.UnaryCall(&context, "/attnd.v1.Attention/Forward", grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = s;
                      done = true;
                      cv.notify_all();
                    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("ForwardRequest: malformed"), std::string::npos) << status.error_message();
  EXPECT_TRUE(d_.client->Forward(RandomForward(DenseShape(1, 8, 8, 1, 1, 32), 71)).ok());
  EXPECT_TRUE(TransportIdle(*d_.server));
}

}  // namespace
}  // namespace attnd::testing
