#include "client/loadgen/load_runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/attnd/client.h"
#include "client/loadgen/payload_sender.h"
#include "client/loadgen/response_check.h"

namespace attnd::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

Clock::duration ToClock(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// One finished call. `start` is when it was sent (closed loop) or scheduled to be sent (open loop).
struct Sample {
  Clock::time_point start;
  Clock::time_point end;
  const Payload* payload;
  absl::StatusCode code;
  int64_t wire_bytes;
};

// Every call of the step, from every thread; reports are cut from it by time range.
class Recorder {
 public:
  void Add(const Payload& payload, Clock::time_point start, Clock::time_point end, const absl::Status& status,
           int64_t wire_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    samples_.push_back({start, end, &payload, status.code(), wire_bytes});
    if (!status.ok()) examples_.emplace(absl::StatusCodeToString(status.code()), std::string(status.message()));
  }

  void AddCheck(const CheckResult& checked) {
    std::lock_guard<std::mutex> lock(mu_);
    ++checked_;
    max_rel_l2_ = std::max(max_rel_l2_, checked.max_rel_l2);
    if (!checked.ok && mismatches_++ == 0) first_mismatch_ = checked.detail;
  }

  // The calls that ended in [from, to) (or, by_start, that started at or after `from`), over
  // elapsed_s seconds (< 0: from `from` to the last of their ends). Check results are the step's.
  LoadReport Report(Clock::time_point from, Clock::time_point to, bool by_start, double elapsed_s,
                    const std::vector<std::string>& workload_names) const {
    std::lock_guard<std::mutex> lock(mu_);
    LoadReport r;
    std::vector<double> latencies;
    std::vector<std::vector<double>> by_workload(workload_names.size());
    r.workloads.resize(workload_names.size());
    for (size_t w = 0; w < workload_names.size(); ++w) r.workloads[w].name = workload_names[w];
    Clock::time_point last_end = from;
    for (const Sample& s : samples_) {
      if (by_start ? s.start < from : (s.end < from || s.end >= to)) continue;
      last_end = std::max(last_end, s.end);
      WorkloadReport* w = s.payload->workload < static_cast<int>(r.workloads.size()) ? &r.workloads[s.payload->workload]
                                                                                     : nullptr;
      if (s.code != absl::StatusCode::kOk) {
        if (w != nullptr) ++w->errors;
        ++r.errors;
        const std::string code = absl::StatusCodeToString(s.code);
        ++r.errors_by_code[code];
        r.error_examples.emplace(code, examples_.at(code));
        continue;
      }
      ++r.ok;
      r.request_bytes += s.payload->request_bytes;
      r.response_bytes += s.payload->response_bytes;
      r.wire_bytes += s.wire_bytes;
      r.flops += s.payload->flops;
      const double ms = std::chrono::duration<double, std::milli>(s.end - s.start).count();
      latencies.push_back(ms);
      if (w != nullptr) {
        ++w->ok;
        w->request_bytes += s.payload->request_bytes;
        w->response_bytes += s.payload->response_bytes;
        w->wire_bytes += s.wire_bytes;
        by_workload[s.payload->workload].push_back(ms);
      }
    }
    for (size_t i = 0; i < by_workload.size(); ++i) r.workloads[i].latency = Summarize(std::move(by_workload[i]));
    r.elapsed_s = elapsed_s >= 0 ? elapsed_s : std::chrono::duration<double>(last_end - from).count();
    r.latency = Summarize(std::move(latencies));
    r.checked = checked_;
    r.mismatches = mismatches_;
    r.max_rel_l2 = max_rel_l2_;
    r.first_mismatch = first_mismatch_;
    return r;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Sample> samples_;
  std::map<std::string, std::string> examples_;
  int64_t checked_ = 0, mismatches_ = 0;
  double max_rel_l2_ = 0;
  std::string first_mismatch_;
};

class LoadStep {
 public:
  LoadStep(const LoadSpec& spec, const std::vector<Payload>& payloads) : spec_(spec), payloads_(payloads) {
    if (spec.workload_weights.size() > 1) {
      double sum = 0;
      for (double w : spec.workload_weights) cumulative_.push_back(sum += w);
      by_workload_.resize(spec.workload_weights.size());
      for (size_t i = 0; i < payloads.size(); ++i) by_workload_[payloads[i].workload].push_back(i);
    }
  }

  LoadReport Run(const std::vector<std::unique_ptr<Client>>& clients,
                 const std::vector<std::unique_ptr<PayloadSender>>& senders, const WindowProgress& progress) {
    start_ = Clock::now();
    measure_start_ = start_ + ToClock(spec_.warmup_s);
    end_ = measure_start_ + ToClock(spec_.duration_s);
    std::vector<std::thread> threads;
    if (spec_.rate > 0) {
      threads.emplace_back([&] { OpenLoop(clients); });
    } else {
      for (int i = 0; i < spec_.concurrency; ++i) {
        threads.emplace_back([&, i] { ClosedLoop(*senders[i], i); });
      }
    }
    LoadReport report;
    if (windowed()) report = MeasureWindows(progress);
    for (std::thread& t : threads) t.join();
    if (!windowed()) report = recorder_.Report(measure_start_, Clock::time_point::max(), /*by_start=*/true, -1,
                                                  spec_.workload_names);
    return report;
  }

 private:
  bool windowed() const { return spec_.window_s > 0; }
  double tolerance() const { return spec_.check_tolerance > 0 ? spec_.check_tolerance : DefaultTolerance(spec_.dtype); }

  // Whether a call sent (or scheduled) at `now` is sent at all, and whether it is checked (every
  // check_every-th measured call, starting with the first). Without windows the duration or the
  // request count ends the step; with windows, MeasureWindows does.
  bool Admit(Clock::time_point now, bool* measured, bool* check) {
    *measured = now >= measure_start_;
    *check = false;
    if (stop_.load()) return false;
    if (!*measured) return true;
    const int64_t ticket = tickets_.fetch_add(1);
    if (!windowed() && (spec_.requests > 0 ? ticket >= spec_.requests : now >= end_)) return false;
    *check = spec_.check && ticket % spec_.check_every == 0;
    return true;
  }

  void Finish(const Payload& payload, Clock::time_point start, bool measured, const absl::Status& status,
              const CheckResult* checked, int64_t wire_bytes = 0) {
    const Clock::time_point end = Clock::now();
    if (measured || windowed()) recorder_.Add(payload, start, end, status, wire_bytes);
    if (checked != nullptr && status.ok()) recorder_.AddCheck(*checked);
  }

  CallOptions Call() const {
    CallOptions call;
    call.timeout = absl::Seconds(spec_.timeout_s);
    return call;
  }

  // The next payload: by workload weight when there are several workloads, else in rotation.
  const Payload& Pick(std::mt19937_64& rng) {
    if (cumulative_.empty()) return payloads_[sequence_.fetch_add(1) % payloads_.size()];
    const double x = std::uniform_real_distribution<double>(0, cumulative_.back())(rng);
    const int workload = static_cast<int>(std::upper_bound(cumulative_.begin(), cumulative_.end(), x) - cumulative_.begin());
    const std::vector<size_t>& mine = by_workload_[std::min<size_t>(workload, by_workload_.size() - 1)];
    return payloads_[mine[sequence_.fetch_add(1) % mine.size()]];
  }

  void ClosedLoop(PayloadSender& sender, int thread) {
    const CallOptions call = Call();
    std::mt19937_64 rng(spec_.seed * 1000003 + thread);
    bool measured = false, check = false;
    while (Admit(Clock::now(), &measured, &check)) {
      const Payload& payload = Pick(rng);
      check = check && payload.direction != Direction::kTrain;
      const Clock::time_point begin = Clock::now();
      SendResult sent = sender.Send(payload, call, check);
      CheckResult checked;
      if (check && sent.status.ok()) {
        checked = sent.forward ? CheckForward(*sent.forward, *payload.expected_forward, tolerance())
                               : CheckBackward(*sent.backward, *payload.expected_backward, tolerance());
      }
      Finish(payload, begin, measured, sent.status, check ? &checked : nullptr, sent.wire_bytes);
    }
  }

  // One sender: sleeps until each scheduled time and sends asynchronously; the answers arrive on
  // gRPC threads. A send that is late (the sender was held up, or max_in_flight calls are open)
  // still counts its latency from the scheduled time.
  void OpenLoop(const std::vector<std::unique_ptr<Client>>& clients) {
    std::mt19937_64 rng(spec_.seed * 0x9E3779B97F4A7C15ull + 1);
    std::exponential_distribution<double> poisson_gap(spec_.rate);
    const CallOptions call = Call();
    Clock::time_point scheduled = start_;
    bool measured = false, check = false;
    for (int64_t i = 0;; ++i) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_until(lock, scheduled, [&] { return stop_.load(); });
        cv_.wait(lock, [&] { return stop_.load() || in_flight_ < spec_.max_in_flight; });
      }
      if (!Admit(scheduled, &measured, &check)) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++in_flight_;
      }
      const Payload& payload = payloads_[i % payloads_.size()];
      Client& client = *clients[i % clients.size()];
      const double tol = tolerance();
      if (payload.forward) {
        client.ForwardAsync(payload.forward, [this, &payload, scheduled, measured, check, tol](
                                                 absl::StatusOr<v1::ForwardResponse> response) {
          CheckResult checked;
          if (check && response.ok()) checked = CheckForward(*response, *payload.expected_forward, tol);
          Done(payload, scheduled, measured, response.status(), check ? &checked : nullptr);
        }, call);
      } else {
        client.BackwardAsync(payload.backward, [this, &payload, scheduled, measured, check, tol](
                                                   absl::StatusOr<v1::BackwardResponse> response) {
          CheckResult checked;
          if (check && response.ok()) checked = CheckBackward(*response, *payload.expected_backward, tol);
          Done(payload, scheduled, measured, response.status(), check ? &checked : nullptr);
        }, call);
      }
      scheduled += ToClock(spec_.arrival == Arrival::kPoisson ? poisson_gap(rng) : 1.0 / spec_.rate);
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_flight_ == 0; });
  }

  void Done(const Payload& payload, Clock::time_point scheduled, bool measured, const absl::Status& status,
            const CheckResult* checked) {
    Finish(payload, scheduled, measured, status, checked);
    std::lock_guard<std::mutex> lock(mu_);
    --in_flight_;
    cv_.notify_all();
  }

  // Closes a window every window_s seconds after the warm-up until the last stable_windows agree or
  // the step's duration is spent; then stops the senders. Reports the stable windows (or, when the
  // rule was never met, every window).
  LoadReport MeasureWindows(const WindowProgress& progress) {
    std::vector<LoadReport> windows;
    const int n = std::max(1, spec_.stable_windows);
    const int most = std::max(1, static_cast<int>(spec_.duration_s / spec_.window_s + 1e-9));
    bool stable = false;
    Clock::time_point w_end = measure_start_;
    while (static_cast<int>(windows.size()) < most) {
      w_end = measure_start_ + ToClock(spec_.window_s * (windows.size() + 1));
      std::this_thread::sleep_until(w_end);
      windows.push_back(recorder_.Report(w_end - ToClock(spec_.window_s), w_end, false, spec_.window_s,
                                       spec_.workload_names));
      if (progress) progress(static_cast<int>(windows.size()), windows.back());
      if (static_cast<int>(windows.size()) >= n && WindowsStable(windows, n, spec_.stability)) {
        stable = true;
        break;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    const int covered = stable ? n : static_cast<int>(windows.size());
    LoadReport r = recorder_.Report(w_end - ToClock(spec_.window_s * covered), w_end, false, spec_.window_s * covered,
                                    spec_.workload_names);
    r.windows = covered;
    r.windows_run = static_cast<int>(windows.size());
    r.stable = stable;
    return r;
  }

  const LoadSpec& spec_;
  const std::vector<Payload>& payloads_;
  Clock::time_point start_, measure_start_, end_;
  std::atomic<int64_t> tickets_{0};
  std::atomic<int64_t> sequence_{0};
  std::vector<double> cumulative_;             // workload weights, summed
  std::vector<std::vector<size_t>> by_workload_;  // payload indices of each workload
  std::atomic<bool> stop_{false};
  std::mutex mu_;  // in_flight_ and the senders' waits
  std::condition_variable cv_;
  int in_flight_ = 0;
  Recorder recorder_;
};

}  // namespace

bool WindowsStable(const std::vector<LoadReport>& windows, int n, double tolerance) {
  if (n < 1 || static_cast<int>(windows.size()) < n) return false;
  auto within = [&](auto value) {
    double lo = value(windows.back()), hi = lo;
    for (size_t i = windows.size() - n; i < windows.size(); ++i) {
      lo = std::min(lo, value(windows[i]));
      hi = std::max(hi, value(windows[i]));
    }
    return hi <= 0 || (hi - lo) / hi <= tolerance;
  };
  return within([](const LoadReport& r) { return r.requests_per_s(); }) &&
         within([](const LoadReport& r) { return r.latency.p99_ms; });
}

absl::StatusOr<LoadReport> RunLoad(const LoadSpec& spec, const std::vector<Payload>& payloads,
                                   const WindowProgress& progress) {
  if (payloads.empty()) return absl::InvalidArgumentError("no payloads");
  if (spec.concurrency < 1) return absl::InvalidArgumentError("--concurrency must be at least 1");
  if (spec.rate < 0) return absl::InvalidArgumentError("--rate must be > 0");
  // Closed loop: one connection per client unless told; open loop: 4 unless told.
  const int connections = spec.rate > 0 ? (spec.connections > 0 ? spec.connections : 4)
                          : spec.connections > 0 ? std::min(spec.connections, spec.concurrency)
                                                 : spec.concurrency;
  if (spec.rate > 0) {
    for (const Payload& p : payloads) {
      if (p.transport != Transport::kProto || p.direction == Direction::kTrain) {
        return absl::InvalidArgumentError("open loop (--rate) sends forward or backward calls over the proto "
                                          "transport only; use closed loop for shm, cuda_ipc and train");
      }
    }
  }
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < connections; ++i) {
    ClientOptions options;
    options.target = spec.target;
    options.dedicated_connection = true;
    options.connect_timeout = absl::Seconds(spec.connect_timeout_s);
    options.stream_above_bytes = spec.stream_above_bytes;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return client.status();
    clients.push_back(std::move(*client));
  }
  // Each closed-loop thread its own sender (and regions: concurrent calls never share outputs).
  std::vector<std::unique_ptr<PayloadSender>> senders;
  for (int i = 0; spec.rate <= 0 && i < spec.concurrency; ++i) {
    absl::StatusOr<std::unique_ptr<PayloadSender>> sender =
        PayloadSender::Create(*clients[i % clients.size()], payloads, spec.cuda_device);
    if (!sender.ok()) return sender.status();
    senders.push_back(*std::move(sender));
  }
  return LoadStep(spec, payloads).Run(clients, senders, progress);
}

}  // namespace attnd::loadgen
