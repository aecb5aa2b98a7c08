// Shared-memory regions end to end: byte-exact results through regions, every misuse a clear
// status naming the field, and nothing left behind when a client unregisters, leaves or is killed
// in the middle of a call (regions, sessions and tensor buffers back to zero).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "client/attnd/region_session.h"
#include "gtest/gtest.h"
#include "tests/client/test_backends.h"
#include "tests/client/transport_test_util.h"

namespace attnd::testing {
namespace {

const AttentionShape kShape = DenseShape(1, 64, 96, 4, 2, 64);  // GQA, seqlen_q != seqlen_k

size_t Bytes(const v1::Tensor& t) { return t.data().size(); }

// Puts q, k, v of `request` into `region` at 4 KiB-aligned offsets and points the request at them;
// out and lse get spans after them. Returns the offsets of out and lse.
std::pair<uint64_t, uint64_t> MoveIntoRegion(v1::ForwardRequest* request, const SharedMemoryRegion& region) {
  uint64_t at = 0;
  auto place = [&](v1::Tensor* t) {
    std::memcpy(static_cast<char*>(region.data()) + at, t->data().data(), t->data().size());
    *t->mutable_region() = region.Span(at, t->data().size());
    at += (t->data().size() + 4095) / 4096 * 4096;
    t->clear_data();
  };
  place(request->mutable_q());
  place(request->mutable_k());
  place(request->mutable_v());
  const uint64_t out = at;
  const uint64_t out_bytes = kShape.q_elements() * 2;
  const uint64_t lse = out + (out_bytes + 4095) / 4096 * 4096;
  *request->mutable_out_region() = region.Span(out, out_bytes);
  *request->mutable_lse_region() = region.Span(lse, kShape.lse_elements() * 4);
  return {out, lse};
}

class SharedMemory : public ::testing::Test {
 protected:
  void SetUp() override {
    StartTransportDaemon(&d_);
    absl::StatusOr<std::unique_ptr<RegionSession>> session = RegionSession::Open(*d_.client);
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *std::move(session);
    absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> region =
        SharedMemoryRegion::Create(*d_.client, *session_, 1 << 20, "test");
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = *std::move(region);
  }
  void TearDown() override {
    region_.reset();
    session_.reset();
    if (d_.server) EXPECT_TRUE(TransportIdle(*d_.server));
  }

  TransportDaemon d_;
  std::unique_ptr<RegionSession> session_;
  std::unique_ptr<SharedMemoryRegion> region_;
};

TEST_F(SharedMemory, ForwardThroughARegionMatchesTheMessagePathByteForByte) {
  const v1::ForwardRequest request = RandomForward(kShape, 3, /*causal=*/true);
  absl::StatusOr<v1::ForwardResponse> want = d_.client->Forward(request);
  ASSERT_TRUE(want.ok());
  v1::ForwardRequest shm = request;
  const auto [out, lse] = MoveIntoRegion(&shm, *region_);
  absl::StatusOr<v1::ForwardResponse> got = d_.client->Forward(shm);
  ASSERT_TRUE(got.ok()) << got.status();
  const char* base = static_cast<const char*>(region_->data());
  EXPECT_EQ(std::string(base + out, Bytes(want->out())), want->out().data());
  EXPECT_EQ(std::string(base + lse, Bytes(want->lse())), want->lse().data());
  EXPECT_TRUE(got->out().data().empty());
  EXPECT_EQ(got->out().region().region_id(), region_->info().region_id());
  EXPECT_EQ(got->out().shape_size(), 4);
}

TEST_F(SharedMemory, BackwardGradientsIntoARegionMatchByteForByte) {
  const v1::ForwardRequest forward = RandomForward(kShape, 4, true);
  absl::StatusOr<v1::ForwardResponse> fwd = d_.client->Forward(forward);
  ASSERT_TRUE(fwd.ok());
  const v1::BackwardRequest request = MakeBackwardRequest(
      forward, *fwd, *MakeTensor(DType::kBF16, WireQShape(kShape), RandomNormal(kShape.q_elements(), 9)));
  absl::StatusOr<v1::BackwardResponse> want = d_.client->Backward(request);
  ASSERT_TRUE(want.ok());
  v1::BackwardRequest shm = request;  // grad_out and the gradients in the region, the rest inline
  std::memcpy(region_->data(), request.grad_out().data().data(), Bytes(request.grad_out()));
  *shm.mutable_grad_out()->mutable_region() = region_->Span(0, Bytes(request.grad_out()));
  shm.mutable_grad_out()->clear_data();
  *shm.mutable_grad_q_region() = region_->Span(1 << 16, Bytes(want->grad_q()));
  *shm.mutable_grad_k_region() = region_->Span(2 << 16, Bytes(want->grad_k()));
  *shm.mutable_grad_v_region() = region_->Span(3 << 16, Bytes(want->grad_v()));
  absl::StatusOr<v1::BackwardResponse> got = d_.client->Backward(shm);
  ASSERT_TRUE(got.ok()) << got.status();
  const char* base = static_cast<const char*>(region_->data());
  EXPECT_EQ(std::string(base + (1 << 16), Bytes(want->grad_q())), want->grad_q().data());
  EXPECT_EQ(std::string(base + (2 << 16), Bytes(want->grad_k())), want->grad_k().data());
  EXPECT_EQ(std::string(base + (3 << 16), Bytes(want->grad_v())), want->grad_v().data());
}

TEST_F(SharedMemory, MisusedSpansGetAStatusNamingTheField) {
  v1::ForwardRequest base = RandomForward(kShape, 5);
  MoveIntoRegion(&base, *region_);
  struct Case {
    std::function<void(v1::ForwardRequest&)> spoil;
    absl::StatusCode code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {[](v1::ForwardRequest& r) { r.mutable_q()->mutable_region()->set_region_id("shm-404"); },
       absl::StatusCode::kNotFound, "q.region.region_id"},
      {[](v1::ForwardRequest& r) { r.mutable_k()->mutable_region()->set_key("0123"); },
       absl::StatusCode::kPermissionDenied, "k.region.key"},
      {[](v1::ForwardRequest& r) { r.mutable_v()->mutable_region()->set_offset((1 << 20) - 64); },
       absl::StatusCode::kOutOfRange, "v.region"},
      {[](v1::ForwardRequest& r) { r.mutable_q()->mutable_region()->set_offset(1); },
       absl::StatusCode::kInvalidArgument, "q.region.offset"},
      {[](v1::ForwardRequest& r) { r.mutable_q()->mutable_region()->set_size(64); },
       absl::StatusCode::kInvalidArgument, "q.region.size"},
      {[](v1::ForwardRequest& r) { r.mutable_q()->set_data("x"); }, absl::StatusCode::kInvalidArgument, "q.data"},
      {[](v1::ForwardRequest& r) { r.mutable_out_region()->set_offset(r.k().region().offset()); },
       absl::StatusCode::kInvalidArgument, "out_region: bytes"},
      {[](v1::ForwardRequest& r) { r.mutable_lse_region()->set_offset(r.out_region().offset() + 64); },
       absl::StatusCode::kInvalidArgument, "overlap"},
  };
  for (const Case& c : cases) {
    v1::ForwardRequest r = base;
    c.spoil(r);
    absl::StatusOr<v1::ForwardResponse> got = d_.client->Forward(r);
    EXPECT_EQ(got.status().code(), c.code) << c.says << ": " << got.status();
    EXPECT_NE(got.status().message().find(c.says), std::string::npos) << got.status();
  }
  EXPECT_TRUE(d_.client->Forward(base).ok());  // and the daemon serves on
}

TEST_F(SharedMemory, DoubleRegistrationOfOneDescriptorIsNotFound) {
  v1::RegisterSharedMemoryRequest again;
  again.set_session(session_->token());
  again.set_fd_token("00000000000000000000000000000000");
  again.set_size(64);
  EXPECT_EQ(d_.client->RegisterSharedMemory(again).status().code(), absl::StatusCode::kNotFound);
  again.set_session("not-a-session");
  EXPECT_EQ(d_.client->RegisterSharedMemory(again).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SharedMemory, UnregisterWhileInUseIsRefusedThenSucceeds) {
  TransportDaemon gated_daemon;
  auto gated = std::make_unique<GatedBackend>(CreateCpuBackend(2));
  GatedBackend* gate = gated.get();
  StartTransportDaemon(&gated_daemon, std::move(gated));
  auto session = *RegionSession::Open(*gated_daemon.client);
  auto region = *SharedMemoryRegion::Create(*gated_daemon.client, *session, 1 << 20, "gated");
  v1::ForwardRequest request = RandomForward(kShape, 6);
  MoveIntoRegion(&request, *region);
  std::shared_ptr<PendingCall> call = gated_daemon.client->ForwardAsync(request, [](auto) {});
  ASSERT_TRUE(gate->WaitForEntered(1, absl::Seconds(10)));
  absl::Status busy = gated_daemon.client->UnregisterRegion(region->info().region_id(), region->info().key());
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(busy.message().find("in use by running calls"), std::string::npos) << busy;
  gate->Open();
  call->Wait();
  EXPECT_TRUE(gated_daemon.client->UnregisterRegion(region->info().region_id(), region->info().key()).ok());
  EXPECT_EQ(gated_daemon.server->regions()->regions(), 0);
  request.mutable_q()->mutable_region();  // the region is gone for later calls
  EXPECT_EQ(gated_daemon.client->Forward(request).status().code(), absl::StatusCode::kNotFound);
  session.reset();
  EXPECT_TRUE(TransportIdle(*gated_daemon.server));
}

TEST_F(SharedMemory, LeavingTheSessionReleasesEverything) {
  auto second = *SharedMemoryRegion::Create(*d_.client, *session_, 4 << 20, "second");
  EXPECT_EQ(d_.server->regions()->regions(), 2);
  EXPECT_EQ(d_.server->regions()->mapped_bytes(), 5 << 20);
  const v1::RegionInfo info = second->info();
  second.reset();
  region_.reset();
  session_.reset();  // the socket closes: the daemon releases both
  EXPECT_TRUE(TransportIdle(*d_.server));
  EXPECT_EQ(d_.client->UnregisterRegion(info.region_id(), info.key()).code(), absl::StatusCode::kNotFound);
}

// A client process that registers a region and sends a call naming it, then is killed while the
// daemon computes the call. The daemon finishes the call into the still-mapped region, then drops
// everything: no region, session or buffer survives the client.
TEST(SharedMemoryClientDeath, AClientKilledMidRequestLeaksNothing) {
  TransportDaemon d;
  auto gated = std::make_unique<GatedBackend>(CreateCpuBackend(2));
  GatedBackend* gate = gated.get();
  StartTransportDaemon(&d, std::move(gated));
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // A fresh client process: exec the helper (gRPC must not be used across fork).
    close(ready[0]);
    dup2(ready[1], 3);
    execl(SHM_CLIENT_CHILD, SHM_CLIENT_CHILD, d.server->address().c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(ready[1]);
  ASSERT_TRUE(gate->WaitForEntered(1, absl::Seconds(30))) << "the child's call never reached the backend";
  EXPECT_EQ(d.server->regions()->regions(), 1);
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status));
  close(ready[0]);
  // The session closes with the child's socket; the region stays mapped under the running call.
  for (int i = 0; i < 500 && d.server->regions()->sessions() > 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(d.server->regions()->sessions(), 0);
  EXPECT_EQ(d.server->regions()->regions(), 1);
  gate->Open();  // the call completes into the region (or is dropped as cancelled); then it goes
  EXPECT_TRUE(TransportIdle(*d.server));
  EXPECT_TRUE(d.client->Forward(RandomForward(kShape, 8)).ok());  // the daemon serves on
}

}  // namespace
}  // namespace attnd::testing
