// The mma.sync (FlashAttention-2) forward kernel against the float64 oracle, on fresh random inputs
// for every feature: element types, head dims, causal or not, odd and unequal lengths, GQA/MQA,
// varlen batches with empty sequences, custom (and negative) scales, strided tensors. The Hopper
// kernel's cases are in flash_fwd_hopper_test.cc; both share fwd_oracle_check.h.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attnd/kernels/flash_fwd.h"
#include "tests/kernels/fwd_oracle_check.h"

namespace attnd::testing {
namespace {

using kernels::ElementType;

class FlashFwdTest : public ::testing::TestWithParam<FwdCase> {};

// The mma.sync kernel, forced (on an sm_90 device the Hopper kernel would take most of these).
TEST_P(FlashFwdTest, MatchesFloat64Oracle) {
  FwdCase c = GetParam();
  c.kernel = kernels::FwdKernel::kMmaSync;
  CheckForwardAgainstOracle(c);
}

// ---- the cases --------------------------------------------------------------------------------

std::vector<FwdCase> AllCases() {
  std::vector<FwdCase> cases;
  const struct { ElementType t; const char* n; } types[] = {
      {ElementType::kBF16, "bf16"}, {ElementType::kFP16, "fp16"}, {ElementType::kFP32, "fp32"}};
  // Every element type x head dim x causal, on a length that is no multiple of any tile.
  for (const auto& [t, tn] : types)
    for (int d : {32, 64, 96, 128, 256})
      for (bool causal : {false, true})
        cases.push_back(Dense(std::string(tn) + "_d" + std::to_string(d) + (causal ? "_causal" : "") + "_s1000", t, d,
                              1000, 1000, causal));
  // Odd lengths, including a single token and one long sequence (one head keeps the oracle cheap).
  for (int s : {1, 17})
    for (bool causal : {false, true})
      for (int d : {64, 128})
        cases.push_back(Dense("bf16_d" + std::to_string(d) + (causal ? "_causal" : "") + "_s" + std::to_string(s),
                              ElementType::kBF16, d, s, s, causal, /*batch=*/3));
  for (bool causal : {false, true}) {
    cases.push_back(Dense(std::string("bf16_d128_s4097") + (causal ? "_causal" : ""), ElementType::kBF16, 128, 4097,
                          4097, causal, 1, 1, 1));
    cases.push_back(Dense(std::string("fp16_d64_s4097") + (causal ? "_causal" : ""), ElementType::kFP16, 64, 4097,
                          4097, causal, 1, 1, 1));
  }
  // seqlen_q != seqlen_k, causal aligned bottom-right; q longer than k leaves rows that see nothing.
  for (int d : {64, 128}) {
    const std::string ds = "_d" + std::to_string(d);
    cases.push_back(Dense("bf16" + ds + "_causal_q300_k1000", ElementType::kBF16, d, 300, 1000, true, 2));
    cases.push_back(Dense("bf16" + ds + "_causal_q1000_k300", ElementType::kBF16, d, 1000, 300, true, 2));
    cases.push_back(Dense("fp16" + ds + "_q77_k1000", ElementType::kFP16, d, 77, 1000, false, 2));
    cases.push_back(Dense("fp16" + ds + "_causal_q1000_k17", ElementType::kFP16, d, 1000, 17, true, 1));
    cases.push_back(Dense("bf16" + ds + "_causal_q1_k500", ElementType::kBF16, d, 1, 500, true, 4));
  }
  // GQA (4 query heads per KV head) and MQA (one KV head).
  for (bool causal : {false, true}) {
    const std::string cs = causal ? "_causal" : "";
    cases.push_back(Dense("bf16_d128_gqa8to2" + cs, ElementType::kBF16, 128, 333, 333, causal, 2, 8, 2));
    cases.push_back(Dense("fp16_d64_mqa6to1" + cs, ElementType::kFP16, 64, 333, 400, causal, 2, 6, 1));
    cases.push_back(Dense("fp32_d128_gqa4to2" + cs, ElementType::kFP32, 128, 200, 200, causal, 1, 4, 2));
  }
  // Varlen batches with uneven lengths, an empty query sequence and an empty key sequence.
  for (bool causal : {false, true}) {
    const std::string cs = causal ? "_causal" : "";
    const std::vector<int> sq = {5, 0, 300, 129, 1, 40}, sk = {7, 3, 300, 64, 0, 200};
    cases.push_back(Packed("bf16_d128_varlen" + cs, ElementType::kBF16, 128, sq, sk, causal));
    cases.push_back(Packed("fp16_d64_varlen" + cs, ElementType::kFP16, 64, sq, sk, causal));
    cases.push_back(Packed("fp32_d64_varlen" + cs, ElementType::kFP32, 64, sq, sk, causal));
    cases.push_back(Packed("bf16_d256_varlen" + cs, ElementType::kBF16, 256, sq, sk, causal));
    cases.push_back(Packed("fp16_d32_varlen" + cs, ElementType::kFP16, 32, sq, sk, causal));
    cases.push_back(Packed("bf16_d96_varlen" + cs, ElementType::kBF16, 96, sq, sk, causal));
  }
  // Custom scales, a negative one included.
  for (float scale : {0.5f, 0.02f, -0.1f}) {
    for (ElementType t : {ElementType::kBF16, ElementType::kFP32}) {
      FwdCase c = Dense(std::string(t == ElementType::kBF16 ? "bf16" : "fp32") + "_d64_scale" +
                            (scale < 0 ? "_neg" : "_") + std::to_string(int(std::fabs(scale) * 100)),
                        t, 64, 300, 300, scale > 0.1f);
      c.scale = scale;
      cases.push_back(c);
    }
  }
  // FP32 inputs far outside FP16's range (and far below its normal range): the power-of-two scaling.
  for (double m : {3e5, 1e-6}) {
    FwdCase c = Dense(std::string("fp32_d128_magnitude_") + (m > 1 ? "3e5" : "1em6"), ElementType::kFP32, 128, 257,
                      257, true);
    c.magnitude = m;
    c.scale = static_cast<float>(1.0 / (m * m * std::sqrt(128.0)));  // keeps the softmax non-degenerate
    cases.push_back(c);
  }
  // Strided tensors: head vectors padded by 8 elements.
  for (ElementType t : {ElementType::kBF16, ElementType::kFP32}) {
    FwdCase c = Dense(std::string(t == ElementType::kBF16 ? "bf16" : "fp32") + "_d64_padded_heads", t, 64, 200, 250,
                      true, 2, 4, 2);
    c.pad = 8;
    cases.push_back(c);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Kernels, FlashFwdTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<FwdCase>& info) { return info.param.name; });

TEST(FlashFwdCheckTest, RejectsUnsupportedShapes) {
  kernels::FlashFwdParams p;
  p.batch = 1;
  p.heads_q = 4;
  p.heads_kv = 3;  // does not divide heads_q
  p.head_dim = 64;
  p.softmax_scale = 0.125f;
  kernels::SetContiguousStrides(p);
  EXPECT_EQ(kernels::FlashFwdCheck(p), cudaErrorInvalidValue);
  p.heads_kv = 2;
  EXPECT_EQ(kernels::FlashFwdCheck(p), cudaSuccess);  // no tokens: nothing to check on pointers
  p.head_dim = 48;
  kernels::SetContiguousStrides(p);
  EXPECT_EQ(kernels::FlashFwdCheck(p), cudaErrorInvalidValue);
  p.head_dim = 64;
  p.softmax_scale = 0.f;
  EXPECT_EQ(kernels::FlashFwdCheck(p), cudaErrorInvalidValue);
  p.softmax_scale = std::numeric_limits<float>::infinity();
  EXPECT_EQ(kernels::FlashFwdCheck(p), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace attnd::testing
