// The shapes every CPU backend accuracy test runs, each in BF16, FP16 and FP32: lengths 1, 17, 127
// and 1000, causal with seqlen_q < and > seqlen_k (rows that see no key), GQA and MQA, packed
// varlen with uneven and empty sequences, head_dims 1, 3, 40, 64, 256, a custom scale. Long
// sequences get few heads: the float64 oracle is O(N^2 d) on one thread.
#pragma once

#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/backends/attention_case.h"

namespace attnd::testing {

inline std::vector<AttentionCase> CpuBackendCases() {
  std::vector<AttentionCase> c;
  auto dense = [&](std::string name, int batch, int sq, int sk, int hq, int hkv, int d, bool causal,
                   float scale = 0.f) {
    c.push_back({std::move(name), std::vector<int>(batch, sq), std::vector<int>(batch, sk), hq, hkv, d,
                 causal, false, scale});
  };
  auto packed = [&](std::string name, std::vector<int> sq, std::vector<int> sk, int hq, int hkv, int d,
                    bool causal) {
    c.push_back({std::move(name), std::move(sq), std::move(sk), hq, hkv, d, causal, true, 0.f});
  };
  dense("len1", 2, 1, 1, 4, 4, 64, false);
  dense("len1_causal_gqa", 2, 1, 1, 2, 1, 64, true);
  dense("len17_mqa_d3_causal", 1, 17, 17, 3, 1, 3, true);
  dense("len17_d1", 2, 17, 17, 2, 2, 1, false);
  dense("len127_gqa", 1, 127, 127, 4, 2, 64, false);
  dense("len127_causal", 2, 127, 127, 2, 2, 64, true);
  dense("len1000_gqa", 1, 1000, 1000, 2, 1, 64, false);
  dense("len1000_gqa_causal", 1, 1000, 1000, 2, 1, 64, true);
  dense("causal_q37_k150_mqa", 2, 37, 150, 4, 1, 32, true);
  dense("causal_q150_k37", 1, 150, 37, 2, 1, 32, true);
  // seqlen_k - seqlen_q = 1: the row that first sees key tile 1 (row 63) ends query tile 0.
  dense("causal_q129_k130", 1, 129, 130, 2, 1, 16, true);
  dense("q200_k130_d128", 1, 200, 130, 2, 2, 128, false);
  dense("d256_causal_q65_k80", 1, 65, 80, 2, 1, 256, true);
  dense("scale2_causal", 1, 70, 70, 2, 1, 48, true, 2.0f);
  dense("scale0p05", 2, 33, 45, 2, 2, 16, false, 0.05f);
  packed("varlen_gqa", {5, 0, 130, 64, 1, 17}, {7, 3, 130, 0, 200, 17}, 4, 2, 40, false);
  packed("varlen_gqa_causal", {5, 0, 130, 64, 1, 17}, {7, 3, 130, 0, 200, 17}, 4, 2, 40, true);
  packed("varlen_d3_causal", {1, 65, 33}, {66, 1, 0}, 3, 3, 3, true);
  return c;
}

using CaseAndDType = std::tuple<AttentionCase, DType>;

inline std::string CaseName(const ::testing::TestParamInfo<CaseAndDType>& info) {
  return std::get<0>(info.param).name + "_" + std::string(DTypeName(std::get<1>(info.param)));
}

inline auto AllCasesAllDTypes() {
  return ::testing::Combine(::testing::ValuesIn(CpuBackendCases()),
                            ::testing::Values(DType::kBF16, DType::kFP16, DType::kFP32));
}

}  // namespace attnd::testing
