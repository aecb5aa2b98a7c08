// Helpers shared by the CPU backend tests: random inputs rounded to a dtype (so the float64 oracle
// sees exactly the values the backend sees), NaN-poisoned output buffers, and comparisons.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/core/attention_problem.h"
#include "server/core/float16.h"

namespace attnd::testing {

// A tensor as the backend sees it (bytes in `dtype`) and as the oracle sees it (the same values
// in double).
struct HostTensor {
  DType dtype = DType::kFP32;
  std::vector<uint8_t> bytes;
  std::vector<double> values;
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
};

inline double DecodeElement(DType t, const uint8_t* p) {
  uint16_t h;
  float f;
  switch (t) {
    case DType::kBF16: std::memcpy(&h, p, 2); return Bf16ToFloat(h);
    case DType::kFP16: std::memcpy(&h, p, 2); return Fp16ToFloat(h);
    case DType::kFP32: std::memcpy(&f, p, 4); return f;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

inline void EncodeElement(DType t, double v, uint8_t* p) {
  const float f = static_cast<float>(v);
  uint16_t h;
  switch (t) {
    case DType::kBF16: h = FloatToBf16(f); std::memcpy(p, &h, 2); return;
    case DType::kFP16: h = FloatToFp16(f); std::memcpy(p, &h, 2); return;
    case DType::kFP32: std::memcpy(p, &f, 4); return;
  }
}

// `values` rounded to `dtype`; .values holds the rounded numbers.
inline HostTensor Encode(DType t, const std::vector<double>& values) {
  HostTensor x;
  x.dtype = t;
  x.bytes.resize(values.size() * ElementSize(t));
  x.values.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EncodeElement(t, values[i], &x.bytes[i * ElementSize(t)]);
    x.values[i] = DecodeElement(t, &x.bytes[i * ElementSize(t)]);
  }
  return x;
}

// N(0, 1) samples, none exactly zero, rounded to `dtype`.
inline HostTensor RandomTensor(DType t, int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) {
    do x = normal(rng); while (std::fabs(x) < 1e-3);
  }
  return Encode(t, v);
}

// An output buffer of n elements, every one NaN, so that an element the backend skips shows.
inline HostTensor PoisonedTensor(DType t, int64_t n) {
  return Encode(t, std::vector<double>(static_cast<size_t>(n), std::numeric_limits<double>::quiet_NaN()));
}

inline std::vector<double> Decode(const HostTensor& x) {
  std::vector<double> v(x.bytes.size() / ElementSize(x.dtype));
  for (size_t i = 0; i < v.size(); ++i) v[i] = DecodeElement(x.dtype, &x.bytes[i * ElementSize(x.dtype)]);
  return v;
}

// Counts non-finite elements (a NaN left means an element never written).
inline int64_t CountNonFinite(const std::vector<double>& v) {
  int64_t n = 0;
  for (double x : v) n += !std::isfinite(x);
  return n;
}

// Fresh, logged seed per case: rerun a failure with the printed seed.
inline uint64_t FreshSeed() {
  const uint64_t seed = std::random_device{}() * 0x9e3779b97f4a7c15ull ^ std::random_device{}();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

// Relative L2 error tolerated per dtype for out and the gradients (inputs already rounded).
inline double RelTolerance(DType t) {
  switch (t) {
    case DType::kBF16: return 1e-2;
    case DType::kFP16: return 2e-3;
    case DType::kFP32: return 1e-5;
  }
  return 0;
}

// Error tolerated on a logsumexp of magnitude |lse|: absolute, plus a relative part because an
// FP32 score (and so the lse) is exact only to a few ulps of its own size (at lse = 49 one ulp is
// 3.8e-6, and a 1e-5 absolute bound fails on correct results).
inline double LseTolerance(DType t, double lse) {
  return (t == DType::kFP32 ? 1e-5 : 1e-3) + 1e-6 * std::fabs(lse);
}

// The lse buffer length of a shape (dense: [batch, heads_q, max_seqlen_q]; packed: [heads_q, total_q]).
inline int64_t LseLength(const AttentionShape& s) {
  return s.packed ? s.lse_elements() : int64_t{s.batch} * s.heads_q * s.max_seqlen_q;
}

// Every lse element within LseTolerance of the oracle's; +inf (a row that sees no key) exactly
// where the oracle has +inf. Returns the number of mismatches (first few reported).
inline int64_t CompareLse(const std::vector<float>& got, const std::vector<double>& want, DType t) {
  int64_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const bool ok = std::isinf(want[i]) ? (std::isinf(got[i]) && got[i] > 0)
                                        : (std::isfinite(got[i]) &&
                                           std::fabs(got[i] - want[i]) <= LseTolerance(t, want[i]));
    if (!ok && bad++ < 5) ADD_FAILURE() << "lse[" << i << "] = " << got[i] << ", oracle " << want[i];
  }
  return bad;
}

// ||got - want|| / max(||want||, 10% of the problem's gradient scale): the relative L2 error of a
// gradient, except that a gradient which is exactly zero in exact arithmetic (one visible key per
// query makes dQ and dK vanish: dS = P (dP - D) = 0) is compared with the size the problem's
// gradients have (`scale_rms` per element, e.g. the RMS of dV = P^T dO, which never cancels)
// instead of with 0, which no rounding could meet. dP - D cancels terms of size |dP| ~ sqrt(d),
// larger than dV, hence 10%: FP32 then leaves ~2e-6 of the 1e-5 budget on the zero gradients.
inline double GradientError(const std::vector<double>& got, const std::vector<double>& want, double scale_rms) {
  double num = 0, den = 0;
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  const double floor = 0.1 * scale_rms * std::sqrt(double(want.size()));
  const double d = std::max(std::sqrt(den), floor);
  return d == 0 ? (num == 0 ? 0 : std::numeric_limits<double>::infinity()) : std::sqrt(num) / d;
}

inline double Rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0 : std::sqrt(s / double(v.size()));
}

}  // namespace attnd::testing
