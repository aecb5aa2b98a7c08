// The timing rule of the transport benchmarks: warm-up calls, then calls until both a minimum count
// and a minimum time are reached; the median call reports (the minimum too, for the noise).
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "absl/status/status.h"

namespace attnd::bench {

struct CallTimes {
  double median_s = 0;
  double min_s = 0;
  double p10_s = 0;  // steadier than the median on a busy machine (noise only adds time)
  int calls = 0;
  // Process CPU time (user + system, every thread: client and in-process server alike) per call:
  // the work a transport costs, which a busy machine does not inflate the way it does wall time.
  double cpu_s = 0;
};

inline double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

struct TimingRule {
  int warmup = 2;
  int min_calls = 5;
  double min_seconds = 1.0;
  int max_calls = 1000;
};

// Runs `call` under `rule`; the first failing call's status is returned instead.
inline absl::Status TimeCalls(const TimingRule& rule, const std::function<absl::Status()>& call, CallTimes* out) {
  using Clock = std::chrono::steady_clock;
  for (int i = 0; i < rule.warmup; ++i) {
    if (absl::Status s = call(); !s.ok()) return s;
  }
  std::vector<double> seconds;
  const Clock::time_point start = Clock::now();
  const double cpu_start = ProcessCpuSeconds();
  while (static_cast<int>(seconds.size()) < rule.max_calls &&
         (static_cast<int>(seconds.size()) < rule.min_calls ||
          std::chrono::duration<double>(Clock::now() - start).count() < rule.min_seconds)) {
    const Clock::time_point t0 = Clock::now();
    if (absl::Status s = call(); !s.ok()) return s;
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  out->cpu_s = (ProcessCpuSeconds() - cpu_start) / static_cast<double>(seconds.size());
  std::sort(seconds.begin(), seconds.end());
  out->median_s = seconds[seconds.size() / 2];
  out->min_s = seconds.front();
  out->p10_s = seconds[seconds.size() / 10];
  out->calls = static_cast<int>(seconds.size());
  return absl::OkStatus();
}

}  // namespace attnd::bench
