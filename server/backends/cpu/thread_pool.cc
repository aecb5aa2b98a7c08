#include "server/backends/cpu/thread_pool.h"

#include <algorithm>

namespace attnd::cpu {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { WorkerMain(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::Run(int64_t num_tasks, const std::function<void(TaskCursor&)>& participant) {
  if (num_tasks <= 0) return;
  const int64_t helpers = std::min<int64_t>(static_cast<int64_t>(workers_.size()), num_tasks - 1);
  Loop loop{&participant, TaskCursor(num_tasks), static_cast<int>(helpers)};
  if (helpers > 0) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      loops_.push_back(&loop);
    }
    if (helpers == 1) {
      work_cv_.notify_one();
    } else {
      work_cv_.notify_all();
    }
  }
  participant(loop.cursor);
  if (helpers > 0) {
    std::unique_lock<std::mutex> lock(mu_);
    // No worker may join once the loop is off the queue; wait for those that did.
    auto it = std::find(loops_.begin(), loops_.end(), &loop);
    if (it != loops_.end()) loops_.erase(it);
    done_cv_.wait(lock, [&] { return loop.active == 0; });
  }
}

void ThreadPool::WorkerMain() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [this] { return stopping_ || !loops_.empty(); });
    if (stopping_) return;
    Loop* loop = loops_.front();
    if (loop->cursor.Exhausted()) {  // nothing left to help with
      loops_.pop_front();
      continue;
    }
    if (--loop->helpers_wanted == 0) loops_.pop_front();
    ++loop->active;
    lock.unlock();
    (*loop->participant)(loop->cursor);
    lock.lock();
    // Notify under the lock: once active reaches 0 the owner may return and destroy the loop.
    if (--loop->active == 0) done_cv_.notify_all();
  }
}

}  // namespace attnd::cpu
