// The Hopper (sm_90a: wgmma, TMA, warp-specialised) forward kernel against the float64 oracle, on
// fresh random inputs: both 16-bit types, head dims 64 and 128, causal or not, lengths that are
// no multiple of the 128-row tiles (1, 17, 1000, 4097) and ones that are, causal with seqlen_q !=
// seqlen_k both ways, GQA/MQA, varlen batches with empty query and key sequences (the TMA boxes of
// a sequence's tail read the next sequence's rows: the mask must hide them), strided tensors, and
// logits large enough to move the running maximum often. The cases force FwdKernel::kHopper and
// skip on devices that cannot run it; the dispatch test checks what kAuto picks.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "attnd/kernels/flash_fwd.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/fwd_oracle_check.h"

namespace attnd::testing {
namespace {

using kernels::ElementType;
using kernels::FwdKernel;

class FlashFwdHopperTest : public ::testing::TestWithParam<FwdCase> {};

TEST_P(FlashFwdHopperTest, MatchesFloat64Oracle) {
  FwdCase c = GetParam();
  c.kernel = FwdKernel::kHopper;
  CheckForwardAgainstOracle(c);
}

std::string Suffix(int d, bool causal) { return "_d" + std::to_string(d) + (causal ? "_causal" : ""); }

std::vector<FwdCase> HopperCases() {
  std::vector<FwdCase> cases;
  const struct { ElementType t; const char* n; } types[] = {{ElementType::kBF16, "bf16"}, {ElementType::kFP16, "fp16"}};
  for (const auto& [t, tn] : types)
    for (int d : {64, 128})
      for (bool causal : {false, true}) {
        const std::string name = tn + Suffix(d, causal);
        cases.push_back(Dense(name + "_s1000", t, d, 1000, 1000, causal));
        cases.push_back(Dense(name + "_s1", t, d, 1, 1, causal, /*batch=*/3));
        cases.push_back(Dense(name + "_s17", t, d, 17, 17, causal, /*batch=*/3));
        cases.push_back(Dense(name + "_s256", t, d, 256, 256, causal, /*batch=*/2));  // whole tiles only
        cases.push_back(Dense(name + "_s129", t, d, 129, 129, causal, /*batch=*/2));
      }
  for (bool causal : {false, true}) {
    cases.push_back(Dense("bf16" + Suffix(128, causal) + "_s4097", ElementType::kBF16, 128, 4097, 4097, causal, 1, 1, 1));
    cases.push_back(Dense("fp16" + Suffix(64, causal) + "_s4097", ElementType::kFP16, 64, 4097, 4097, causal, 1, 1, 1));
  }
  // seqlen_q != seqlen_k, causal aligned bottom-right; q longer than k leaves rows that see nothing.
  for (int d : {64, 128}) {
    cases.push_back(Dense("bf16" + Suffix(d, true) + "_q300_k1000", ElementType::kBF16, d, 300, 1000, true, 2));
    cases.push_back(Dense("bf16" + Suffix(d, true) + "_q1000_k300", ElementType::kBF16, d, 1000, 300, true, 2));
    cases.push_back(Dense("fp16" + Suffix(d, false) + "_q77_k1000", ElementType::kFP16, d, 77, 1000, false, 2));
    cases.push_back(Dense("fp16" + Suffix(d, true) + "_q1000_k17", ElementType::kFP16, d, 1000, 17, true, 1));
    cases.push_back(Dense("bf16" + Suffix(d, true) + "_q1_k500", ElementType::kBF16, d, 1, 500, true, 4));
    cases.push_back(Dense("bf16" + Suffix(d, false) + "_q500_k1", ElementType::kBF16, d, 500, 1, false, 2));
  }
  // GQA (4 query heads per KV head) and MQA (one KV head).
  for (bool causal : {false, true}) {
    cases.push_back(Dense("bf16" + Suffix(128, causal) + "_gqa8to2", ElementType::kBF16, 128, 333, 333, causal, 2, 8, 2));
    cases.push_back(Dense("fp16" + Suffix(64, causal) + "_mqa6to1", ElementType::kFP16, 64, 333, 400, causal, 2, 6, 1));
  }
  // Varlen batches: uneven lengths, several tiles long, with empty query and key sequences.
  for (bool causal : {false, true}) {
    const std::vector<int> sq = {5, 0, 300, 129, 1, 40}, sk = {7, 3, 300, 64, 0, 200};
    const std::vector<int> long_q = {1000, 0, 129, 1, 700, 255}, long_k = {1000, 3, 513, 0, 128, 257};
    cases.push_back(Packed("bf16" + Suffix(128, causal) + "_varlen", ElementType::kBF16, 128, sq, sk, causal));
    cases.push_back(Packed("fp16" + Suffix(64, causal) + "_varlen", ElementType::kFP16, 64, sq, sk, causal));
    cases.push_back(Packed("bf16" + Suffix(64, causal) + "_varlen_long", ElementType::kBF16, 64, long_q, long_k, causal));
    cases.push_back(Packed("fp16" + Suffix(128, causal) + "_varlen_long", ElementType::kFP16, 128, long_q, long_k, causal));
  }
  // Strided tensors: head vectors padded by 8 elements.
  for (int d : {64, 128}) {
    FwdCase c = Dense("bf16" + Suffix(d, true) + "_padded_heads", ElementType::kBF16, d, 200, 250, true, 2, 4, 2);
    c.pad = 8;
    cases.push_back(c);
  }
  // Large logits (the running maximum moves by more than 2^8 often; P and O get rescaled) and a
  // small scale (nearly uniform softmax).
  for (int d : {64, 128}) {
    FwdCase big = Dense("bf16" + Suffix(d, false) + "_magnitude3", ElementType::kBF16, d, 700, 700, false, 1, 2, 2);
    big.magnitude = 3.0;
    cases.push_back(big);
    FwdCase sharp = Dense("fp16" + Suffix(d, true) + "_scale_0_5", ElementType::kFP16, d, 600, 600, true, 1, 2, 2);
    sharp.scale = 0.5f;
    cases.push_back(sharp);
    FwdCase flat = Dense("bf16" + Suffix(d, false) + "_scale_0_02", ElementType::kBF16, d, 300, 300, false, 1, 2, 2);
    flat.scale = 0.02f;
    cases.push_back(flat);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Kernels, FlashFwdHopperTest, ::testing::ValuesIn(HopperCases()),
                         [](const ::testing::TestParamInfo<FwdCase>& info) { return info.param.name; });

// kAuto takes the Hopper kernel exactly where it applies (sm_90, BF16/FP16, d 64/128, positive
// scale) and the mma.sync kernel elsewhere; a forced kHopper that cannot run reports kAuto.
TEST(FlashFwdDispatchTest, AutoPicksHopperOnlyWhereItApplies) {
  if (!HaveCudaDevice()) GTEST_SKIP() << "no CUDA device";
  int device = 0, major = 0, minor = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), cudaSuccess);
  const bool sm90 = major == 9 && minor == 0;

  kernels::FlashFwdParams p;
  p.dtype = ElementType::kBF16;
  p.batch = 1;
  p.heads_q = p.heads_kv = 2;
  p.head_dim = 128;
  p.softmax_scale = 0.125f;
  kernels::SetContiguousStrides(p);
  EXPECT_EQ(kernels::FlashFwdSelectKernel(p), sm90 ? FwdKernel::kHopper : FwdKernel::kMmaSync);
  p.kernel = FwdKernel::kMmaSync;
  EXPECT_EQ(kernels::FlashFwdSelectKernel(p), FwdKernel::kMmaSync);
  p.kernel = FwdKernel::kHopper;
  EXPECT_EQ(kernels::FlashFwdSelectKernel(p), sm90 ? FwdKernel::kHopper : FwdKernel::kAuto);

  p.kernel = FwdKernel::kAuto;
  for (auto change : {+[](kernels::FlashFwdParams& q) { q.dtype = ElementType::kFP32; },
                      +[](kernels::FlashFwdParams& q) { q.head_dim = 96; },
                      +[](kernels::FlashFwdParams& q) { q.softmax_scale = -0.125f; }}) {
    kernels::FlashFwdParams q = p;
    change(q);
    EXPECT_EQ(kernels::FlashFwdSelectKernel(q), FwdKernel::kMmaSync);
    q.kernel = FwdKernel::kHopper;
    EXPECT_EQ(kernels::FlashFwdSelectKernel(q), FwdKernel::kAuto);
  }
}

}  // namespace
}  // namespace attnd::testing
