#include "server/security/periodic_thread.h"

#include <utility>

namespace attnd {

PeriodicThread::PeriodicThread(absl::Duration interval, std::function<void()> tick)
    : interval_(interval), tick_(std::move(tick)) {
  thread_ = std::thread([this] {
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(&stopping_), interval_);  // wakes early only to stop
        if (stopping_) return;
      }
      tick_();
    }
  });
}

PeriodicThread::~PeriodicThread() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

}  // namespace attnd
