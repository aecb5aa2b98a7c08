// A small fixed pool of std::threads that runs data-parallel loops of independent tasks.
//
// Run() hands a loop to the pool and joins in: the calling thread is always one of the
// participants, so a loop makes progress even when every worker is busy with another caller's
// loop (the daemon calls the backend from many gRPC threads at once). Participants pull task
// indices from a shared atomic cursor, which balances uneven tasks (causal tiles, varlen).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace attnd::cpu {

// The task indices of one Run(), handed out one at a time to whichever participant asks first.
class TaskCursor {
 public:
  explicit TaskCursor(int64_t num_tasks) : end_(num_tasks) {}
  // Claims the next task; false when none is left.
  bool Next(int64_t& task) {
    task = next_.fetch_add(1, std::memory_order_relaxed);
    return task < end_;
  }
  bool Exhausted() const { return next_.load(std::memory_order_relaxed) >= end_; }

 private:
  std::atomic<int64_t> next_{0};
  const int64_t end_;
};

class ThreadPool {
 public:
  // threads >= 1 participants per loop: the caller and threads - 1 background workers.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls participant(cursor) on up to min(threads(), num_tasks) threads at once, this one
  // included; each call claims tasks from the cursor until none is left, so a participant can set
  // up per-thread scratch once and reuse it for all its tasks. Returns when every call returned.
  // Safe to call from many threads at once.
  void Run(int64_t num_tasks, const std::function<void(TaskCursor&)>& participant);

 private:
  struct Loop {
    const std::function<void(TaskCursor&)>* participant;
    TaskCursor cursor;
    int helpers_wanted;  // background workers that may still join
    int active = 0;      // background workers inside participant()
  };

  void WorkerMain();

  std::mutex mu_;
  std::condition_variable work_cv_;  // a loop was queued, or the pool is stopping
  std::condition_variable done_cv_;  // a background worker left a loop
  std::deque<Loop*> loops_;          // loops that still want helpers, oldest first
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace attnd::cpu
