// BatchingBackend: the blocking Backend face of the batcher that the service's workers call.
#include "server/engine/batching_backend.h"

#include <thread>

#include "gtest/gtest.h"
#include "tests/server/engine/engine_test_util.h"
#include "tests/server/engine/fake_backend.h"

namespace attnd::engine::testing {
namespace {

TEST(BatchingBackend, ConcurrentCallersBlockUntilTheirSharedBatchCompletes) {
  auto owned = std::make_unique<FakeBackend>();
  FakeBackend* fake = owned.get();
  BatcherOptions o;
  o.max_queue_delay = absl::Hours(1);
  o.max_batch_requests = 3;
  BatchingBackend backend(std::move(owned), o);
  EXPECT_EQ(backend.name(), "fake");
  std::vector<std::unique_ptr<TestCall>> calls;
  for (int i = 0; i < 3; ++i) calls.push_back(MakeCall(PackedShape({2 + i, 5}, {3, 4 + i}, 4, 2, 8), i));
  std::vector<absl::Status> statuses(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] { statuses[i] = backend.Forward(calls[i]->Forward()); });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << statuses[i];
    EXPECT_EQ(calls[i]->out, calls[i]->q);
  }
  ASSERT_EQ(fake->calls().size(), 1u);
  EXPECT_EQ(fake->calls()[0].shape.batch, 6);
  EXPECT_EQ(backend.Stats().packed_batches, 1);
}

TEST(BatchingBackend, DeadlineWhileQueuedReturnsAtTheDeadlineUncomputed) {
  auto owned = std::make_unique<FakeBackend>();
  FakeBackend* fake = owned.get();
  BatcherOptions o;
  o.executor_threads = 1;
  BatchingBackend backend(std::move(owned), o);
  fake->Hold();
  auto blocker = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  absl::Status blocker_status;
  std::thread t([&] { blocker_status = backend.Forward(blocker->Forward()); });
  fake->WaitForEntered(1);  // the only executor is held from here on
  auto late = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 2);
  late->control.deadline = absl::ToChronoTime(absl::Now() + absl::Milliseconds(20));
  // Returns while the executor is still held: the waiting caller withdrew its own call.
  EXPECT_EQ(backend.Backward(late->Backward()).code(), absl::StatusCode::kDeadlineExceeded);
  fake->Release();
  t.join();
  EXPECT_TRUE(blocker_status.ok());
  EXPECT_EQ(fake->calls().size(), 1u);
  EXPECT_EQ(backend.Stats().withdrawn + backend.Stats().expired, 1);
}

TEST(BatchingBackend, RefusalsComeBackAsTheCallsStatus) {
  BatcherOptions o;
  BatchingBackend backend(std::make_unique<FakeBackend>(), o);
  auto call = MakeCall(DenseShape(1, 4, 4, 2, 1, 4), 1);
  call->cancelled = true;
  call->control.cancelled = &call->cancelled;
  EXPECT_EQ(backend.Forward(call->Forward()).code(), absl::StatusCode::kCancelled);
  call->cancelled = false;
  EXPECT_TRUE(backend.Forward(call->Forward()).ok());
}

}  // namespace
}  // namespace attnd::engine::testing
