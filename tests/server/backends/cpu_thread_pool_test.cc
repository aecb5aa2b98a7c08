// The CPU backend's thread pool: every task runs exactly once, never on more threads than the
// pool has, also with many callers at once.
#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/backends/cpu/thread_pool.h"

namespace attnd::cpu {
namespace {

TEST(CpuThreadPool, RunsEveryTaskExactlyOnce) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    std::vector<std::atomic<int>> runs(1000);
    pool.Run(1000, [&](TaskCursor& cursor) {
      int64_t t;
      while (cursor.Next(t)) runs[size_t(t)].fetch_add(1);
    });
    for (size_t i = 0; i < runs.size(); ++i) ASSERT_EQ(runs[i].load(), 1) << "task " << i;
  }
}

TEST(CpuThreadPool, UsesAtMostItsThreadsAndTheCaller) {
  ThreadPool pool(3);
  std::mutex mu;
  std::set<std::thread::id> seen;
  std::atomic<int> participants{0};
  pool.Run(64, [&](TaskCursor& cursor) {
    participants.fetch_add(1);
    int64_t t;
    while (cursor.Next(t)) {
      std::lock_guard<std::mutex> lock(mu);
      seen.insert(std::this_thread::get_id());
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  EXPECT_LE(participants.load(), 3);
  EXPECT_LE(seen.size(), 3u);
  EXPECT_GE(seen.size(), 1u);
}

TEST(CpuThreadPool, NoTasksCallsNothing) {
  ThreadPool pool(2);
  bool called = false;
  pool.Run(0, [&](TaskCursor&) { called = true; });
  EXPECT_FALSE(called);
}

TEST(CpuThreadPool, ManyCallersAtOnce) {
  ThreadPool pool(3);
  constexpr int kCallers = 6, kTasks = 300;
  std::vector<std::vector<std::atomic<int>>> runs(kCallers);
  for (auto& r : runs) r = std::vector<std::atomic<int>>(kTasks);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int round = 0; round < 20; ++round) {
        pool.Run(kTasks / 20, [&](TaskCursor& cursor) {
          int64_t t;
          while (cursor.Next(t)) runs[c][size_t(round * (kTasks / 20) + t)].fetch_add(1);
        });
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) {
    for (int t = 0; t < kTasks; ++t) ASSERT_EQ(runs[c][size_t(t)].load(), 1) << c << " " << t;
  }
}

}  // namespace
}  // namespace attnd::cpu
