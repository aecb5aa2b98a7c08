#include "client/loadgen/load_runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/attnd/client.h"
#include "client/loadgen/response_check.h"

namespace attnd::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

// What one closed-loop thread saw; merged into the LoadReport at the end.
struct ThreadStats {
  std::vector<double> latencies_ms;
  LoadReport report;
  Clock::time_point last_end{};
};

class ClosedLoop {
 public:
  ClosedLoop(const LoadSpec& spec, const std::vector<Payload>& payloads) : spec_(spec), payloads_(payloads) {}

  // Runs until the duration or request budget is spent; returns the merged report.
  LoadReport Run(const std::vector<std::unique_ptr<Client>>& clients) {
    start_ = Clock::now();
    measure_start_ = start_ + ToClock(spec_.warmup_s);
    end_ = measure_start_ + ToClock(spec_.duration_s);
    std::vector<ThreadStats> stats(spec_.concurrency);
    std::vector<std::thread> threads;
    for (int i = 0; i < spec_.concurrency; ++i) {
      threads.emplace_back([&, i] { Loop(*clients[i % clients.size()], &stats[i]); });
    }
    for (std::thread& t : threads) t.join();
    return Merge(stats);
  }

 private:
  static Clock::duration ToClock(double seconds) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  }

  // Claims the next call: its place in the payload rotation, and whether it counts (started after
  // the warm-up) and is checked (every check_every-th measured call, starting with the first).
  bool Next(int64_t* sequence, bool* measured, bool* check) {
    const Clock::time_point now = Clock::now();
    *measured = now >= measure_start_;
    *check = false;
    if (*measured) {
      const int64_t ticket = tickets_.fetch_add(1);
      if (spec_.requests > 0 ? ticket >= spec_.requests : now >= end_) return false;
      *check = spec_.check && ticket % spec_.check_every == 0;
    }
    *sequence = sequence_.fetch_add(1);
    return true;
  }

  void Loop(Client& client, ThreadStats* stats) {
    CallOptions call;
    call.timeout = absl::Seconds(spec_.timeout_s);
    int64_t sequence = 0;
    bool measured = false, check = false;
    while (Next(&sequence, &measured, &check)) {
      const Payload& payload = payloads_[sequence % payloads_.size()];
      const Clock::time_point begin = Clock::now();
      absl::Status status;
      CheckResult checked;
      if (payload.forward) {
        absl::StatusOr<v1::ForwardResponse> response = client.Forward(*payload.forward, call);
        status = response.status();
        if (check && response.ok()) checked = CheckForward(*response, *payload.expected_forward, tolerance());
      } else {
        absl::StatusOr<v1::BackwardResponse> response = client.Backward(*payload.backward, call);
        status = response.status();
        if (check && response.ok()) checked = CheckBackward(*response, *payload.expected_backward, tolerance());
      }
      const Clock::time_point end = Clock::now();
      if (!measured) continue;
      Record(payload, status, begin, end, stats);
      if (check && status.ok()) RecordCheck(checked, &stats->report);
    }
  }

  double tolerance() const { return spec_.check_tolerance > 0 ? spec_.check_tolerance : DefaultTolerance(spec_.dtype); }

  static void Record(const Payload& payload, const absl::Status& status, Clock::time_point begin,
                     Clock::time_point end, ThreadStats* stats) {
    LoadReport& r = stats->report;
    stats->last_end = std::max(stats->last_end, end);
    if (!status.ok()) {
      ++r.errors;
      const std::string code = absl::StatusCodeToString(status.code());
      ++r.errors_by_code[code];
      r.error_examples.emplace(code, std::string(status.message()));
      return;
    }
    ++r.ok;
    r.request_bytes += payload.request_bytes;
    r.response_bytes += payload.response_bytes;
    r.flops += payload.flops;
    stats->latencies_ms.push_back(std::chrono::duration<double, std::milli>(end - begin).count());
  }

  static void RecordCheck(const CheckResult& checked, LoadReport* r) {
    ++r->checked;
    r->max_rel_l2 = std::max(r->max_rel_l2, checked.max_rel_l2);
    if (!checked.ok) {
      ++r->mismatches;
      if (r->first_mismatch.empty()) r->first_mismatch = checked.detail;
    }
  }

  LoadReport Merge(std::vector<ThreadStats>& stats) const {
    LoadReport all;
    std::vector<double> latencies;
    Clock::time_point last_end = measure_start_;
    for (ThreadStats& s : stats) {
      const LoadReport& r = s.report;
      all.ok += r.ok;
      all.errors += r.errors;
      for (const auto& [code, n] : r.errors_by_code) all.errors_by_code[code] += n;
      for (const auto& [code, message] : r.error_examples) all.error_examples.emplace(code, message);
      all.request_bytes += r.request_bytes;
      all.response_bytes += r.response_bytes;
      all.flops += r.flops;
      all.checked += r.checked;
      all.mismatches += r.mismatches;
      all.max_rel_l2 = std::max(all.max_rel_l2, r.max_rel_l2);
      if (all.first_mismatch.empty()) all.first_mismatch = r.first_mismatch;
      latencies.insert(latencies.end(), s.latencies_ms.begin(), s.latencies_ms.end());
      last_end = std::max(last_end, s.last_end);
    }
    all.elapsed_s = std::chrono::duration<double>(last_end - measure_start_).count();
    all.latency = Summarize(std::move(latencies));
    return all;
  }

  const LoadSpec& spec_;
  const std::vector<Payload>& payloads_;
  Clock::time_point start_, measure_start_, end_;
  std::atomic<int64_t> tickets_{0};
  std::atomic<int64_t> sequence_{0};
};

}  // namespace

absl::StatusOr<LoadReport> RunLoad(const LoadSpec& spec, const std::vector<Payload>& payloads) {
  if (payloads.empty()) return absl::InvalidArgumentError("no payloads");
  if (spec.concurrency < 1) return absl::InvalidArgumentError("--concurrency must be at least 1");
  const int connections = spec.connections > 0 ? std::min(spec.connections, spec.concurrency) : spec.concurrency;
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < connections; ++i) {
    ClientOptions options;
    options.target = spec.target;
    options.dedicated_connection = true;
    options.connect_timeout = absl::Seconds(spec.connect_timeout_s);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return client.status();
    clients.push_back(std::move(*client));
  }
  return ClosedLoop(spec, payloads).Run(clients);
}

}  // namespace attnd::loadgen
