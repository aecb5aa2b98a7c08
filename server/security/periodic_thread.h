// PeriodicThread: runs a function every interval on its own thread until destroyed. The
// security files (certificates, tokens) are polled this way: Kubernetes swaps a mounted Secret
// under the daemon without telling it.
#pragma once

#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace attnd {

class PeriodicThread {
 public:
  // The first run is one interval from now.
  PeriodicThread(absl::Duration interval, std::function<void()> tick);
  ~PeriodicThread();  // wakes the thread and joins it: `tick` never runs after this returns
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

 private:
  const absl::Duration interval_;
  const std::function<void()> tick_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace attnd
