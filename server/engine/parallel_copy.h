// ParallelCopy: large host memcpys split over a few helper threads. Gathering a packed batch,
// staging pageable tensors into page-locked memory and copying results back out are plain
// memcpys of megabytes; one core copies about 5 GB/s there (measured on the H100 host: 48 MiB of
// staging took 9 ms), far below the memory's bandwidth, and on the engine's executor threads it
// caps how many requests per second one GPU can take. Parts of about a MiB go to the helpers while
// the caller copies too, and the call returns when every byte is copied. Copies under 1 MiB run on
// the caller alone (a hand-off costs more than it saves).
#pragma once

#include <cstddef>
#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace attnd::engine {

class ParallelCopy {
 public:
  struct Range {
    void* dst;
    const void* src;
    size_t bytes;
  };

  explicit ParallelCopy(int helpers);
  ~ParallelCopy();
  ParallelCopy(const ParallelCopy&) = delete;
  ParallelCopy& operator=(const ParallelCopy&) = delete;

  // Copies every range (they must not overlap); returns when all are done. Thread-safe: several
  // callers share the helpers.
  void Copy(const std::vector<Range>& ranges);
  void Copy(void* dst, const void* src, size_t bytes) { Copy(std::vector<Range>{{dst, src, bytes}}); }

  // The process's copier: kSharedHelpers helper threads, started on first use.
  static ParallelCopy& Shared();
  static constexpr int kSharedHelpers = 4;
  static constexpr size_t kMinParallelBytes = size_t{1} << 20;

 private:
  struct Job;
  static void Run(Job& job);
  void HelperLoop();

  absl::Mutex mu_;
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> helpers_;
};

}  // namespace attnd::engine
