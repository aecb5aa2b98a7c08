// MetricsRegistry: the Prometheus text exposition it renders (checked line by line against the
// format's rules), cumulative histogram buckets, and increments from many threads adding up.
#include "server/metrics/metrics_registry.h"

#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnd::metrics {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  EXPECT_EQ(lines.back(), "") << "exposition must end with a newline";
  lines.pop_back();
  return lines;
}

TEST(MetricsRegistryTest, RendersCounterAndGaugeFamiliesSortedWithHelpAndType) {
  MetricsRegistry r;
  r.GetCounter("b_requests_total", "Requests.", {{"method", "Forward"}, {"code", "OK"}}).Increment(3);
  r.GetCounter("b_requests_total", "Requests.", {{"method", "Backward"}, {"code", "OK"}}).Increment();
  r.GetGauge("a_depth", "Queue depth.").Set(7.5);
  EXPECT_THAT(Lines(r.Render()),
              ElementsAre("# HELP a_depth Queue depth.", "# TYPE a_depth gauge", "a_depth 7.5",
                          "# HELP b_requests_total Requests.", "# TYPE b_requests_total counter",
                          "b_requests_total{method=\"Backward\",code=\"OK\"} 1",
                          "b_requests_total{method=\"Forward\",code=\"OK\"} 3"));
}

TEST(MetricsRegistryTest, SameNameAndLabelsReturnTheSameMetric) {
  MetricsRegistry r;
  Counter& a = r.GetCounter("x_total", "X.", {{"k", "v"}});
  Counter& b = r.GetCounter("x_total", "X.", {{"k", "v"}});
  Counter& c = r.GetCounter("x_total", "X.", {{"k", "w"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
}

TEST(MetricsRegistryTest, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  MetricsRegistry r;
  Histogram& h = r.GetHistogram("lat_seconds", "Latency.", {{"stage", "total"}}, {0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 0.7, 5.0, 100.0}) h.Observe(v);
  h.Observe(std::nan(""));  // dropped
  EXPECT_THAT(Lines(r.Render()),
              ElementsAre("# HELP lat_seconds Latency.", "# TYPE lat_seconds histogram",
                          "lat_seconds_bucket{stage=\"total\",le=\"0.1\"} 2",  // le is inclusive
                          "lat_seconds_bucket{stage=\"total\",le=\"1\"} 4",
                          "lat_seconds_bucket{stage=\"total\",le=\"10\"} 5",
                          "lat_seconds_bucket{stage=\"total\",le=\"+Inf\"} 6",
                          "lat_seconds_sum{stage=\"total\"} 106.35", "lat_seconds_count{stage=\"total\"} 6"));
  const Histogram::Snapshot s = h.Read();
  EXPECT_THAT(s.cumulative, ElementsAre(2, 4, 5, 6));
  EXPECT_EQ(s.count, 6u);
}

TEST(MetricsRegistryTest, EscapesLabelValuesAndHelp) {
  MetricsRegistry r;
  r.GetCounter("e_total", "Line one\nback\\slash \"quoted\"", {{"path", "a\\b\"c\nd"}}).Increment();
  EXPECT_THAT(Lines(r.Render()),
              ElementsAre("# HELP e_total Line one\\nback\\\\slash \"quoted\"", "# TYPE e_total counter",
                          "e_total{path=\"a\\\\b\\\"c\\nd\"} 1"));
}

TEST(MetricsRegistryTest, SpecialValuesUsePrometheusSpellings) {
  MetricsRegistry r;
  r.GetGauge("g_inf", "G.").Set(INFINITY);
  r.GetGauge("g_nan", "G.").Set(NAN);
  r.GetGauge("g_neg", "G.").Set(-INFINITY);
  r.GetGauge("g_big", "G.").Set(1e300);
  r.GetGauge("g_small", "G.").Set(0.0001);
  const std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("\ng_inf +Inf\n"));
  EXPECT_THAT(text, HasSubstr("\ng_nan NaN\n"));
  EXPECT_THAT(text, HasSubstr("\ng_neg -Inf\n"));
  EXPECT_THAT(text, HasSubstr("\ng_big 1e+300\n"));
  EXPECT_THAT(text, HasSubstr("\ng_small 0.0001\n"));
}

TEST(MetricsRegistryTest, CounterIgnoresNegativeDeltas) {
  Counter c;
  c.Increment(2);
  c.Increment(-5);
  EXPECT_EQ(c.Value(), 2);
}

TEST(MetricsRegistryTest, CallbackGaugeIsReadAtRenderTime) {
  MetricsRegistry r;
  int depth = 1;
  r.AddCallbackGauge("q_depth", "Depth.", {}, [&depth] { return static_cast<double>(depth); });
  EXPECT_THAT(r.Render(), HasSubstr("\nq_depth 1\n"));
  depth = 42;
  EXPECT_THAT(r.Render(), HasSubstr("\nq_depth 42\n"));
}

TEST(MetricsRegistryTest, CallbackCounterAndHistogramAreReadAtRenderTime) {
  MetricsRegistry r;
  int64_t allocations = 3;
  Histogram::Snapshot batches;
  batches.cumulative = {2, 5, 6};  // le=1, le=4, +Inf
  batches.count = 6;
  batches.sum = 17;
  r.AddCallbackCounter("pool_allocations_total", "Allocations.", {{"device", "0"}},
                       [&] { return static_cast<double>(allocations); });
  r.AddCallbackHistogram("batch_requests", "Requests per launch.", {}, {1, 4}, [&] { return batches; });
  EXPECT_THAT(r.Render(), HasSubstr("# TYPE pool_allocations_total counter\npool_allocations_total{device=\"0\"} 3\n"));
  allocations = 9;
  batches.cumulative = {2, 5, 7};
  batches.count = 7;
  batches.sum = 30;
  EXPECT_THAT(Lines(r.Render()),
              ::testing::IsSupersetOf({"# TYPE batch_requests histogram", "batch_requests_bucket{le=\"1\"} 2",
                                       "batch_requests_bucket{le=\"4\"} 5", "batch_requests_bucket{le=\"+Inf\"} 7",
                                       "batch_requests_sum 30", "batch_requests_count 7",
                                       "pool_allocations_total{device=\"0\"} 9"}));
}

TEST(MetricsRegistryTest, ConcurrentIncrementsAndObservationsAllCount) {
  MetricsRegistry r;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&r] {
      // Each thread looks the metrics up itself: creation races too.
      Counter& c = r.GetCounter("c_total", "C.", {{"k", "shared"}});
      Histogram& h = r.GetHistogram("h_seconds", "H.", {}, {0.5, 1.5});
      Gauge& g = r.GetGauge("g", "G.");
      for (int i = 0; i < kPerThread; ++i) {
        c.Increment();
        h.Observe(i % 3);  // 0, 1, 2 in turn
        g.Add(1);
        if (i % 1000 == 0) r.Render();  // rendering while writing is safe
      }
    });
  }
  for (std::thread& t : threads) t.join();
  constexpr int kTotal = kThreads * kPerThread;
  EXPECT_EQ(r.GetCounter("c_total", "C.", {{"k", "shared"}}).Value(), kTotal);
  EXPECT_EQ(r.GetGauge("g", "G.").Value(), kTotal);
  const Histogram::Snapshot s = r.GetHistogram("h_seconds", "H.", {}, {0.5, 1.5}).Read();
  EXPECT_EQ(s.count, static_cast<uint64_t>(kTotal));
  // Values 0,1,2 cycle: bucket le=0.5 holds the zeros, le=1.5 the zeros and ones.
  int zeros = 0, ones = 0;
  for (int i = 0; i < kPerThread; ++i) {
    if (i % 3 == 0) ++zeros;
    if (i % 3 == 1) ++ones;
  }
  EXPECT_THAT(s.cumulative, ElementsAre(uint64_t(zeros) * kThreads, uint64_t(zeros + ones) * kThreads, kTotal));
  EXPECT_EQ(s.sum, static_cast<double>(kThreads) * (ones + 2.0 * (kPerThread - zeros - ones)));
}

TEST(MetricsRegistryDeathTest, MisuseAbortsWithAMessage) {
  EXPECT_DEATH(
      {
        MetricsRegistry r;
        r.GetCounter("m", "M.");
        r.GetGauge("m", "M.");
      },
      "registered with two types");
  EXPECT_DEATH(
      {
        MetricsRegistry r;
        r.GetCounter("bad-name", "M.");
      },
      "invalid metric name");
  EXPECT_DEATH(
      {
        MetricsRegistry r;
        r.GetHistogram("h", "H.", {{"le", "1"}}, {1});
      },
      "invalid label name");
  EXPECT_DEATH(
      {
        MetricsRegistry r;
        r.GetHistogram("h", "H.", {}, {1, 2});
        r.GetHistogram("h", "H.", {{"a", "b"}}, {1, 3});
      },
      "two sets of buckets");
  EXPECT_DEATH(
      {
        MetricsRegistry r;
        r.AddCallbackCounter("c_total", "C.", {}, [] { return 1.0; });
        r.GetCounter("c_total", "C.");
      },
      "callback counter");
  EXPECT_DEATH(
      {
        MetricsRegistry r;
        r.AddCallbackHistogram("h", "H.", {}, {1, 2}, [] { return Histogram::Snapshot{{1}, 0, 1}; });
        r.Render();
      },
      "wrong number of buckets");
}

}  // namespace
}  // namespace attnd::metrics
