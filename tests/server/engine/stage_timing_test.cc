// Per-request stage timings: the StageTimingBackend hands every call a CallTimings and records the
// successful ones; the batcher gives each caller of a packed launch that launch's stages with its
// own queue wait; the packer gathers into host buffers the inner backend lends.
#include "server/engine/stage_timing_backend.h"

#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/backend_stats.h"
#include "server/engine/batching_backend.h"
#include "tests/server/engine/engine_test_util.h"
#include "tests/server/engine/fake_backend.h"

namespace attnd::engine::testing {
namespace {

constexpr double kH2d = 0.001, kKernel = 0.002, kD2h = 0.003, kStreamWait = 0.0005;

// Stages as the CUDA backend reports them (fixed here), around the FakeBackend's exact answers;
// lends host buffers and notes whether a call's q lay in one.
class StagedFake final : public Backend {
 public:
  std::string_view name() const override { return "staged fake"; }
  absl::Status CheckSupported(const AttentionShape& s, DType t) const override { return inner_.CheckSupported(s, t); }
  absl::Status Forward(const ForwardArgs& args) override {
    NoteWhereQLives(args.q, args.shape->batch);
    if (args.timings != nullptr) {
      args.timings->queue_s = std::max(args.timings->queue_s, 0.0) + kStreamWait;
      args.timings->h2d_s = kH2d;
      args.timings->kernel_s = kKernel;
      args.timings->d2h_s = kD2h;
    }
    return inner_.Forward(args);
  }
  absl::Status Backward(const BackwardArgs& args) override { return inner_.Backward(args); }
  absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) override {
    absl::StatusOr<HostBuffer> b = AllocatePlainHostBuffer(bytes);
    absl::MutexLock lock(&mu_);
    lent_.push_back(*b);
    return b;
  }
  // Batch sizes (in sequences) of the calls whose q was in a lent buffer.
  std::vector<int> q_in_lent_memory() {
    absl::MutexLock lock(&mu_);
    return in_lent_;
  }

 private:
  void NoteWhereQLives(const void* q, int batch) {
    absl::MutexLock lock(&mu_);
    for (const HostBuffer& b : lent_) {
      const auto* base = static_cast<const char*>(b.data);
      if (q >= base && q < base + b.size) in_lent_.push_back(batch);
    }
  }
  FakeBackend inner_;
  absl::Mutex mu_;
  std::vector<HostBuffer> lent_ ABSL_GUARDED_BY(mu_);
  std::vector<int> in_lent_ ABSL_GUARDED_BY(mu_);
};

TEST(StageTimingBackend, FillsTheCallersTimingsAndRecordsSuccessfulCalls) {
  StageTimingBackend backend(std::make_unique<StagedFake>());
  auto call = MakeCall(DenseShape(2, 16, 16, 4, 2, 8), 1);
  CallTimings timings;
  timings.kernel_s = 42;  // stale values from an earlier call are cleared
  ForwardArgs args = call->Forward();
  args.timings = &timings;
  ASSERT_TRUE(backend.Forward(args).ok());
  EXPECT_DOUBLE_EQ(timings.h2d_s, kH2d);
  EXPECT_DOUBLE_EQ(timings.kernel_s, kKernel);
  EXPECT_DOUBLE_EQ(timings.d2h_s, kD2h);
  EXPECT_DOUBLE_EQ(timings.queue_s, kStreamWait);
  EXPECT_EQ(timings.batch_requests, 1);

  auto bad = MakeCall(DenseShape(1, 4, 4, 1, 1, 4), 2);
  reinterpret_cast<float*>(bad->q.data())[0] = kPoison;
  EXPECT_FALSE(backend.Forward(bad->Forward()).ok());  // failed calls are not recorded

  BackendStats stats;
  backend.CollectStats(stats);
  ASSERT_TRUE(stats.has_stages);
  EXPECT_EQ(stats.stages.total_us.count(), 1);
  EXPECT_EQ(stats.stages.h2d_us.sum(), 1000);
  EXPECT_EQ(stats.stages.kernel_us.sum(), 2000);
  EXPECT_EQ(stats.stages.d2h_us.sum(), 3000);
  EXPECT_EQ(stats.stages.queue_us.sum(), 500);
  EXPECT_EQ(stats.stages.other_us.count(), 1);  // total minus the stages (the fake's own time: ~0)
}

TEST(StageTimingBackend, CallsOfOnePackedLaunchShareItsStagesAndKeepTheirQueueWait) {
  auto staged = std::make_unique<StagedFake>();
  StagedFake* fake = staged.get();
  BatcherOptions o;
  o.max_queue_delay = absl::Hours(1);
  o.max_batch_requests = 4;
  StageTimingBackend backend(std::make_unique<BatchingBackend>(std::move(staged), o));
  std::vector<std::unique_ptr<TestCall>> calls;
  std::vector<CallTimings> timings(4);
  for (int i = 0; i < 4; ++i) calls.push_back(MakeCall(DenseShape(1, 8 + i, 8, 4, 4, 8), 10 + i));
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      ForwardArgs args = calls[i]->Forward();
      args.timings = &timings[i];
      EXPECT_TRUE(backend.Forward(args).ok());
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(calls[i]->out, calls[i]->q);
    EXPECT_EQ(timings[i].batch_requests, 4);
    EXPECT_DOUBLE_EQ(timings[i].kernel_s, kKernel);
    EXPECT_GE(timings[i].h2d_s, kH2d);  // plus the host-side gather
    EXPECT_GE(timings[i].d2h_s, kD2h);  // plus the scatter
    EXPECT_GE(timings[i].queue_s, kStreamWait);
  }
  BackendStats stats;
  backend.CollectStats(stats);
  EXPECT_EQ(stats.stages.kernel_us.count(), 4);
  ASSERT_TRUE(stats.has_batcher);
  EXPECT_EQ(stats.batcher.batches_run, 1);
  EXPECT_EQ(stats.batcher.requests_per_batch.sum(), 4);
  // The packed q went to the inner backend in memory it lent (page-locked on CUDA).
  EXPECT_EQ(fake->q_in_lent_memory(), std::vector<int>{4});
}

}  // namespace
}  // namespace attnd::engine::testing
