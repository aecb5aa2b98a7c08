// The dynamic batcher over the CUDA backend on a real GPU: packed launches give every caller what it
// gets alone (the same bits for forward and for deterministic backward, which never packs); 10k
// requests leave no memory in use and stop calling the driver once warm; batches of varying
// composition over lent buffers make no driver allocation at all once warm;
// deadlines, cancellation, a full queue and the memory cap each fail only the call they concern.
// GPU tests: skipped without a CUDA device.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "server/backend_stats.h"
#include "server/backends/cuda/cuda_backend.h"
#include "server/backends/cuda/pinned_host_pool.h"
#include "server/engine/batching_backend.h"
#include "tests/server/backends/cuda_engine_test_util.h"
#include "tests/support/reference_attention.h"

namespace attnd {
namespace {

using testing::EngineCall;
using testing::MakeEngineCall;

std::unique_ptr<Backend> Cuda(CudaBackendOptions options = {}) {
  absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateCudaBackend(options);
  EXPECT_TRUE(cuda.ok()) << cuda.status();
  return cuda.ok() ? *std::move(cuda) : nullptr;
}

// Polls `done` until it holds or 20 s pass (then the test fails instead of hanging).
template <typename Done>
bool WaitFor(Done done) {
  const absl::Time end = absl::Now() + absl::Seconds(20);
  while (!done()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Microseconds(50));
  }
  return true;
}

class CudaBatchingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (VisibleCudaDevices() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Runs each call on its own thread, all at once, through `backend`.
void RunConcurrently(Backend& backend, std::vector<std::unique_ptr<EngineCall>>& calls, bool backward) {
  std::vector<std::thread> threads;
  for (auto& c : calls) {
    threads.emplace_back([&backend, &c, backward] {
      const absl::Status st = backward ? backend.Backward(c->Backward()) : backend.Forward(c->Forward());
      EXPECT_TRUE(st.ok()) << st;
    });
  }
  for (std::thread& t : threads) t.join();
}

// Forward: one packed launch, and every caller gets the bits it gets alone. Deterministic backward:
// never packed (its kernels partition sums by launch size: measured on the H100, packed bits differ),
// so again the bits it gets alone. Backward without determinism: packed, equal within rounding.
TEST_F(CudaBatchingTest, PackedLaunchesGiveEveryCallerWhatItGetsAlone) {
  const std::vector<AttentionShape> shapes = {DenseShape(1, 128, 128, 16, 4, 128), DenseShape(2, 77, 200, 16, 4, 128),
                                              PackedShape({1, 300, 17}, {40, 300, 1}, 16, 4, 128),
                                              DenseShape(1, 1000, 1000, 16, 4, 128)};
  enum Mode { kForward, kDeterministicBackward, kBackward };
  for (Mode mode : {kForward, kDeterministicBackward, kBackward}) {
    const bool backward = mode != kForward;
    // One BatchKey for all four (causal is part of it): forward without the mask, backward with it.
    const bool causal = backward;
    SCOPED_TRACE(mode == kForward ? "forward" : mode == kBackward ? "backward" : "deterministic backward");
    std::unique_ptr<Backend> alone = Cuda();
    std::vector<std::unique_ptr<EngineCall>> calls, batched;
    for (size_t i = 0; i < shapes.size(); ++i) {
      calls.push_back(MakeEngineCall(shapes[i], DType::kBF16, causal, 100 + uint32_t(i)));
      calls.back()->options.deterministic = mode == kDeterministicBackward;
      if (backward) ASSERT_TRUE(alone->Forward(calls.back()->Forward()).ok());  // out and lse to differentiate
      batched.push_back(std::make_unique<EngineCall>(*calls.back()));
      batched.back()->PoisonOutputs();
      if (backward) {  // same forward results as inputs of the backward
        batched.back()->out = calls.back()->out;
        batched.back()->lse = calls.back()->lse;
      }
    }
    for (auto& c : calls) ASSERT_TRUE((backward ? alone->Backward(c->Backward()) : alone->Forward(c->Forward())).ok());

    engine::BatcherOptions o;
    o.max_queue_delay = absl::Seconds(30);  // the batch forms when all four are queued (full)
    o.max_batch_requests = static_cast<int>(shapes.size());
    BatchingBackend packed(Cuda(), o);
    RunConcurrently(packed, batched, backward);
    const bool packs = mode != kDeterministicBackward;
    EXPECT_EQ(packed.Stats().packed_batches, packs ? 1 : 0);
    BackendStats stats;
    packed.CollectStats(stats);
    EXPECT_EQ(stats.devices[0].launches, packs ? 1 : 4);
    for (size_t i = 0; i < calls.size(); ++i) {
      SCOPED_TRACE("caller " + std::to_string(i));
      EXPECT_EQ(batched[i]->timings.batch_requests, packs ? 4 : 1);
      if (mode == kForward) {
        EXPECT_EQ(batched[i]->out, calls[i]->out);
        EXPECT_EQ(std::memcmp(batched[i]->lse.data(), calls[i]->lse.data(), calls[i]->lse.size() * 4), 0);
      } else if (mode == kDeterministicBackward) {
        EXPECT_EQ(batched[i]->grad_q, calls[i]->grad_q);
        EXPECT_EQ(batched[i]->grad_k, calls[i]->grad_k);
        EXPECT_EQ(batched[i]->grad_v, calls[i]->grad_v);
      } else {  // dQ by float atomics: the order of the sums varies, packed or not
        for (auto [got, want] : {std::pair{&batched[i]->grad_q, &calls[i]->grad_q},
                                 {&batched[i]->grad_k, &calls[i]->grad_k}, {&batched[i]->grad_v, &calls[i]->grad_v}}) {
          const std::vector<double> g = testing::Decode(*got, DType::kBF16), w = testing::Decode(*want, DType::kBF16);
          for (double x : g) ASSERT_FALSE(std::isnan(x)) << "unwritten gradient";
          EXPECT_LE(testing::RelativeL2Error(g, w), 1e-2);
        }
      }
    }
  }
}

TEST_F(CudaBatchingTest, TenThousandRequestsLeakNothingAndStopCallingTheDriverOnceWarm) {
  engine::BatcherOptions o;
  o.max_queue_delay = absl::Microseconds(200);
  o.executor_threads = 2;
  CudaBackendOptions options;
  std::shared_ptr<PinnedHostPool> pinned = PinnedHostPool::Create(int64_t{4} << 30);  // outlives the backend
  options.pinned = pinned;
  auto backend_owner = std::make_unique<BatchingBackend>(Cuda(options), o);
  BatchingBackend& backend = *backend_owner;
  const std::vector<AttentionShape> shapes = {DenseShape(1, 128, 128, 16, 16, 128), DenseShape(1, 200, 300, 16, 16, 128),
                                              PackedShape({5, 64, 1}, {64, 5, 9}, 16, 16, 128)};
  constexpr int kThreads = 16, kPerThread = 625;  // 10,000 requests
  constexpr int kWarmup = 200;
  std::vector<std::unique_ptr<EngineCall>> calls;
  for (int t = 0; t < kThreads; ++t) calls.push_back(MakeEngineCall(shapes[t % shapes.size()], DType::kBF16, false, t));
  auto driver_allocations = [&] {
    BackendStats s;
    backend.CollectStats(s);
    return s.devices[0].memory.driver_allocations + s.pinned_host.driver_allocations;
  };
  std::atomic<int> warm{0};
  std::atomic<int64_t> failures{0};
  int64_t after_warmup = -1;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      EngineCall& c = *calls[t];
      for (int i = 0; i < kPerThread; ++i) {
        if (!backend.Forward(c.Forward()).ok()) ++failures;
        if (i == kWarmup) ++warm;
      }
    });
  }
  ASSERT_TRUE(WaitFor([&] { return warm.load() == kThreads || failures.load() > 0; }));
  after_warmup = driver_allocations();
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  BackendStats s;
  backend.CollectStats(s);
  EXPECT_EQ(s.batcher.completed_ok, kThreads * kPerThread);
  // Warm after 200 rounds: the batch compositions that recur have their blocks. A rare new batch
  // size may still appear later (size classes absorb most); the count must not grow with traffic.
  EXPECT_LE(driver_allocations() - after_warmup, 4) << "driver allocations kept growing";
  EXPECT_EQ(s.devices[0].memory.in_use_bytes, 0);
  EXPECT_LT(s.devices[0].memory.reserved_bytes, int64_t{1} << 30);
  EXPECT_GT(s.batcher.packed_batches, 0);
  // Every caller still got the right answer at the end (the last call's results, checked bitwise
  // against a fresh call alone).
  std::unique_ptr<Backend> alone = Cuda();
  for (int t = 0; t < static_cast<int>(shapes.size()); ++t) {
    auto fresh = std::make_unique<EngineCall>(*calls[t]);
    fresh->PoisonOutputs();
    ASSERT_TRUE(alone->Forward(fresh->Forward()).ok());
    EXPECT_EQ(fresh->out, calls[t]->out);
  }
  // Page-locked memory still lent is the batcher's packing buffers; with the batcher gone, none.
  backend_owner.reset();
  EXPECT_EQ(pinned->Stats().in_use_bytes, 0);
}

// One caller's tensors in host buffers the backend lends (what attnd's front end decodes requests
// into with a CUDA backend): page-locked, and marked so.
struct LentCall {
  HostBuffer q, k, v, out, lse;
  ForwardArgs args;
};
std::unique_ptr<LentCall> Lend(Backend& backend, EngineCall& c) {
  auto lent = std::make_unique<LentCall>();
  auto copy = [&backend](const void* bytes, size_t n, HostBuffer& to) {
    absl::StatusOr<HostBuffer> b = backend.AllocateHostBuffer(n);
    EXPECT_TRUE(b.ok()) << b.status();
    if (b.ok()) to = *std::move(b);
    if (to.data != nullptr) std::memcpy(to.data, bytes, n);
  };
  copy(c.q.data(), c.q.size(), lent->q);
  copy(c.k.data(), c.k.size(), lent->k);
  copy(c.v.data(), c.v.size(), lent->v);
  copy(c.out.data(), c.out.size(), lent->out);
  copy(c.lse.data(), c.lse.size() * 4, lent->lse);
  lent->args = c.Forward();
  lent->args.q = lent->q.data;
  lent->args.k = lent->k.data;
  lent->args.v = lent->v.data;
  lent->args.out = lent->out.data;
  lent->args.lse = static_cast<float*>(lent->lse.data);
  lent->args.placement.host_page_locked = true;
  return lent;
}

// Batched traffic whose batches change size and make-up from launch to launch (five sequence
// lengths, 24 callers, a token cap that splits batches): once warm, not one driver allocation,
// device or pinned, and nothing staged: every call, packed or alone, reserves a full batch's
// device block (reserve_rows), the packers' buffers are sized for a full batch, and lent buffers
// go by DMA. Answers are checked bitwise against the same calls alone.
TEST_F(CudaBatchingTest, BatchesOfVaryingCompositionMakeNoDriverAllocationOnceWarm) {
  engine::BatcherOptions o;
  o.max_queue_delay = absl::Microseconds(300);
  o.max_batch_tokens = 2048;
  o.executor_threads = 2;
  CudaBackendOptions options;
  options.streams = 2;
  std::shared_ptr<PinnedHostPool> pinned = PinnedHostPool::Create(int64_t{4} << 30);  // outlives the backend
  options.pinned = pinned;
  BatchingBackend backend(Cuda(options), o);
  const std::vector<AttentionShape> shapes = {
      DenseShape(1, 128, 128, 16, 16, 128), DenseShape(1, 17, 300, 16, 16, 128), DenseShape(2, 64, 64, 16, 16, 128),
      PackedShape({555, 1, 40}, {200, 9, 40}, 16, 16, 128), DenseShape(1, 1000, 1000, 16, 16, 128)};
  constexpr int kThreads = 24, kWarmRounds = 150, kRounds = 600;
  std::vector<std::unique_ptr<EngineCall>> calls;
  std::vector<std::vector<std::unique_ptr<LentCall>>> lent(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      calls.push_back(MakeEngineCall(shapes[i], DType::kBF16, false, 1000 + t * 10 + int(i), /*oracle=*/false));
      lent[t].push_back(Lend(backend, *calls.back()));
    }
  }
  auto counters = [&] {
    BackendStats s;
    backend.CollectStats(s);
    return s;
  };
  auto run = [&](int rounds, int offset) {
    std::atomic<int64_t> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int r = 0; r < rounds; ++r) {  // each caller cycles through the shapes, out of step
          const absl::Status st = backend.Forward(lent[t][(t + r + offset) % shapes.size()]->args);
          if (!st.ok()) ++failures;
        }
      });
    }
    for (std::thread& th : threads) th.join();
    return failures.load();
  };
  ASSERT_EQ(run(kWarmRounds, 0), 0);
  const BackendStats warm = counters();
  ASSERT_EQ(run(kRounds, 3), 0);
  for (auto& call : lent[0]) ASSERT_TRUE(backend.Forward(call->args).ok());  // one caller: each alone
  const BackendStats done = counters();
  EXPECT_EQ(done.devices[0].memory.driver_allocations, warm.devices[0].memory.driver_allocations)
      << "device blocks still being allocated once warm";
  EXPECT_EQ(done.pinned_host.driver_allocations, warm.pinned_host.driver_allocations)
      << "pinned blocks still being allocated once warm";
  EXPECT_EQ(done.devices[0].staged_copy_bytes, warm.devices[0].staged_copy_bytes) << "lent buffers were staged";
  EXPECT_GT(done.devices[0].direct_copy_bytes, warm.devices[0].direct_copy_bytes);
  // The traffic did what it claims: packed launches of several sizes, and calls alone too.
  const int64_t packed = done.batcher.packed_batches - warm.batcher.packed_batches;
  const int64_t launches = done.devices[0].launches - warm.devices[0].launches;
  EXPECT_GT(packed, 0);
  EXPECT_GE(launches - packed, int64_t(shapes.size())) << "the calls alone ran packed";
  EXPECT_GT(done.batcher.requests_per_batch.max(), 2);
  EXPECT_GT(done.batcher.tokens_per_batch.max(), 1500) << "no batch came near the token cap";
  EXPECT_EQ(done.devices[0].memory.in_use_bytes, 0);
  // Every caller's last answer is the one it gets alone, bit for bit.
  std::unique_ptr<Backend> alone = Cuda();
  for (int t = 0; t < kThreads; ++t) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      EngineCall& c = *calls[t * shapes.size() + i];
      c.PoisonOutputs();
      ASSERT_TRUE(alone->Forward(c.Forward()).ok());
      ASSERT_EQ(std::memcmp(lent[t][i]->out.data, c.out.data(), c.out.size()), 0) << "caller " << t << " shape " << i;
      ASSERT_EQ(std::memcmp(lent[t][i]->lse.data, c.lse.data(), c.lse.size() * 4), 0) << "caller " << t;
    }
  }
}

TEST_F(CudaBatchingTest, DeadlinesCancellationAndAFullQueueFailOnlyTheirOwnCalls) {
  engine::BatcherOptions o;
  o.executor_threads = 1;
  o.max_queue_requests = 2;
  BatchingBackend backend(Cuda(), o);
  // A large call keeps the only executor busy (tens of milliseconds of copies and kernel).
  auto big = MakeEngineCall(DenseShape(1, 32768, 32768, 16, 16, 128), DType::kBF16, false, 1, /*oracle=*/false);
  absl::Status big_status;
  std::thread busy([&] { big_status = backend.Forward(big->Forward()); });
  if (!WaitFor([&] { return backend.Stats().running == 1; })) {
    busy.join();
    FAIL() << "the large call never started";
  }

  // Queue empty: a call whose deadline passes while it waits returns DEADLINE_EXCEEDED, uncomputed.
  auto expiring = MakeEngineCall(DenseShape(1, 64, 64, 16, 16, 128), DType::kBF16, false, 2);
  ForwardArgs e = expiring->Forward();
  e.control.deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(2);
  EXPECT_EQ(backend.Forward(e).code(), absl::StatusCode::kDeadlineExceeded);
  // Two calls fill the queue (one of them to be cancelled); a third is refused at once.
  auto cancelled = MakeEngineCall(DenseShape(1, 64, 64, 16, 16, 128), DType::kBF16, false, 3);
  std::atomic<bool> flag{false};
  ForwardArgs c = cancelled->Forward();
  c.control.cancelled = &flag;
  absl::Status cancelled_status, extra_status;
  std::thread waiting([&] { cancelled_status = backend.Forward(c); });
  EXPECT_TRUE(WaitFor([&] { return backend.Stats().queue_depth >= 1 || backend.Stats().running == 0; }));
  auto extra = MakeEngineCall(DenseShape(1, 64, 64, 16, 16, 128), DType::kBF16, false, 4);
  std::thread queued([&] { extra_status = backend.Forward(extra->Forward()); });
  EXPECT_TRUE(WaitFor([&] { return backend.Stats().queue_depth >= 2 || backend.Stats().running == 0; }));
  auto refused = MakeEngineCall(DenseShape(1, 64, 64, 16, 16, 128), DType::kBF16, false, 5);
  const absl::Status full = backend.Forward(refused->Forward());
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(backend.Stats().running, 1) << "the large call ended before the checks: they prove nothing";
  flag = true;
  busy.join();
  waiting.join();
  queued.join();
  EXPECT_TRUE(big_status.ok()) << big_status;
  EXPECT_EQ(cancelled_status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(extra_status.ok()) << extra_status;
  BackendStats s;
  backend.CollectStats(s);
  EXPECT_EQ(s.devices[0].launches, 2);  // the big call and `extra`: nothing else was computed
  EXPECT_TRUE(std::isnan(testing::ToDouble(expiring->out.data(), DType::kBF16)));  // never written
}

TEST_F(CudaBatchingTest, ARequestOverTheMemoryCapIsRefusedByNameWhileOthersAreServed) {
  CudaBackendOptions options;
  options.memory_cap_bytes = 64 << 20;
  std::unique_ptr<Backend> cuda = Cuda(options);
  // 256 MiB of q/k/v/out: four times the cap.
  auto huge = MakeEngineCall(DenseShape(1, 16384, 16384, 16, 16, 128), DType::kBF16, false, 1, /*oracle=*/false);
  auto small = MakeEngineCall(DenseShape(1, 256, 256, 16, 16, 128), DType::kBF16, false, 2);
  std::atomic<bool> stop{false};
  std::atomic<int> small_ok{0}, small_failed{0};
  std::thread others([&] {
    while (!stop) (cuda->Forward(small->Forward()).ok() ? small_ok : small_failed)++;
  });
  const absl::Status st = cuda->Forward(huge->Forward());
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("forward request (1 sequences, 16384 q rows"), std::string::npos) << st;
  EXPECT_TRUE(WaitFor([&] { return small_ok >= 20 || small_failed > 0; }));
  stop = true;
  others.join();
  EXPECT_EQ(small_failed.load(), 0);
  // Recovery: a request that fits is served right after.
  auto fits = MakeEngineCall(DenseShape(1, 2048, 2048, 16, 16, 128), DType::kBF16, false, 3);
  EXPECT_TRUE(cuda->Forward(fits->Forward()).ok());
  BackendStats s;
  cuda->CollectStats(s);
  EXPECT_EQ(s.devices[0].memory.rejected, 1);
  EXPECT_LE(s.devices[0].memory.peak_reserved_bytes, 64 << 20);
}

}  // namespace
}  // namespace attnd
