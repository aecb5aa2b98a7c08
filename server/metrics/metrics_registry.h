// MetricsRegistry: counters, gauges and histograms, rendered in the Prometheus text exposition
// format (version 0.0.4). Small on purpose: the daemon needs a handful of series, and the hot path
// is one relaxed atomic add on a metric whose reference the caller keeps.
//
// A metric is found by family name and label set; the first Get*() creates it and later calls
// return the same object, so any layer can add a series (say a CUDA backend's "h2d" stage of
// attnd_request_stage_seconds) by name without the registry knowing it in advance. References
// stay valid for the registry's life. Every method is thread-safe.
//
// Misuse is a programming error and aborts with a message: an invalid metric or label name, one
// name used for two types, or one histogram family with two sets of bucket bounds.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace attnd::metrics {

// Label name/value pairs of one series, e.g. {{"method", "Forward"}, {"code", "OK"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  // `delta` < 0 is ignored: a counter only goes up (Prometheus reads a decrease as a restart).
  void Increment(double delta = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // `upper_bounds`: strictly increasing, finite; the +Inf bucket is implicit.
  explicit Histogram(std::vector<double> upper_bounds);

  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // one per bound, then +Inf (== count)
    double sum = 0;
    uint64_t count = 0;
  };
  // Cumulative bucket counts; count is the +Inf bucket, so the two always agree.
  Snapshot Read() const;
  const std::vector<double>& upper_bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative
  std::atomic<double> sum_{0.0};
};

// Latency buckets in seconds, 100 us to 60 s: attention calls range from a tiny CPU forward to a
// multi-GiB backward.
std::vector<double> LatencyBucketsSeconds();

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  Counter& GetCounter(absl::string_view name, absl::string_view help, const Labels& labels = {});
  Gauge& GetGauge(absl::string_view name, absl::string_view help, const Labels& labels = {});
  Histogram& GetHistogram(absl::string_view name, absl::string_view help, const Labels& labels,
                          const std::vector<double>& upper_bounds);
  // A gauge read when the registry is rendered (queue depth, busy workers). `read` runs under the
  // registry's lock, so it must not call back into the registry, and what it reads must outlive
  // every Render() (stop the exporter first).
  void AddCallbackGauge(absl::string_view name, absl::string_view help, const Labels& labels,
                        std::function<double()> read);
  // The same for a counter another layer keeps (e.g. the engine's driver allocations): `read`
  // returns its running total, which must never decrease.
  void AddCallbackCounter(absl::string_view name, absl::string_view help, const Labels& labels,
                          std::function<double()> read);
  // And for a histogram another layer keeps: `read` returns cumulative counts for `upper_bounds`
  // (plus +Inf) and the sum, e.g. converted from the engine's own histograms at each scrape.
  void AddCallbackHistogram(absl::string_view name, absl::string_view help, const Labels& labels,
                            const std::vector<double>& upper_bounds, std::function<Histogram::Snapshot()> read);

  // Every family sorted by name, every series by labels; "# HELP" and "# TYPE" once per family.
  std::string Render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series {
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
    std::function<double()> read;  // callback gauges and counters
    std::function<Histogram::Snapshot()> read_histogram;  // callback histograms
  };
  struct Family {
    Type type;
    std::string help;
    std::vector<double> bounds;        // histograms
    std::map<Labels, Series> series;  // sorted: stable output
  };

  Series& FindOrAdd(absl::string_view name, absl::string_view help, Type type, const Labels& labels,
                    const std::vector<double>* bounds) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, Family, std::less<>> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd::metrics
