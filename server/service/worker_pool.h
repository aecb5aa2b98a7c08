// WorkerPool: a fixed set of threads that compute validated calls, so that gRPC's callback
// threads only parse, validate and hand off. FIFO; the queue of waiting calls is bounded so that a
// flood of requests is refused (RESOURCE_EXHAUSTED upstream) instead of piling up without limit.
#pragma once

#include <atomic>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace attnd {

class WorkerPool {
 public:
  // threads <= 0: one per hardware thread. max_queued: tasks waiting for a thread, beyond those
  // running.
  WorkerPool(int threads, size_t max_queued);
  ~WorkerPool();  // Stop()

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // False when the queue is full or the pool is stopping; the task is then dropped unrun.
  bool Submit(absl::AnyInvocable<void() &&> task);

  // Runs every task already queued, then joins the threads. Idempotent.
  void Stop();

  int threads() const { return static_cast<int>(threads_.size()); }
  size_t queued() const;
  // Threads running a task now (for the busy-workers gauge).
  int busy() const { return busy_.load(std::memory_order_relaxed); }

 private:
  void Loop();

  const size_t max_queued_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> busy_{0};
  std::vector<std::thread> threads_;
  std::once_flag joined_;
};

}  // namespace attnd
