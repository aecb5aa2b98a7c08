// Tensors of megabytes both ways, checked byte for byte (ByteMixingBackend makes every output byte
// a function of input bytes), over every combination of how the daemon and the client gather
// received bytes (on one thread, or over ParallelCopy's helpers from 1 MiB up) and how the client
// sends them (one unary message, or ForwardStream / BackwardStream chunks above stream_above_bytes).
// Sizes sit on both sides of the 1 MiB parallel threshold and of the streaming threshold, and the
// chunks are cut off any tensor boundary.
#include <string>
#include <tuple>

#include "gtest/gtest.h"
#include "tests/client/test_backends.h"
#include "tests/client/transport_test_util.h"

namespace attnd::testing {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

std::string Xor(const std::string& a, const std::string& b) {
  std::string out(a.size(), '\0');
  for (size_t i = 0; i < a.size(); ++i) out[i] = static_cast<char>(a[i] ^ b[i]);
  return out;
}

InputBytes In(const v1::Tensor& t) { return {t.data().data(), t.data().size()}; }
OutputBytes Out(std::string& s) { return {s.data(), s.size()}; }

// (parallel_copy on both ends, client's stream_above_bytes)
class LargePayloads : public ::testing::TestWithParam<std::tuple<bool, int64_t>> {
 protected:
  void SetUp() override {
    const auto [parallel, stream_above] = GetParam();
    StartTransportDaemon(&d_, std::make_unique<ByteMixingBackend>(),
                         [parallel = parallel](ServerOptions& o) { o.parallel_copy = parallel; });
    ClientOptions options = OptionsFor(d_.server->address());
    options.parallel_copy = parallel;
    options.stream_above_bytes = stream_above;
    options.stream_chunk_bytes = kMiB + 4099;  // chunk edges fall inside tensors
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  TransportDaemon d_;
  std::unique_ptr<Client> client_;
};

// H=1, d=64, bf16: 128 bytes per token, so 8192 tokens make a tensor of exactly 1 MiB.
TEST_P(LargePayloads, ForwardAndBackwardCarryEveryByteBothWays) {
  for (int seqlen : {8191, 8192, 8193, 3 * 8192 + 5, 70001}) {
    SCOPED_TRACE(seqlen);
    const AttentionShape shape = DenseShape(1, seqlen, seqlen, 1, 1, 64);
    const v1::ForwardRequest forward = RandomForward(shape, static_cast<uint64_t>(seqlen));
    const std::string& q = forward.q().data();
    const std::string want_out = Xor(Xor(q, forward.k().data()), forward.v().data());
    const std::string want_lse = q.substr(0, static_cast<size_t>(shape.lse_elements()) * 4);

    absl::StatusOr<v1::ForwardResponse> messages = client_->Forward(forward);  // bytes in the messages
    ASSERT_TRUE(messages.ok()) << messages.status();
    EXPECT_TRUE(messages->out().data() == want_out);
    EXPECT_TRUE(messages->lse().data() == want_lse);

    std::string out(want_out.size(), '\0'), lse(want_lse.size(), '\0');
    ForwardBuffers fb{In(forward.q()), In(forward.k()), In(forward.v()), Out(out), Out(lse)};
    absl::StatusOr<v1::ForwardResponse> into = client_->Forward(WithoutData(forward), fb);
    ASSERT_TRUE(into.ok()) << into.status();
    EXPECT_TRUE(out == want_out);
    EXPECT_TRUE(lse == want_lse);

    const v1::BackwardRequest backward = MakeBackwardRequest(
        forward, *messages, *MakeTensor(DType::kBF16, WireQShape(shape), RandomNormal(shape.q_elements(), 3)));
    std::string gq(q.size(), '\0'), gk(q.size(), '\0'), gv(q.size(), '\0');
    BackwardBuffers bb{In(backward.q()),   In(backward.k()),        In(backward.v()),
                       In(backward.out()), In(backward.lse()),      In(backward.grad_out()),
                       Out(gq),            Out(gk),                 Out(gv)};
    absl::StatusOr<v1::BackwardResponse> grads = client_->Backward(WithoutData(backward), bb);
    ASSERT_TRUE(grads.ok()) << grads.status();
    EXPECT_TRUE(gq == Xor(q, backward.grad_out().data()));
    EXPECT_TRUE(gk == Xor(forward.k().data(), want_out));
    EXPECT_TRUE(gv == forward.v().data());
  }
  EXPECT_TRUE(TransportIdle(*d_.server));
  // Every call took the route the client's threshold says (the records are written as calls end).
  const bool streamed = std::get<1>(GetParam()) > 0;
  auto calls = [this](const char* method) {
    return d_.server->metrics()
        .GetCounter("attnd_requests_total", "", {{"code", "OK"}, {"method", method}})
        .Value();
  };
  for (int i = 0; i < 100 && calls(streamed ? "BackwardStream" : "Backward") < 5; ++i) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(calls("ForwardStream"), streamed ? 10 : 0);
  EXPECT_EQ(calls("Forward"), streamed ? 0 : 10);
  EXPECT_EQ(calls("BackwardStream"), streamed ? 5 : 0);
  EXPECT_EQ(calls("Backward"), streamed ? 0 : 5);
}

INSTANTIATE_TEST_SUITE_P(GatherAndRouting, LargePayloads,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(int64_t{0}, 2 * kMiB)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Parallel" : "Serial") +
                                  (std::get<1>(info.param) ? "StreamedAbove2MiB" : "Unary");
                         });

}  // namespace
}  // namespace attnd::testing
