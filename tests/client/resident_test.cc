// Resident tensors end to end: a forward kept under a handle, a backward sending grad_out alone
// with the same bytes as a full backward, and handles ending by use, release, TTL and memory
// pressure, each with a clear status to a later backward.
#include "gtest/gtest.h"
#include "tests/client/transport_test_util.h"

namespace attnd::testing {
namespace {

const AttentionShape kShape = DenseShape(2, 48, 80, 4, 2, 64);

v1::ForwardRequest Keep(v1::ForwardRequest r, uint32_t ttl_ms = 0) {
  r.mutable_keep_resident()->set_keep(true);
  r.mutable_keep_resident()->set_ttl_ms(ttl_ms);
  return r;
}

v1::Tensor GradOut(uint64_t seed) {
  return *MakeTensor(DType::kBF16, WireQShape(kShape), RandomNormal(kShape.q_elements(), seed));
}

v1::BackwardRequest ByHandle(const std::string& handle, const v1::Tensor& grad_out) {
  v1::BackwardRequest r;
  r.set_resident_handle(handle);
  *r.mutable_grad_out() = grad_out;
  return r;
}

class Resident : public ::testing::Test {
 protected:
  void SetUp() override { StartTransportDaemon(&d_); }
  TransportDaemon d_;
};

TEST_F(Resident, BackwardByHandleMatchesTheFullBackwardByteForByte) {
  const v1::ForwardRequest forward = RandomForward(kShape, 1, /*causal=*/true);
  absl::StatusOr<v1::ForwardResponse> kept = d_.client->Forward(Keep(forward));
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_FALSE(kept->resident().handle().empty());
  // q, out; k, v; lse.
  EXPECT_EQ(kept->resident().bytes(), 2 * kShape.q_elements() * 2 + 2 * kShape.kv_elements() * 2 +
                                          kShape.lse_elements() * 4);
  EXPECT_EQ(kept->resident().expires_in_ms(), 60000);
  EXPECT_EQ(d_.server->resident()->handles(), 1);
  absl::StatusOr<v1::ForwardResponse> plain = d_.client->Forward(forward);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(kept->out().data(), plain->out().data());

  const v1::Tensor grad_out = GradOut(7);
  const v1::BackwardRequest full = MakeBackwardRequest(forward, *plain, grad_out);
  absl::StatusOr<v1::BackwardResponse> want = d_.client->Backward(full);
  ASSERT_TRUE(want.ok());
  const v1::BackwardRequest by_handle = ByHandle(kept->resident().handle(), grad_out);
  absl::StatusOr<v1::BackwardResponse> got = d_.client->Backward(by_handle);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), want->SerializeAsString());
  // What the handle saves on the wire: the backward request shrinks to grad_out.
  EXPECT_LT(by_handle.ByteSizeLong() * 4, full.ByteSizeLong());

  // Used once, released: a second backward hears why.
  absl::StatusOr<v1::BackwardResponse> again = d_.client->Backward(by_handle);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.status().message().find("released after its backward"), std::string::npos) << again.status();
  EXPECT_NE(again.status().message().find(kept->resident().handle()), std::string::npos);
  EXPECT_TRUE(TransportIdle(*d_.server));
}

TEST_F(Resident, KeptAfterBackwardUntilReleased) {
  absl::StatusOr<v1::ForwardResponse> kept = d_.client->Forward(Keep(RandomForward(kShape, 2)));
  ASSERT_TRUE(kept.ok());
  v1::BackwardRequest request = ByHandle(kept->resident().handle(), GradOut(3));
  request.set_keep_resident_after(true);
  absl::StatusOr<v1::BackwardResponse> first = d_.client->Backward(request);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<v1::BackwardResponse> second = d_.client->Backward(request);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->SerializeAsString(), second->SerializeAsString());
  absl::StatusOr<int64_t> freed = d_.client->ReleaseResident(kept->resident().handle());
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, kept->resident().bytes());
  EXPECT_EQ(d_.client->ReleaseResident(kept->resident().handle()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<v1::BackwardResponse> late = d_.client->Backward(request);
  EXPECT_NE(late.status().message().find("released by ReleaseResident"), std::string::npos) << late.status();
  EXPECT_TRUE(TransportIdle(*d_.server));
}

TEST(ResidentLifetime, ExpiredHandlesAreReportedAsExpired) {
  TransportDaemon d;
  StartTransportDaemon(&d);
  absl::StatusOr<v1::ForwardResponse> kept = d.client->Forward(Keep(RandomForward(kShape, 4), /*ttl_ms=*/100));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->resident().expires_in_ms(), 100);
  absl::SleepFor(absl::Milliseconds(600));
  absl::StatusOr<v1::BackwardResponse> late = d.client->Backward(ByHandle(kept->resident().handle(), GradOut(5)));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(late.status().message().find("expired"), std::string::npos) << late.status();
  EXPECT_TRUE(TransportIdle(*d.server));
}

TEST(ResidentLifetime, MemoryPressureEvictsTheOldestHandleWithAClearError) {
  const int64_t one = 2 * kShape.q_elements() * 2 + 2 * kShape.kv_elements() * 2 + kShape.lse_elements() * 4;
  TransportDaemon d;
  StartTransportDaemon(&d, nullptr, [one](ServerOptions& o) { o.resident_bytes = one * 3 / 2; });
  absl::StatusOr<v1::ForwardResponse> first = d.client->Forward(Keep(RandomForward(kShape, 6)));
  absl::StatusOr<v1::ForwardResponse> second = d.client->Forward(Keep(RandomForward(kShape, 7)));
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(d.server->resident()->handles(), 1);
  absl::StatusOr<v1::BackwardResponse> evicted = d.client->Backward(ByHandle(first->resident().handle(), GradOut(8)));
  EXPECT_EQ(evicted.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(evicted.status().message().find("evicted under memory pressure"), std::string::npos) << evicted.status();
  EXPECT_TRUE(d.client->Backward(ByHandle(second->resident().handle(), GradOut(9))).ok());
  EXPECT_TRUE(TransportIdle(*d.server));
}

TEST_F(Resident, MalformedHandleRequestsNameTheField) {
  absl::StatusOr<v1::ForwardResponse> kept = d_.client->Forward(Keep(RandomForward(kShape, 10)));
  ASSERT_TRUE(kept.ok());
  const std::string handle = kept->resident().handle();
  v1::BackwardRequest with_q = ByHandle(handle, GradOut(11));
  *with_q.mutable_q() = GradOut(12);
  absl::StatusOr<v1::BackwardResponse> r = d_.client->Backward(with_q);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("q: must be absent"), std::string::npos) << r.status();
  v1::BackwardRequest causal = ByHandle(handle, GradOut(11));
  causal.mutable_params()->set_causal(true);
  EXPECT_NE(d_.client->Backward(causal).status().message().find("params"), std::string::npos);
  v1::BackwardRequest wrong_shape = ByHandle(handle, *MakeTensor(DType::kBF16, {1, 2}, {1.f, 2.f}));
  EXPECT_NE(d_.client->Backward(wrong_shape).status().message().find("grad_out.shape"), std::string::npos);
  EXPECT_EQ(d_.client->Backward(ByHandle("no-such-handle", GradOut(13))).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(d_.client->ReleaseResident(handle).ok());
  EXPECT_TRUE(TransportIdle(*d_.server));
}

TEST(ResidentOff, KeepingWithoutAStoreIsFailedPrecondition) {
  TransportDaemon d;
  StartTransportDaemon(&d, nullptr, [](ServerOptions& o) { o.resident_bytes = 0; });
  absl::StatusOr<v1::ForwardResponse> r = d.client->Forward(Keep(RandomForward(kShape, 14)));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("keep_resident"), std::string::npos);
}

}  // namespace
}  // namespace attnd::testing
