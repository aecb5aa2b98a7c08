#include "server/engine/stage_timing_backend.h"

#include <algorithm>
#include <chrono>

namespace attnd::engine {
namespace {

using Clock = std::chrono::steady_clock;

int64_t Micros(double seconds) { return static_cast<int64_t>(seconds * 1e6 + 0.5); }

// Runs `call` on a copy of `args` that certainly has a (cleared) CallTimings; returns its status
// and, through the out-parameters, the timings and the seconds it took.
template <typename Args, typename Call>
absl::Status Timed(const Args& args, Call call, CallTimings& timings, double& total_s) {
  Args timed = args;
  if (timed.timings == nullptr) timed.timings = &timings;
  *timed.timings = CallTimings{};
  const Clock::time_point start = Clock::now();
  absl::Status status = call(timed);
  total_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (timed.timings->batch_requests == 0) timed.timings->batch_requests = 1;
  timings = *timed.timings;
  return status;
}

}  // namespace

void StageTimingBackend::Record(const CallTimings& t, double total_s) {
  absl::MutexLock lock(&mu_);
  double accounted = 0;
  for (auto [seconds, histogram] : {std::pair{t.queue_s, &stages_.queue_us}, {t.h2d_s, &stages_.h2d_us},
                                    {t.kernel_s, &stages_.kernel_us}, {t.d2h_s, &stages_.d2h_us}}) {
    if (seconds < 0) continue;  // a stage this backend does not have (H2D on the CPU)
    histogram->Add(Micros(seconds));
    accounted += seconds;
  }
  stages_.other_us.Add(Micros(std::max(0.0, total_s - accounted)));
  stages_.total_us.Add(Micros(total_s));
}

absl::Status StageTimingBackend::Forward(const ForwardArgs& args) {
  CallTimings timings;
  double total_s = 0;
  absl::Status status = Timed(args, [&](const ForwardArgs& a) { return inner_->Forward(a); }, timings, total_s);
  if (status.ok()) Record(timings, total_s);
  return status;
}

absl::Status StageTimingBackend::Backward(const BackwardArgs& args) {
  CallTimings timings;
  double total_s = 0;
  absl::Status status = Timed(args, [&](const BackwardArgs& a) { return inner_->Backward(a); }, timings, total_s);
  if (status.ok()) Record(timings, total_s);
  return status;
}

void StageTimingBackend::CollectStats(BackendStats& stats) const {
  {
    absl::MutexLock lock(&mu_);
    stats.has_stages = true;
    stats.stages.Merge(stages_);
  }
  inner_->CollectStats(stats);
}

}  // namespace attnd::engine
