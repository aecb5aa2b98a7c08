// Element-wise and row helpers for the softmax, written so that the compiler vectorizes them
// without -ffast-math: a branch-free exp2 and lane-split reductions whose order is fixed (so
// results are bit-reproducible, independent of which thread or tile split computed them).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "server/backends/cpu/cpu_isa.h"

namespace attnd::cpu {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;
inline constexpr float kInf = std::numeric_limits<float>::infinity();

// 2^x for x <= 127 (softmax exponents are scores minus their max, so <= 0), 0 below 2^-126.
// 2^x = 2^n * 2^f with n = round(x), |f| <= 1/2; 2^f by its degree-7 Taylor polynomial
// (relative error < 1e-8, under float rounding). Round-to-nearest uses the 1.5 * 2^23 trick, which
// needs no SSE4.1 and is exact for |x| < 2^22.
ATTND_ALWAYS_INLINE float Exp2(float x) {
  // -inf (a row with lse = +inf) underflows to 0; NaN stays NaN, so bad inputs show in the output.
  // xc is always finite: converting NaN to int is undefined (and compilers do exploit it).
  const bool underflow = x < -126.f;
  const bool nan = x != x;
  const float xc = x >= -126.f ? (x < 127.f ? x : 127.f) : -126.f;
  const float n = (xc + 12582912.f) - 12582912.f;
  const float f = xc - n;
  float p = 1.5252733804059840e-5f;  // ln2^7 / 7!
  p = p * f + 1.5403530393381609e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflow ? 0.f : (nan ? x : p * scale);
}

inline constexpr int kReductionLanes = 16;

// max(x[0..n)), n >= 1.
ATTND_ALWAYS_INLINE float RowMax(const float* __restrict x, int n) {
  float lane[kReductionLanes];
  for (int l = 0; l < kReductionLanes; ++l) lane[l] = -kInf;
  int j = 0;
  for (; j + kReductionLanes <= n; j += kReductionLanes) {
    for (int l = 0; l < kReductionLanes; ++l) lane[l] = x[j + l] > lane[l] ? x[j + l] : lane[l];
  }
  float m = -kInf;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  for (int l = 0; l < kReductionLanes; ++l) m = lane[l] > m ? lane[l] : m;
  return m;
}

// sum(x[0..n)) in a fixed order: 16 interleaved partial sums, then the tail, then the lanes.
ATTND_ALWAYS_INLINE float RowSum(const float* __restrict x, int n) {
  float lane[kReductionLanes] = {};
  int j = 0;
  for (; j + kReductionLanes <= n; j += kReductionLanes) {
    for (int l = 0; l < kReductionLanes; ++l) lane[l] += x[j + l];
  }
  float s = 0.f;
  for (; j < n; ++j) s += x[j];
  for (int l = 0; l < kReductionLanes; ++l) s += lane[l];
  return s;
}

// sum(x[i] * y[i]) in the same fixed order as RowSum.
ATTND_ALWAYS_INLINE float RowDot(const float* __restrict x, const float* __restrict y, int n) {
  float lane[kReductionLanes] = {};
  int j = 0;
  for (; j + kReductionLanes <= n; j += kReductionLanes) {
    for (int l = 0; l < kReductionLanes; ++l) lane[l] += x[j + l] * y[j + l];
  }
  float s = 0.f;
  for (; j < n; ++j) s += x[j] * y[j];
  for (int l = 0; l < kReductionLanes; ++l) s += lane[l];
  return s;
}

}  // namespace attnd::cpu
