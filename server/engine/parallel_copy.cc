#include "server/engine/parallel_copy.h"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace attnd::engine {

// One Copy call: its parts, claimed one at a time by the caller and the helpers it was handed to.
struct ParallelCopy::Job {
  std::vector<Range> parts;
  std::atomic<size_t> next{0};
  int holders = 0;  // helpers that took the job from the queue and may still copy a part (under mu_)
};

ParallelCopy::ParallelCopy(int helpers) {
  for (int i = 0; i < helpers; ++i) helpers_.emplace_back([this] { HelperLoop(); });
}

ParallelCopy::~ParallelCopy() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : helpers_) t.join();
}

ParallelCopy& ParallelCopy::Shared() {
  static ParallelCopy* shared = new ParallelCopy(kSharedHelpers);  // never destroyed: used until exit
  return *shared;
}

void ParallelCopy::Run(Job& job) {
  for (size_t i = job.next.fetch_add(1); i < job.parts.size(); i = job.next.fetch_add(1)) {
    const Range& r = job.parts[i];
    std::memcpy(r.dst, r.src, r.bytes);
  }
}

void ParallelCopy::Copy(const std::vector<Range>& ranges) {
  size_t total = 0;
  for (const Range& r : ranges) total += r.bytes;
  if (helpers_.empty() || total < kMinParallelBytes) {
    // An empty range may carry null pointers (an empty vector's data()), which memcpy must not see.
    for (const Range& r : ranges) {
      if (r.bytes != 0) std::memcpy(r.dst, r.src, r.bytes);
    }
    return;
  }
  // Parts of at least 256 KiB, about one per thread (caller included) and never fewer.
  const size_t threads = helpers_.size() + 1;
  const size_t part = std::max<size_t>(size_t{256} << 10, (total + threads - 1) / threads);
  Job job;
  for (const Range& r : ranges) {
    for (size_t at = 0; at < r.bytes; at += part) {
      const size_t n = std::min(part, r.bytes - at);
      job.parts.push_back({static_cast<std::byte*>(r.dst) + at, static_cast<const std::byte*>(r.src) + at, n});
    }
  }
  const size_t handed = std::min(helpers_.size(), job.parts.size() - 1);
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < handed; ++i) queue_.push_back(&job);
  }
  Run(job);
  // Every part is claimed. Take back the hand-offs no helper picked up, then wait for the helpers
  // still copying a part of this job.
  absl::MutexLock lock(&mu_);
  queue_.erase(std::remove(queue_.begin(), queue_.end(), &job), queue_.end());
  mu_.Await(absl::Condition(+[](Job* j) { return j->holders == 0; }, &job));
}

void ParallelCopy::HelperLoop() {
  for (;;) {
    Job* job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ParallelCopy* self) {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping
      job = queue_.front();
      queue_.pop_front();
      ++job->holders;
    }
    Run(*job);
    absl::MutexLock lock(&mu_);
    --job->holders;
  }
}

}  // namespace attnd::engine
