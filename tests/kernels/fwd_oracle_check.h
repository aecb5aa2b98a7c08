// What the forward-kernel tests share: a problem description (FwdCase), and one run of FlashFwd on
// fresh random inputs checked against the float64 oracle. Outputs are poisoned with NaN first, so
// an element the kernel failed to write fails the test; lse is checked to 1e-3 absolute.
#pragma once

#include <string>
#include <vector>
#include <ostream>

#include "attnd/kernels/flash_fwd.h"

namespace attnd::testing {

struct FwdCase {
  std::string name;
  kernels::ElementType dtype = kernels::ElementType::kBF16;
  int head_dim = 64;
  std::vector<int> seqlens_q;  // one entry per sequence
  std::vector<int> seqlens_k;
  bool packed = false;         // varlen layout (packed lse); else dense (all lengths equal)
  int heads_q = 2;
  int heads_kv = 2;
  bool causal = false;
  float scale = 0.f;           // 0: 1/sqrt(head_dim)
  double magnitude = 1.0;      // inputs ~ N(0, magnitude^2)
  int pad = 0;                 // extra elements after each head vector (strided tensors)
  kernels::FwdKernel kernel = kernels::FwdKernel::kAuto;
};

// gtest prints parameters in test listings; the name keeps ctest's generated files readable.
void PrintTo(const FwdCase& c, std::ostream* os);

// A dense batch (all sequences seqlen_q x seqlen_k) and a packed varlen batch (4 query heads on 2
// KV heads).
FwdCase Dense(std::string name, kernels::ElementType t, int d, int sq, int sk, bool causal, int batch = 1, int hq = 2,
              int hkv = 2);
FwdCase Packed(std::string name, kernels::ElementType t, int d, std::vector<int> sq, std::vector<int> sk, bool causal);

// Runs the case with c.kernel and checks out and lse against the oracle (gtest assertions; skips
// without a device, or when the forced kernel cannot run the problem on this device).
void CheckForwardAgainstOracle(const FwdCase& c);

}  // namespace attnd::testing
