#include "server/metrics/metrics_registry.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace attnd::metrics {
namespace {

[[noreturn]] void Misuse(const std::string& what) {
  std::fprintf(stderr, "attnd: metrics registry misuse: %s\n", what.c_str());
  std::abort();
}

// [a-zA-Z_:][a-zA-Z0-9_:]* for metric names; label names may not use ':' nor start with "__".
bool ValidName(absl::string_view name, bool label) {
  if (name.empty()) return false;
  if (label && name.substr(0, 2) == "__") return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// Shortest text that reads back as the same double; Prometheus's spellings of the specials.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  // Plain decimals in the usual range ("0.0001", not "1e-04"), exponents only beyond it.
  const double mag = std::fabs(v);
  const bool fixed = mag == 0 || (mag >= 1e-6 && mag < 1e15);
  const auto result = fixed ? std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed)
                            : std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, result.ptr);
}

// Label values escape backslash, double quote and newline; HELP text backslash and newline.
std::string Escape(absl::string_view s, bool quote) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

// {a="x",b="y"} with `extra` (the histogram's le) last; empty when there are no labels at all.
std::string LabelText(const Labels& labels, const std::pair<std::string, std::string>* extra = nullptr) {
  if (labels.empty() && extra == nullptr) return "";
  std::string out = "{";
  bool first = true;
  auto add = [&](const std::string& k, const std::string& v) {
    absl::StrAppend(&out, first ? "" : ",", k, "=\"", Escape(v, true), "\"");
    first = false;
  };
  for (const auto& [k, v] : labels) add(k, v);
  if (extra != nullptr) add(extra->first, extra->second);
  out += "}";
  return out;
}

double FetchAdd(std::atomic<double>& a, double delta) { return a.fetch_add(delta, std::memory_order_relaxed); }

}  // namespace

void Counter::Increment(double delta) {
  if (delta > 0) FetchAdd(value_, delta);
}

void Gauge::Add(double delta) { FetchAdd(value_, delta); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && bounds_[i] <= bounds_[i - 1])) {
      Misuse("histogram bounds must be finite and strictly increasing");
    }
  }
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;  // no bucket holds NaN; dropping it keeps sum meaningful
  // Bucket i counts bounds_[i-1] < value <= bounds_[i] ("le"); the last one everything above.
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  FetchAdd(sum_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> LatencyBucketsSeconds() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

MetricsRegistry::Series& MetricsRegistry::FindOrAdd(absl::string_view name, absl::string_view help, Type type,
                                                    const Labels& labels, const std::vector<double>* bounds) {
  auto it = families_.find(name);
  if (it == families_.end()) {
    if (!ValidName(name, /*label=*/false)) Misuse(absl::StrCat("invalid metric name '", name, "'"));
    Family family{type, std::string(help), bounds != nullptr ? *bounds : std::vector<double>{}, {}};
    it = families_.emplace(std::string(name), std::move(family)).first;
  } else if (it->second.type != type) {
    Misuse(absl::StrCat("metric '", name, "' registered with two types"));
  } else if (bounds != nullptr && *bounds != it->second.bounds) {
    Misuse(absl::StrCat("histogram '", name, "' registered with two sets of buckets"));
  }
  auto series = it->second.series.find(labels);
  if (series != it->second.series.end()) return series->second;
  for (const auto& [k, v] : labels) {
    if (!ValidName(k, /*label=*/true) || (type == Type::kHistogram && k == "le")) {
      Misuse(absl::StrCat("invalid label name '", k, "' on metric '", name, "'"));
    }
  }
  return it->second.series[labels];
}

Counter& MetricsRegistry::GetCounter(absl::string_view name, absl::string_view help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Series& s = FindOrAdd(name, help, Type::kCounter, labels, nullptr);
  if (s.read) Misuse(absl::StrCat("counter '", name, "' is a callback counter"));
  if (s.counter == nullptr) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& MetricsRegistry::GetGauge(absl::string_view name, absl::string_view help, const Labels& labels) {
  absl::MutexLock lock(&mu_);
  Series& s = FindOrAdd(name, help, Type::kGauge, labels, nullptr);
  if (s.read) Misuse(absl::StrCat("gauge '", name, "' is a callback gauge"));
  if (s.gauge == nullptr) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

Histogram& MetricsRegistry::GetHistogram(absl::string_view name, absl::string_view help, const Labels& labels,
                                         const std::vector<double>& upper_bounds) {
  absl::MutexLock lock(&mu_);
  Series& s = FindOrAdd(name, help, Type::kHistogram, labels, &upper_bounds);
  if (s.read_histogram) Misuse(absl::StrCat("histogram '", name, "' is a callback histogram"));
  if (s.histogram == nullptr) s.histogram = std::make_unique<Histogram>(upper_bounds);
  return *s.histogram;
}

void MetricsRegistry::AddCallbackGauge(absl::string_view name, absl::string_view help, const Labels& labels,
                                       std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  Series& s = FindOrAdd(name, help, Type::kGauge, labels, nullptr);
  if (s.gauge != nullptr) Misuse(absl::StrCat("gauge '", name, "' is already a plain gauge"));
  s.read = std::move(read);
}

void MetricsRegistry::AddCallbackCounter(absl::string_view name, absl::string_view help, const Labels& labels,
                                         std::function<double()> read) {
  absl::MutexLock lock(&mu_);
  Series& s = FindOrAdd(name, help, Type::kCounter, labels, nullptr);
  if (s.counter != nullptr) Misuse(absl::StrCat("counter '", name, "' is already a plain counter"));
  s.read = std::move(read);
}

void MetricsRegistry::AddCallbackHistogram(absl::string_view name, absl::string_view help, const Labels& labels,
                                           const std::vector<double>& upper_bounds,
                                           std::function<Histogram::Snapshot()> read) {
  Histogram validate(upper_bounds);  // aborts on bounds that are not finite and increasing
  absl::MutexLock lock(&mu_);
  Series& s = FindOrAdd(name, help, Type::kHistogram, labels, &upper_bounds);
  if (s.histogram != nullptr) Misuse(absl::StrCat("histogram '", name, "' is already a plain histogram"));
  s.read_histogram = std::move(read);
}

std::string MetricsRegistry::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    const char* type = family.type == Type::kCounter ? "counter" : family.type == Type::kGauge ? "gauge" : "histogram";
    absl::StrAppend(&out, "# HELP ", name, " ", Escape(family.help, false), "\n# TYPE ", name, " ", type, "\n");
    for (const auto& [labels, s] : family.series) {
      switch (family.type) {
        case Type::kCounter:
          absl::StrAppend(&out, name, LabelText(labels), " ", FormatValue(s.read ? s.read() : s.counter->Value()),
                          "\n");
          break;
        case Type::kGauge:
          absl::StrAppend(&out, name, LabelText(labels), " ", FormatValue(s.read ? s.read() : s.gauge->Value()), "\n");
          break;
        case Type::kHistogram: {
          const Histogram::Snapshot snap = s.read_histogram ? s.read_histogram() : s.histogram->Read();
          const std::vector<double>& bounds = family.bounds;
          if (snap.cumulative.size() != bounds.size() + 1) Misuse(absl::StrCat("histogram '", name, "' read back "
                                                                               "the wrong number of buckets"));
          for (size_t i = 0; i <= bounds.size(); ++i) {
            const std::pair<std::string, std::string> le{"le", i < bounds.size() ? FormatValue(bounds[i]) : "+Inf"};
            absl::StrAppend(&out, name, "_bucket", LabelText(labels, &le), " ", snap.cumulative[i], "\n");
          }
          absl::StrAppend(&out, name, "_sum", LabelText(labels), " ", FormatValue(snap.sum), "\n");
          absl::StrAppend(&out, name, "_count", LabelText(labels), " ", snap.count, "\n");
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace attnd::metrics
