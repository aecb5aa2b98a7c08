// The batcher's queue policies and packing, against FakeBackend (deterministic: gates, not sleeps;
// "full batch" or Stop() triggers instead of racing a delay).
#include "server/engine/dynamic_batcher.h"

#include <thread>

#include "gtest/gtest.h"
#include "tests/server/engine/engine_test_util.h"
#include "tests/server/engine/fake_backend.h"

namespace attnd::engine::testing {
namespace {

BatcherOptions Options(absl::Duration delay, int executors = 1) {
  BatcherOptions o;
  o.max_queue_delay = delay;
  o.executor_threads = executors;
  return o;
}

std::vector<int32_t> Cu(std::initializer_list<int32_t> v) { return v; }

TEST(DynamicBatcher, PacksCompatibleCallsIntoOnePackedVarlenCall) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::Hours(1));
  o.max_batch_requests = 3;  // the third call makes the batch full: no waiting on the delay
  DynamicBatcher batcher(&fake, o);
  auto a = MakeCall(DenseShape(2, 3, 4, 4, 2, 8), 1);            // dense: q rows 0..6, k 0..8
  auto b = MakeCall(PackedShape({5, 1}, {2, 7}, 4, 2, 8), 2);    // packed
  auto c = MakeCall(DenseShape(1, 2, 2, 4, 2, 8), 3);
  Outcome ra, rb, rc;
  batcher.SubmitForward(a->Forward(), ra.Callback());
  batcher.SubmitForward(b->Forward(), rb.Callback());
  batcher.SubmitForward(c->Forward(), rc.Callback());
  ASSERT_TRUE(ra.Wait().ok());
  ASSERT_TRUE(rb.Wait().ok());
  ASSERT_TRUE(rc.Wait().ok());
  const std::vector<RecordedCall> calls = fake.calls();
  ASSERT_EQ(calls.size(), 1u);
  const AttentionShape& s = calls[0].shape;
  EXPECT_TRUE(s.packed);
  EXPECT_EQ(s.batch, 5);
  EXPECT_EQ(s.cu_seqlens_q, Cu({0, 3, 6, 11, 12, 14}));
  EXPECT_EQ(s.cu_seqlens_k, Cu({0, 4, 8, 10, 17, 19}));
  EXPECT_EQ(s.total_q, 14);
  EXPECT_EQ(s.total_k, 19);
  EXPECT_EQ(s.max_seqlen_q, 5);
  EXPECT_EQ(s.max_seqlen_k, 7);
  EXPECT_EQ(s.heads_q, 4);
  EXPECT_EQ(s.heads_kv, 2);
  const BatcherStats st = batcher.Stats();
  EXPECT_EQ(st.batches_run, 1);
  EXPECT_EQ(st.packed_batches, 1);
  EXPECT_EQ(st.completed_ok, 3);
  EXPECT_EQ(st.requests_per_batch.count(), 1);
  EXPECT_EQ(st.requests_per_batch.max(), 3);
  EXPECT_EQ(st.tokens_per_batch.max(), 14);
  EXPECT_EQ(st.queue_wait_us.count(), 3);
  EXPECT_EQ(st.peak_queue_depth, 3);  // the executor waited for the third before taking any
  EXPECT_EQ(st.queue_depth, 0);
  EXPECT_EQ(st.running, 0);
}

TEST(DynamicBatcher, IncompatibleCallsNeverShareABatch) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::Hours(1)));
  const AttentionOptions base{false, 0.125f, false};
  AttentionOptions causal = base, scale = base, det = base;
  causal.causal = true;
  scale.softmax_scale = 0.25f;
  det.deterministic = true;
  std::vector<std::unique_ptr<TestCall>> calls;
  calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 1, DType::kFP32, base));
  calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 2, DType::kFP32, causal));
  calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 3, DType::kFP32, scale));
  calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 4, DType::kBF16, base));
  calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 2, 16), 5, DType::kFP32, base));  // head_dim
  calls.push_back(MakeCall(DenseShape(1, 4, 4, 8, 2, 8), 6, DType::kFP32, base));   // heads_q
  calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 4, 8), 7, DType::kFP32, base));   // heads_kv
  std::vector<Outcome> outcomes(calls.size() + 3);
  for (size_t i = 0; i < calls.size(); ++i) batcher.SubmitForward(calls[i]->Forward(), outcomes[i].Callback());
  // Backward, deterministic or not: a different direction, and a different backward schedule.
  auto bwd = MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 8, DType::kFP32, base);
  auto bwd_det = MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 9, DType::kFP32, det);
  batcher.SubmitBackward(bwd->Backward(), outcomes[calls.size()].Callback());
  batcher.SubmitBackward(bwd_det->Backward(), outcomes[calls.size() + 1].Callback());
  // A forward differing from the first only in `deterministic` (meaningless forward) joins it.
  auto joins = MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 10, DType::kFP32, det);
  batcher.SubmitForward(joins->Forward(), outcomes[calls.size() + 2].Callback());
  batcher.Stop();  // every queued group runs now
  for (Outcome& r : outcomes) EXPECT_TRUE(r.Wait().ok());
  const std::vector<RecordedCall> seen = fake.calls();
  ASSERT_EQ(seen.size(), 9u);
  // The deterministic backward runs alone, so an executor may take it before Stop(): launch order is
  // not part of the contract. Exactly one launch packs two calls: the first forward and the one
  // that joined it.
  int packed = 0;
  for (const RecordedCall& c : seen) {
    if (c.shape.batch == 1) continue;
    ++packed;
    EXPECT_EQ(c.shape.batch, 2);
    EXPECT_EQ(c.direction, Direction::kForward);
    EXPECT_EQ(c.dtype, DType::kFP32);
    EXPECT_FALSE(c.options.causal);
    EXPECT_EQ(c.options.softmax_scale, 0.125f);
    EXPECT_EQ(c.shape.heads_q, 4);
    EXPECT_EQ(c.shape.heads_kv, 2);
    EXPECT_EQ(c.shape.head_dim, 8);
  }
  EXPECT_EQ(packed, 1);
  EXPECT_EQ(batcher.Stats().packed_batches, 1);
}

TEST(DynamicBatcher, TokenCapSplitsBatchesAndOversizedCallsRunAloneOnTheirOwnBuffers) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::Hours(1));
  o.max_batch_tokens = 100;
  DynamicBatcher batcher(&fake, o);
  auto r1 = MakeCall(DenseShape(1, 40, 40, 2, 1, 4), 1);
  auto r2 = MakeCall(DenseShape(1, 40, 40, 2, 1, 4), 2);
  auto r3 = MakeCall(DenseShape(1, 40, 40, 2, 1, 4), 3);
  auto big_q = MakeCall(DenseShape(1, 150, 10, 2, 1, 4), 4);
  auto big_k = MakeCall(PackedShape({10}, {101}, 2, 1, 4), 5);
  Outcome o1, o2, o3, o4, o5;
  batcher.SubmitForward(r1->Forward(), o1.Callback());
  batcher.SubmitForward(r2->Forward(), o2.Callback());
  batcher.SubmitForward(r3->Forward(), o3.Callback());  // 120 rows queued: r1 + r2 are a full batch
  batcher.SubmitForward(big_q->Forward(), o4.Callback());
  batcher.SubmitForward(big_k->Forward(), o5.Callback());
  ASSERT_TRUE(o1.Wait().ok());
  ASSERT_TRUE(o4.Wait().ok());
  ASSERT_TRUE(o5.Wait().ok());
  batcher.Stop();  // r3 waits for company for an hour otherwise
  ASSERT_TRUE(o2.Wait().ok());
  ASSERT_TRUE(o3.Wait().ok());
  const std::vector<RecordedCall> seen = fake.calls();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].shape.total_q, 80);
  EXPECT_EQ(seen[0].shape.batch, 2);
  EXPECT_EQ(seen[1].shape.total_q, 150);  // alone, the caller's own (dense) shape
  EXPECT_FALSE(seen[1].shape.packed);
  EXPECT_EQ(seen[2].shape.total_k, 101);
  EXPECT_EQ(seen[3].shape.total_q, 40);
  EXPECT_EQ(batcher.Stats().oversized_requests, 2);
}

// Each caller gets exactly its rows back, lse in its own layout (dense and packed), forward and
// backward (whose lse input goes the other way: caller layout -> packed).
TEST(DynamicBatcher, ScatterGivesEachCallerExactlyItsRowsInItsLayout) {
  for (const bool backward : {false, true}) {
    SCOPED_TRACE(backward ? "backward" : "forward");
    FakeBackend fake;
    BatcherOptions o = Options(absl::Hours(1));
    o.max_batch_requests = 4;
    DynamicBatcher batcher(&fake, o);
    std::vector<std::unique_ptr<TestCall>> calls;
    calls.push_back(MakeCall(DenseShape(2, 5, 3, 4, 2, 8), 11));
    calls.push_back(MakeCall(PackedShape({3, 7, 1}, {2, 9, 4}, 4, 2, 8), 12));
    calls.push_back(MakeCall(DenseShape(1, 9, 17, 4, 2, 8), 13));
    calls.push_back(MakeCall(PackedShape({4, 0, 2}, {1, 3, 0}, 4, 2, 8), 14));
    std::vector<Outcome> outcomes(calls.size());
    for (size_t i = 0; i < calls.size(); ++i) {
      if (backward) {
        batcher.SubmitBackward(calls[i]->Backward(), outcomes[i].Callback());
      } else {
        batcher.SubmitForward(calls[i]->Forward(), outcomes[i].Callback());
      }
    }
    for (Outcome& r : outcomes) ASSERT_TRUE(r.Wait().ok());
    ASSERT_EQ(fake.calls().size(), 1u);
    for (size_t c = 0; c < calls.size(); ++c) {
      SCOPED_TRACE(c);
      TestCall& t = *calls[c];
      const AttentionShape& s = t.shape;
      const float* q = t.f(t.q);
      if (!backward) {
        EXPECT_EQ(t.out, t.q);
        for (int b = 0; b < s.batch; ++b)
          for (int h = 0; h < s.heads_q; ++h)
            for (int i = 0; i < s.seqlen_q(b); ++i)
              ASSERT_EQ(t.lse[s.LseIndex(b, h, i)], q[(s.cu_seqlens_q[b] + i) * s.heads_q * s.head_dim + h * s.head_dim] + h);
        continue;
      }
      const float *dout = t.f(t.grad_out), *out = t.f(t.out), *dq = t.f(t.grad_q);
      for (int b = 0; b < s.batch; ++b)
        for (int i = 0; i < s.seqlen_q(b); ++i)
          for (int h = 0; h < s.heads_q; ++h)
            for (int d = 0; d < s.head_dim; ++d) {
              const int64_t e = ((int64_t{s.cu_seqlens_q[b]} + i) * s.heads_q + h) * s.head_dim + d;
              ASSERT_EQ(dq[e], q[e] + 2 * dout[e] + 4 * out[e] + t.lse[s.LseIndex(b, h, i)]);
            }
      for (int64_t e = 0; e < s.kv_elements(); ++e) {
        ASSERT_EQ(t.f(t.grad_k)[e], t.f(t.k)[e] + 1);
        ASSERT_EQ(t.f(t.grad_v)[e], 2 * t.f(t.v)[e]);
      }
    }
  }
}

TEST(DynamicBatcher, FullQueueRefusesAtOnceWithResourceExhausted) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::ZeroDuration());
  o.max_queue_requests = 3;
  DynamicBatcher batcher(&fake, o);
  fake.Hold();
  auto blocker = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  Outcome rb;
  batcher.SubmitForward(blocker->Forward(), rb.Callback());
  fake.WaitForEntered(1);  // the only executor is busy from here on
  std::vector<std::unique_ptr<TestCall>> calls;
  std::vector<Outcome> outcomes(4);
  for (int i = 0; i < 4; ++i) {
    calls.push_back(MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 10 + i));
    const DynamicBatcher::Ticket t = batcher.SubmitForward(calls.back()->Forward(), outcomes[i].Callback());
    EXPECT_EQ(t == 0, i == 3);
  }
  ASSERT_TRUE(outcomes[3].done.HasBeenNotified());  // refused inside Submit, not later
  EXPECT_EQ(outcomes[3].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(batcher.Stats().queue_depth, 3);
  EXPECT_EQ(batcher.Stats().rejected_queue_full, 1);
  fake.Release();
  EXPECT_TRUE(rb.Wait().ok());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(outcomes[i].Wait().ok());
  EXPECT_EQ(fake.calls().size(), 2u);  // the blocker, then the three that waited, packed
}

TEST(DynamicBatcher, DeadlinePassingWhileQueuedIsNeverComputed) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::ZeroDuration()));
  fake.Hold();
  auto blocker = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  Outcome rb, rl;
  batcher.SubmitForward(blocker->Forward(), rb.Callback());
  fake.WaitForEntered(1);
  auto late = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(20);
  late->control.deadline = absl::ToChronoTime(deadline);
  EXPECT_NE(batcher.SubmitForward(late->Forward(), rl.Callback()), 0u);
  absl::SleepFor(deadline - absl::Now() + absl::Milliseconds(1));  // time must pass; no ordering is awaited
  fake.Release();
  EXPECT_TRUE(rb.Wait().ok());
  EXPECT_EQ(rl.Wait().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fake.calls().size(), 1u);
  EXPECT_EQ(batcher.Stats().expired, 1);
}

TEST(DynamicBatcher, IdleExecutorDropsAnExpiredCallAtItsDeadlineNotAtTheDelay) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::Hours(1)));
  auto call = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  call->control.deadline = absl::ToChronoTime(absl::Now() + absl::Milliseconds(20));
  Outcome r;
  batcher.SubmitForward(call->Forward(), r.Callback());
  EXPECT_EQ(r.Wait().code(), absl::StatusCode::kDeadlineExceeded);  // hangs (test timeout) if not
  EXPECT_TRUE(fake.calls().empty());
}

TEST(DynamicBatcher, ExpiredOrCancelledAtSubmitIsRefusedAtOnce) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::ZeroDuration()));
  auto expired = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  expired->control.deadline = std::chrono::system_clock::now() - std::chrono::seconds(1);
  auto cancelled = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  cancelled->cancelled = true;
  cancelled->control.cancelled = &cancelled->cancelled;
  Outcome r1, r2;
  EXPECT_EQ(batcher.SubmitForward(expired->Forward(), r1.Callback()), 0u);
  EXPECT_EQ(batcher.SubmitBackward(cancelled->Backward(), r2.Callback()), 0u);
  EXPECT_EQ(r1.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(r2.status.code(), absl::StatusCode::kCancelled);
  batcher.Stop();
  EXPECT_TRUE(fake.calls().empty());
}

TEST(DynamicBatcher, CancelledWhileQueuedIsDroppedUncomputed) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::ZeroDuration()));
  fake.Hold();
  auto blocker = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  auto kept = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  auto gone = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 3);
  gone->control.cancelled = &gone->cancelled;
  Outcome rb, rk, rg;
  batcher.SubmitForward(blocker->Forward(), rb.Callback());
  fake.WaitForEntered(1);
  batcher.SubmitForward(kept->Forward(), rk.Callback());
  batcher.SubmitForward(gone->Forward(), rg.Callback());
  gone->cancelled = true;  // the client gave up while its call waited
  fake.Release();
  EXPECT_TRUE(rb.Wait().ok());
  EXPECT_TRUE(rk.Wait().ok());
  EXPECT_EQ(rg.Wait().code(), absl::StatusCode::kCancelled);
  const std::vector<RecordedCall> seen = fake.calls();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].shape.batch, 1);  // `kept` alone: `gone` never reached the backend
  EXPECT_EQ(batcher.Stats().cancelled, 1);
}

TEST(DynamicBatcher, WithdrawTakesBackOnlyAQueuedCall) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::ZeroDuration()));
  fake.Hold();
  auto running = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  auto queued = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  Outcome r1, r2;
  const auto t1 = batcher.SubmitForward(running->Forward(), r1.Callback());
  fake.WaitForEntered(1);
  const auto t2 = batcher.SubmitForward(queued->Forward(), r2.Callback());
  EXPECT_FALSE(batcher.Withdraw(t1, absl::CancelledError("x")));  // computing: buffers in use
  EXPECT_TRUE(batcher.Withdraw(t2, absl::CancelledError("taken back")));
  EXPECT_EQ(r2.status.code(), absl::StatusCode::kCancelled);
  fake.Release();
  EXPECT_TRUE(r1.Wait().ok());
  EXPECT_FALSE(batcher.Withdraw(t2, absl::CancelledError("again")));
  EXPECT_EQ(fake.calls().size(), 1u);
}

// max_queue_delay = 0: an idle executor runs a call at once, alone; calls that queued up while
// every executor was busy go together in the next batch.
TEST(DynamicBatcher, ZeroDelayRunsAtOnceAndPacksOnlyWhatAlreadyWaits) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::ZeroDuration()));
  auto single = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  Outcome rs;
  batcher.SubmitForward(single->Forward(), rs.Callback());
  ASSERT_TRUE(rs.Wait().ok());  // no partner ever comes: it must not wait for one
  fake.Hold();
  auto blocker = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  Outcome rb;
  batcher.SubmitForward(blocker->Forward(), rb.Callback());
  fake.WaitForEntered(2);
  std::vector<std::unique_ptr<TestCall>> calls;
  std::vector<Outcome> outcomes(3);
  for (int i = 0; i < 3; ++i) {
    calls.push_back(MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 10 + i));
    batcher.SubmitForward(calls.back()->Forward(), outcomes[i].Callback());
  }
  fake.Release();
  for (Outcome& r : outcomes) ASSERT_TRUE(r.Wait().ok());
  const std::vector<RecordedCall> seen = fake.calls();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].shape.batch, 1);
  EXPECT_EQ(seen[1].shape.batch, 1);
  EXPECT_EQ(seen[2].shape.batch, 3);
}

// lone_calls_on_caller: a call that finds nothing queued and a slot free is computed inside Submit,
// on the submitting thread; the slots it takes still bound how many batches compute at once.
TEST(DynamicBatcher, ALoneCallRunsOnTheSubmittingThreadInsideSubmit) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::ZeroDuration());
  o.lone_calls_on_caller = true;
  DynamicBatcher batcher(&fake, o);
  auto call = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  Outcome r;
  const std::thread::id submitter = std::this_thread::get_id();
  std::thread::id completed_on;
  EXPECT_EQ(batcher.SubmitForward(call->Forward(),
                                  [&](absl::Status s) {
                                    completed_on = std::this_thread::get_id();
                                    r.Callback()(std::move(s));
                                  }),
            0u);  // completed during Submit
  ASSERT_TRUE(r.done.HasBeenNotified());
  ASSERT_TRUE(r.Wait().ok());
  EXPECT_EQ(completed_on, submitter);
  EXPECT_EQ(call->out, call->q);  // the fake forward: out = q
  const BatcherStats stats = batcher.Stats();
  EXPECT_EQ(stats.batches_run, 1);
  EXPECT_EQ(stats.running, 0);
}

TEST(DynamicBatcher, CallsOnTheCallerCountAgainstTheExecutorSlots) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::ZeroDuration(), /*executors=*/1);
  o.lone_calls_on_caller = true;
  DynamicBatcher batcher(&fake, o);
  fake.Hold();
  auto first = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  Outcome r1;
  std::thread caller([&] { batcher.SubmitForward(first->Forward(), r1.Callback()); });  // blocks inside
  fake.WaitForEntered(1);
  // The one slot is taken by the caller: these queue, and the idle executor must not start them.
  std::vector<std::unique_ptr<TestCall>> calls;
  std::vector<Outcome> outcomes(2);
  for (int i = 0; i < 2; ++i) {
    calls.push_back(MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 10 + i));
    EXPECT_NE(batcher.SubmitForward(calls.back()->Forward(), outcomes[i].Callback()), 0u);  // queued
  }
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(fake.calls().size(), 1u);
  fake.Release();
  caller.join();
  ASSERT_TRUE(r1.Wait().ok());
  for (Outcome& r : outcomes) ASSERT_TRUE(r.Wait().ok());
  const std::vector<RecordedCall> seen = fake.calls();
  ASSERT_EQ(seen.size(), 2u);       // the lone call, then the two queued ones packed together
  EXPECT_EQ(seen[1].shape.batch, 2);
  for (const auto& c : calls) EXPECT_EQ(c->out, c->q);
}

TEST(DynamicBatcher, WithADelayOrWithoutTheOptionSubmitNeverComputes) {
  for (const auto& [delay, on] : {std::pair{absl::Milliseconds(1), true}, std::pair{absl::ZeroDuration(), false}}) {
    FakeBackend fake;
    BatcherOptions o = Options(delay);
    o.lone_calls_on_caller = on;
    DynamicBatcher batcher(&fake, o);
    auto call = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
    Outcome r;
    EXPECT_NE(batcher.SubmitForward(call->Forward(), r.Callback()), 0u);  // queued for an executor
    ASSERT_TRUE(r.Wait().ok());
  }
}

TEST(DynamicBatcher, OneRequestPerBatchTurnsPackingOff) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::Hours(1));
  o.max_batch_requests = 1;  // every call is a full batch: runs at once, alone
  DynamicBatcher batcher(&fake, o);
  std::vector<std::unique_ptr<TestCall>> calls;
  std::vector<Outcome> outcomes(4);
  for (int i = 0; i < 4; ++i) {
    calls.push_back(MakeCall(DenseShape(1, 4, 4, 2, 1, 4), i));
    batcher.SubmitForward(calls.back()->Forward(), outcomes[i].Callback());
  }
  for (Outcome& r : outcomes) ASSERT_TRUE(r.Wait().ok());
  EXPECT_EQ(fake.calls().size(), 4u);
  EXPECT_EQ(batcher.Stats().packed_batches, 0);
}

TEST(DynamicBatcher, DelayedCallWaitsForCompanyAtMostTheDelay) {
  FakeBackend fake;
  const absl::Duration delay = absl::Milliseconds(30);
  DynamicBatcher batcher(&fake, Options(delay));
  auto call = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  Outcome r;
  const absl::Time start = absl::Now();
  batcher.SubmitForward(call->Forward(), r.Callback());
  ASSERT_TRUE(r.Wait().ok());
  const absl::Duration waited = absl::Now() - start;
  EXPECT_GE(waited, delay);
  EXPECT_LT(waited, absl::Seconds(10));  // bounded by the delay, not by a partner arriving
  EXPECT_GE(batcher.Stats().queue_wait_us.max(), 30000);
}

TEST(DynamicBatcher, FailedPackedBatchIsRerunAloneSoOnlyTheBadCallFails) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::Hours(1));
  o.max_batch_requests = 3;
  DynamicBatcher batcher(&fake, o);
  std::vector<std::unique_ptr<TestCall>> calls;
  std::vector<Outcome> outcomes(3);
  for (int i = 0; i < 3; ++i) calls.push_back(MakeCall(DenseShape(1, 4, 4, 2, 1, 4), i));
  calls[1]->f(calls[1]->q)[5] = kPoison;
  for (int i = 0; i < 3; ++i) batcher.SubmitForward(calls[i]->Forward(), outcomes[i].Callback());
  EXPECT_TRUE(outcomes[0].Wait().ok());
  EXPECT_EQ(outcomes[1].Wait().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(outcomes[2].Wait().ok());
  EXPECT_EQ(calls[0]->out, calls[0]->q);
  EXPECT_EQ(calls[2]->out, calls[2]->q);
  EXPECT_EQ(fake.calls().size(), 4u);  // the packed try, then each alone
  const BatcherStats st = batcher.Stats();
  EXPECT_EQ(st.retried_alone, 3);
  EXPECT_EQ(st.completed_ok, 2);
  EXPECT_EQ(st.completed_error, 1);
}

TEST(DynamicBatcher, MalformedShapeRunsAloneAndNeverTouchesNeighbours) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::Hours(1));
  o.max_batch_requests = 2;
  DynamicBatcher batcher(&fake, o);
  auto bad = MakeCall(DenseShape(2, 4, 4, 2, 1, 4), 1);
  bad->shape.cu_seqlens_q = {0, 4, 9};  // beyond total_q: must not be copied from
  auto good = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  auto good2 = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 3);
  Outcome r1, r2, r3;
  batcher.SubmitForward(bad->Forward(), r1.Callback());
  batcher.SubmitForward(good->Forward(), r2.Callback());
  batcher.SubmitForward(good2->Forward(), r3.Callback());
  EXPECT_EQ(r1.Wait().code(), absl::StatusCode::kInvalidArgument);  // the backend's own verdict
  EXPECT_TRUE(r2.Wait().ok());
  EXPECT_TRUE(r3.Wait().ok());
  const std::vector<RecordedCall> seen = fake.calls();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].shape.cu_seqlens_q, Cu({0, 4, 9}));  // its own shape, alone
  EXPECT_EQ(seen[1].shape.batch, 2);
}

TEST(DynamicBatcher, StopComputesWhatWaitsAndRefusesNewCalls) {
  FakeBackend fake;
  DynamicBatcher batcher(&fake, Options(absl::Hours(1)));
  auto a = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  auto b = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  Outcome ra, rb, rc;
  batcher.SubmitForward(a->Forward(), ra.Callback());
  batcher.Stop();
  EXPECT_TRUE(ra.Wait().ok());
  EXPECT_EQ(batcher.SubmitForward(b->Forward(), rb.Callback()), 0u);
  EXPECT_EQ(rb.status.code(), absl::StatusCode::kUnavailable);
  batcher.Stop();  // idempotent
}

// Many submitters, several executors, random keys and sizes: every call completes once with its
// own rows, and the counters add up.
TEST(DynamicBatcher, ConcurrentSubmittersAndExecutorsKeepEveryCallsRows) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::Microseconds(200), 3);
  o.max_batch_tokens = 64;
  DynamicBatcher batcher(&fake, o);
  constexpr int kThreads = 6, kPerThread = 60;
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < kPerThread; ++i) {
        const int len = 1 + rng() % 40, heads = rng() % 2 ? 2 : 4;
        auto call = rng() % 2 ? MakeCall(DenseShape(1, len, len + 3, heads, 2, 4), rng())
                              : MakeCall(PackedShape({len, 2}, {3, len}, heads, 2, 4), rng());
        Outcome r;
        batcher.SubmitForward(call->Forward(), r.Callback());
        if (!r.Wait().ok() || call->out != call->q) ++bad;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  const BatcherStats st = batcher.Stats();
  EXPECT_EQ(st.submitted, kThreads * kPerThread);
  EXPECT_EQ(st.completed_ok, kThreads * kPerThread);
  EXPECT_EQ(st.requests_per_batch.sum(), kThreads * kPerThread);
  EXPECT_EQ(st.batches_run, static_cast<int64_t>(fake.calls().size()));
  for (const RecordedCall& c : fake.calls()) {  // nothing here is oversized
    EXPECT_LE(c.shape.total_q, 64);
    EXPECT_LE(c.shape.total_k, 64);
  }
}

TEST(BatcherOptions, OutOfRangeValuesAreNamed) {
  BatcherOptions o;
  EXPECT_TRUE(ValidateBatcherOptions(o).ok());
  o.max_queue_requests = 0;
  EXPECT_NE(ValidateBatcherOptions(o).message().find("max_queue_requests"), std::string::npos);
  o = BatcherOptions{};
  o.max_queue_delay = -absl::Microseconds(1);
  EXPECT_NE(ValidateBatcherOptions(o).message().find("max_queue_delay"), std::string::npos);
  o = BatcherOptions{};
  o.max_batch_tokens = 0;
  EXPECT_NE(ValidateBatcherOptions(o).message().find("max_batch_tokens"), std::string::npos);
}

}  // namespace
}  // namespace attnd::engine::testing

namespace attnd::engine::testing {
namespace {

// Deterministic backward promises identical bits run to run; the backward kernels partition their
// sums by the size of the launch, so such a call never shares one. Forward and other backward
// calls still pack.
TEST(DynamicBatcher, DeterministicBackwardNeverSharesALaunch) {
  for (bool daemon_forces : {false, true}) {
    SCOPED_TRACE(daemon_forces ? "all backward deterministic (--deterministic)" : "per request");
    FakeBackend fake;
    BatcherOptions o;
    o.max_queue_delay = absl::Hours(1);
    o.all_backward_deterministic = daemon_forces;
    DynamicBatcher batcher(&fake, o);
    const AttentionOptions det{false, 0.125f, /*deterministic=*/!daemon_forces};
    std::vector<std::unique_ptr<TestCall>> calls;
    std::vector<Outcome> outcomes(5);
    for (int i = 0; i < 3; ++i) {
      calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 20 + i, DType::kFP32, det));
      batcher.SubmitBackward(calls.back()->Backward(), outcomes[i].Callback());
    }
    for (int i = 3; i < 5; ++i) {
      calls.push_back(MakeCall(DenseShape(1, 4, 4, 4, 2, 8), 20 + i, DType::kFP32, det));
      batcher.SubmitForward(calls.back()->Forward(), outcomes[i].Callback());
    }
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(outcomes[i].Wait().ok());  // alone: they did not wait for company
    batcher.Stop();
    for (Outcome& r : outcomes) EXPECT_TRUE(r.Wait().ok());
    int backward_launches = 0, forward_batch = 0;
    for (const RecordedCall& c : fake.calls()) {
      if (c.direction == Direction::kBackward) {
        ++backward_launches;
        EXPECT_EQ(c.shape.batch, 1);
      } else {
        forward_batch = c.shape.batch;
      }
    }
    EXPECT_EQ(backward_launches, 3);
    EXPECT_EQ(forward_batch, 2);  // the two forwards still shared one launch
  }
}

// Counts the host buffers a backend lends (the packers' buffers come from there).
class LendingFake final : public Backend {
 public:
  std::string_view name() const override { return "lending fake"; }
  absl::Status CheckSupported(const AttentionShape& s, DType t) const override { return inner_.CheckSupported(s, t); }
  absl::Status Forward(const ForwardArgs& args) override { return inner_.Forward(args); }
  absl::Status Backward(const BackwardArgs& args) override { return inner_.Backward(args); }
  absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) override {
    lent_.fetch_add(1);
    return AllocatePlainHostBuffer(bytes);
  }
  int lent() const { return lent_.load(); }

 private:
  FakeBackend inner_;
  std::atomic<int> lent_{0};
};

TEST(DynamicBatcher, PackingBuffersAreSizedForAFullBatchOnce) {
  LendingFake fake;
  BatcherOptions o;
  o.max_queue_delay = absl::Hours(1);
  o.max_batch_tokens = 64;
  o.executor_threads = 1;
  DynamicBatcher batcher(&fake, o);
  int lent_after_first = -1;
  for (int requests : {2, 3, 5, 8}) {  // ever larger batches: 8, 12, 20, 32 rows
    std::vector<std::unique_ptr<TestCall>> calls;
    std::vector<Outcome> outcomes(requests);
    for (int i = 0; i < requests; ++i) {
      calls.push_back(MakeCall(DenseShape(1, 4, 4, 2, 2, 8), 40 + i));
      batcher.SubmitForward(calls.back()->Forward(), outcomes[i].Callback());
    }
    // Full at 64 rows: release the group by reaching the token cap with one more call.
    auto filler = MakeCall(DenseShape(1, 64 - 4 * requests, 4, 2, 2, 8), 99);
    Outcome filled;
    batcher.SubmitForward(filler->Forward(), filled.Callback());
    for (Outcome& r : outcomes) ASSERT_TRUE(r.Wait().ok());
    ASSERT_TRUE(filled.Wait().ok());
    for (auto& c : calls) EXPECT_EQ(c->out, c->q);
    if (lent_after_first < 0) lent_after_first = fake.lent();
  }
  EXPECT_EQ(lent_after_first, 5);  // q, k, v, out, lse of the forward packer, once
  EXPECT_EQ(fake.lent(), lent_after_first);
  EXPECT_EQ(batcher.Stats().packed_batches, 4);
}

}  // namespace
}  // namespace attnd::engine::testing

namespace attnd::engine::testing {
namespace {

// Every call that fits in a batch reaches the backend with reserve_rows = max_batch_tokens,
// packed or alone, so a backend sizes one block for any batch composition; an oversized call, or
// any call while packing is off, is sized for itself; a page-locked caller keeps its flag.
TEST(DynamicBatcher, CallsThatFitABatchReserveAFullBatchOfRows) {
  FakeBackend fake;
  BatcherOptions o = Options(absl::Hours(1));
  o.max_batch_tokens = 100;
  o.max_batch_requests = 2;
  DynamicBatcher batcher(&fake, o);
  auto a = MakeCall(DenseShape(1, 30, 30, 2, 1, 4), 1);
  auto b = MakeCall(DenseShape(1, 20, 20, 2, 1, 4), 2);
  auto big = MakeCall(DenseShape(1, 150, 150, 2, 1, 4), 3);
  auto lone = MakeCall(DenseShape(1, 10, 10, 2, 1, 4), 4);
  Outcome ra, rb, rbig, rlone;
  batcher.SubmitForward(a->Forward(), ra.Callback());
  batcher.SubmitForward(b->Forward(), rb.Callback());  // full at two requests: packed
  ASSERT_TRUE(ra.Wait().ok());
  ASSERT_TRUE(rb.Wait().ok());
  batcher.SubmitForward(big->Forward(), rbig.Callback());
  ASSERT_TRUE(rbig.Wait().ok());
  ForwardArgs pinned = lone->Forward();
  pinned.placement.host_page_locked = true;
  batcher.SubmitForward(pinned, rlone.Callback());
  batcher.Stop();  // runs the lone call now, alone
  ASSERT_TRUE(rlone.Wait().ok());

  const std::vector<RecordedCall> seen = fake.calls();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].shape.total_q, 50);
  EXPECT_EQ(seen[0].reserve_rows, 100);  // packed
  EXPECT_EQ(seen[1].shape.total_q, 150);
  EXPECT_EQ(seen[1].reserve_rows, 0);    // oversized: its own size
  EXPECT_EQ(seen[2].shape.total_q, 10);
  EXPECT_EQ(seen[2].reserve_rows, 100);  // alone but fits a batch: the same block size
  EXPECT_TRUE(seen[2].placement.host_page_locked);

  FakeBackend unpacked;
  o.max_batch_requests = 1;
  DynamicBatcher off(&unpacked, o);
  Outcome r;
  off.SubmitForward(a->Forward(), r.Callback());
  ASSERT_TRUE(r.Wait().ok());
  ASSERT_EQ(unpacked.calls().size(), 1u);
  EXPECT_EQ(unpacked.calls()[0].reserve_rows, 0);
}

}  // namespace
}  // namespace attnd::engine::testing
