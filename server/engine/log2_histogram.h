// Log2Histogram: a fixed-size histogram of non-negative integers with power-of-two buckets, cheap
// enough to update on every request under a lock and small enough to copy into a stats snapshot.
// Bucket 0 holds values <= 1, bucket i (i >= 1) holds 2^(i-1) < v <= 2^i; the last bucket also
// takes everything larger.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

namespace attnd::engine {

class Log2Histogram {
 public:
  static constexpr int kBuckets = 40;  // up to 2^39: microseconds for 6 days, tokens, requests

  void Add(int64_t v) {
    v = std::max<int64_t>(v, 0);
    int bucket = 0;
    while (bucket < kBuckets - 1 && (int64_t{1} << bucket) < v) ++bucket;
    ++counts_[bucket];
    ++count_;
    sum_ += v;
    max_ = std::max(max_, v);
  }

  // Adds every sample of `other` (e.g. the histograms of several devices' batchers).
  void Merge(const Log2Histogram& other) {
    for (int i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  int64_t count() const { return count_; }
  int64_t sum() const { return sum_; }
  int64_t max() const { return max_; }
  double mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / count_; }
  int64_t bucket_count(int i) const { return counts_[i]; }
  static int64_t bucket_upper_bound(int i) { return int64_t{1} << i; }

  // Upper bound of the bucket holding the q-quantile (0 <= q <= 1), capped at max(); 0 when empty.
  int64_t Quantile(double q) const {
    if (count_ == 0) return 0;
    const double target = q * count_;
    int64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= target && seen > 0) return std::min(bucket_upper_bound(i), max_);
    }
    return max_;
  }

 private:
  std::array<int64_t, kBuckets> counts_{};
  int64_t count_ = 0;
  int64_t sum_ = 0;
  int64_t max_ = 0;
};

}  // namespace attnd::engine
