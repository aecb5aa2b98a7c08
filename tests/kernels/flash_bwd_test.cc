// GPU tests of the FlashAttention backward kernel (kernels/include/attnd/kernels/flash_bwd.h)
// against the float64 oracle's gradients (tests/support/reference_attention.h).
//
// Every case draws fresh random inputs (the seed is printed), rounds them to the element type (so
// the oracle and the kernel see the same inputs), computes the forward's out and lse with the
// oracle (out rounded like a 16-bit forward would write it), poisons the gradients and the
// workspace with NaN bytes, runs FlashBwd and checks: no NaN (every element written), relative
// L2 error of dQ, dK, dV within 2e-2 (bf16) / 5e-3 (fp16, and the FP32 path), and exact zeros
// where the math says zero (query rows that see no key, keys that no query sees).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attnd/kernels/flash_bwd.h"
#include "server/core/attention_problem.h"
#include "server/core/float16.h"
#include "tests/support/reference_attention.h"

namespace attnd {
namespace {

using kernels::ElementType;
using kernels::FlashBwdParams;

#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// Owns one cudaMalloc allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_ != nullptr) cudaFree(ptr_);
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
    }
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  bool ok() const { return bytes_ == 0 || ptr_ != nullptr; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

size_t ElementBytes(ElementType t) { return t == ElementType::kFP32 ? 4 : 2; }
const char* Name(ElementType t) { return t == ElementType::kBF16 ? "bf16" : t == ElementType::kFP16 ? "fp16" : "fp32"; }

// Rounds x to the element type (the value the kernel will see).
double RoundTo(ElementType t, double x) {
  switch (t) {
    case ElementType::kBF16: return Bf16ToFloat(FloatToBf16(static_cast<float>(x)));
    case ElementType::kFP16: return Fp16ToFloat(FloatToFp16(static_cast<float>(x)));
    case ElementType::kFP32: return static_cast<float>(x);
  }
  return x;
}

std::vector<uint8_t> Encode(ElementType t, const std::vector<double>& x) {
  std::vector<uint8_t> bytes(x.size() * ElementBytes(t));
  for (size_t i = 0; i < x.size(); ++i) {
    if (t == ElementType::kFP32) {
      const float f = static_cast<float>(x[i]);
      std::memcpy(&bytes[4 * i], &f, 4);
    } else {
      const uint16_t h = t == ElementType::kBF16 ? FloatToBf16(static_cast<float>(x[i])) : FloatToFp16(static_cast<float>(x[i]));
      std::memcpy(&bytes[2 * i], &h, 2);
    }
  }
  return bytes;
}

std::vector<double> Decode(ElementType t, const std::vector<uint8_t>& bytes) {
  std::vector<double> x(bytes.size() / ElementBytes(t));
  for (size_t i = 0; i < x.size(); ++i) {
    if (t == ElementType::kFP32) {
      float f;
      std::memcpy(&f, &bytes[4 * i], 4);
      x[i] = f;
    } else {
      uint16_t h;
      std::memcpy(&h, &bytes[2 * i], 2);
      x[i] = t == ElementType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
    }
  }
  return x;
}

double Tolerance(ElementType t) { return t == ElementType::kBF16 ? 2e-2 : 5e-3; }

// ||a - ref|| / ||ref||, with ||ref|| floored at 1e-3 * sqrt(n): some shapes have an exactly zero
// gradient (one key per query: P = 1, so dS = dP - D = 0 and dQ = dK = 0), where the kernel's
// rounding residue (1e-7 here) must not count as an infinite relative error. Gradients of these
// unit-variance inputs are O(1) per element, so the floor does not loosen any other case.
double GradError(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < ref.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  if (a.size() != ref.size()) return INFINITY;
  den = std::max(den, 1e-6 * double(ref.size()));
  return ref.empty() ? 0.0 : std::sqrt(num / den);
}

struct Case {
  AttentionShape shape;
  AttentionOptions options;
  ElementType dtype = ElementType::kBF16;
  double input_scale = 1.0;  // standard deviation of q, k, v, dO
};

// Host side of one problem: rounded inputs, the oracle's forward (out rounded to the element type,
// lse in FP32) and the oracle's gradients.
struct HostProblem {
  std::vector<double> q, k, v, dout, out;
  std::vector<float> lse;
  testing::ReferenceBackward ref;
};

HostProblem MakeProblem(const Case& c, uint32_t seed, bool with_reference = true) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, c.input_scale);
  HostProblem p;
  auto fill = [&](std::vector<double>& x, int64_t n) {
    x.resize(size_t(n));
    for (double& e : x) e = RoundTo(c.dtype, normal(rng));
  };
  fill(p.q, c.shape.q_elements());
  fill(p.k, c.shape.kv_elements());
  fill(p.v, c.shape.kv_elements());
  fill(p.dout, c.shape.q_elements());
  const testing::ReferenceForward fwd = testing::ReferenceAttentionForward(c.shape, c.options, p.q, p.k, p.v);
  p.out.resize(fwd.out.size());
  for (size_t i = 0; i < fwd.out.size(); ++i) p.out[i] = RoundTo(c.dtype, fwd.out[i]);
  p.lse.assign(fwd.lse.begin(), fwd.lse.end());
  if (with_reference) p.ref = testing::ReferenceAttentionBackward(c.shape, c.options, p.q, p.k, p.v, p.dout);
  return p;
}

struct Gradients {
  std::vector<uint8_t> dq, dk, dv;  // raw bytes as the kernel wrote them
};

// Uploads, poisons outputs and workspace with 0xff bytes (NaN in every element type), runs
// FlashBwd `runs` times on the same buffers, downloads. Fails the test on any CUDA error.
void RunBackward(const Case& c, const HostProblem& hp, Gradients* result, int runs = 1) {
  const AttentionShape& s = c.shape;
  const size_t eb = ElementBytes(c.dtype);
  auto upload = [&](const std::vector<uint8_t>& bytes, DeviceBuffer& buf) {
    buf = DeviceBuffer(bytes.size());
    ASSERT_TRUE(buf.ok());
    if (!bytes.empty()) CUDA_OK(cudaMemcpy(buf.get(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  };
  DeviceBuffer q, k, v, out, dout, lse, cu_q, cu_k;
  ASSERT_NO_FATAL_FAILURE(upload(Encode(c.dtype, hp.q), q));
  ASSERT_NO_FATAL_FAILURE(upload(Encode(c.dtype, hp.k), k));
  ASSERT_NO_FATAL_FAILURE(upload(Encode(c.dtype, hp.v), v));
  ASSERT_NO_FATAL_FAILURE(upload(Encode(c.dtype, hp.out), out));
  ASSERT_NO_FATAL_FAILURE(upload(Encode(c.dtype, hp.dout), dout));
  std::vector<uint8_t> lse_bytes(hp.lse.size() * 4), cuq(s.cu_seqlens_q.size() * 4), cuk(s.cu_seqlens_k.size() * 4);
  std::memcpy(lse_bytes.data(), hp.lse.data(), lse_bytes.size());
  std::memcpy(cuq.data(), s.cu_seqlens_q.data(), cuq.size());
  std::memcpy(cuk.data(), s.cu_seqlens_k.data(), cuk.size());
  ASSERT_NO_FATAL_FAILURE(upload(lse_bytes, lse));
  ASSERT_NO_FATAL_FAILURE(upload(cuq, cu_q));
  ASSERT_NO_FATAL_FAILURE(upload(cuk, cu_k));
  DeviceBuffer dq(size_t(s.q_elements()) * eb), dk(size_t(s.kv_elements()) * eb), dv(size_t(s.kv_elements()) * eb);
  ASSERT_TRUE(dq.ok() && dk.ok() && dv.ok());

  FlashBwdParams p;
  p.dtype = c.dtype;
  p.q = q.get();
  p.k = k.get();
  p.v = v.get();
  p.out = out.get();
  p.grad_out = dout.get();
  p.lse = static_cast<const float*>(lse.get());
  p.cu_seqlens_q = static_cast<const int32_t*>(cu_q.get());
  p.cu_seqlens_k = static_cast<const int32_t*>(cu_k.get());
  p.grad_q = dq.get();
  p.grad_k = dk.get();
  p.grad_v = dv.get();
  p.batch = s.batch;
  p.heads_q = s.heads_q;
  p.heads_kv = s.heads_kv;
  p.head_dim = s.head_dim;
  p.max_seqlen_q = s.max_seqlen_q;
  p.max_seqlen_k = s.max_seqlen_k;
  p.total_q = s.total_q;
  p.total_k = s.total_k;
  p.lse_packed = s.packed;
  p.causal = c.options.causal;
  p.softmax_scale = c.options.softmax_scale;
  p.deterministic = c.options.deterministic;
  kernels::SetContiguousStrides(p);
  ASSERT_EQ(kernels::FlashBwdCheck(p), cudaSuccess);
  DeviceBuffer ws(std::max<size_t>(kernels::FlashBwdWorkspaceBytes(p), 256));
  ASSERT_TRUE(ws.ok());

  for (int r = 0; r < runs; ++r) {
    CUDA_OK(cudaMemset(dq.get(), 0xff, dq.bytes()));
    CUDA_OK(cudaMemset(dk.get(), 0xff, dk.bytes()));
    CUDA_OK(cudaMemset(dv.get(), 0xff, dv.bytes()));
    CUDA_OK(cudaMemset(ws.get(), 0xff, ws.bytes()));
    CUDA_OK(kernels::FlashBwd(p, ws.get(), nullptr));
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaDeviceSynchronize());
  }
  result->dq.resize(dq.bytes());
  result->dk.resize(dk.bytes());
  result->dv.resize(dv.bytes());
  if (dq.bytes()) CUDA_OK(cudaMemcpy(result->dq.data(), dq.get(), dq.bytes(), cudaMemcpyDeviceToHost));
  if (dk.bytes()) CUDA_OK(cudaMemcpy(result->dk.data(), dk.get(), dk.bytes(), cudaMemcpyDeviceToHost));
  if (dv.bytes()) CUDA_OK(cudaMemcpy(result->dv.data(), dv.get(), dv.bytes(), cudaMemcpyDeviceToHost));
}

size_t CountNaN(const std::vector<double>& x) {
  size_t n = 0;
  for (double e : x) n += std::isnan(e) ? 1 : 0;
  return n;
}

// Query rows (b, i) that see no key, and key rows that no query sees, must have exactly zero
// gradients.
void ExpectExactZeros(const Case& c, const std::vector<double>& dq, const std::vector<double>& dk,
                      const std::vector<double>& dv) {
  const AttentionShape& s = c.shape;
  const int64_t qrow = int64_t{s.heads_q} * s.head_dim, krow = int64_t{s.heads_kv} * s.head_dim;
  for (int b = 0; b < s.batch; ++b) {
    const int sq = s.seqlen_q(b), sk = s.seqlen_k(b);
    for (int i = 0; i < sq; ++i) {
      const bool blind = sk == 0 || (c.options.causal && i + sk - sq < 0);
      if (!blind) continue;
      for (int64_t e = 0; e < qrow; ++e) ASSERT_EQ(dq[size_t((s.cu_seqlens_q[b] + i) * qrow + e)], 0.0) << "b=" << b << " i=" << i;
    }
    if (sq == 0) {
      for (int j = 0; j < sk; ++j)
        for (int64_t e = 0; e < krow; ++e) {
          ASSERT_EQ(dk[size_t((s.cu_seqlens_k[b] + j) * krow + e)], 0.0) << "b=" << b << " j=" << j;
          ASSERT_EQ(dv[size_t((s.cu_seqlens_k[b] + j) * krow + e)], 0.0) << "b=" << b << " j=" << j;
        }
    }
  }
}

uint32_t FreshSeed() { return std::random_device{}(); }

// The whole check of one case.
void CheckAgainstOracle(const Case& c) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", " + Name(c.dtype) + ", d=" + std::to_string(c.shape.head_dim) +
               (c.options.causal ? ", causal" : "") + (c.options.deterministic ? ", deterministic" : ""));
  const HostProblem hp = MakeProblem(c, seed);
  Gradients g;
  ASSERT_NO_FATAL_FAILURE(RunBackward(c, hp, &g));
  const std::vector<double> dq = Decode(c.dtype, g.dq), dk = Decode(c.dtype, g.dk), dv = Decode(c.dtype, g.dv);
  EXPECT_EQ(CountNaN(dq), 0u) << "dQ has NaN (unwritten or wrong)";
  EXPECT_EQ(CountNaN(dk), 0u) << "dK has NaN (unwritten or wrong)";
  EXPECT_EQ(CountNaN(dv), 0u) << "dV has NaN (unwritten or wrong)";
  const double tol = Tolerance(c.dtype);
  const double eq = GradError(dq, hp.ref.grad_q);
  const double ek = GradError(dk, hp.ref.grad_k);
  const double ev = GradError(dv, hp.ref.grad_v);
  EXPECT_LE(eq, tol) << "dQ";
  EXPECT_LE(ek, tol) << "dK";
  EXPECT_LE(ev, tol) << "dV";
  std::printf("  [%s d=%d hq=%d hkv=%d b=%d maxq=%d maxk=%d%s%s] rel L2: dQ %.2e dK %.2e dV %.2e\n", Name(c.dtype),
              c.shape.head_dim, c.shape.heads_q, c.shape.heads_kv, c.shape.batch, c.shape.max_seqlen_q,
              c.shape.max_seqlen_k, c.options.causal ? " causal" : "", c.options.deterministic ? " det" : "", eq, ek, ev);
  ExpectExactZeros(c, dq, dk, dv);
}

Case Dense(ElementType t, int d, int batch, int sq, int sk, int hq, int hkv, bool causal, bool det = false) {
  Case c;
  c.shape = DenseShape(batch, sq, sk, hq, hkv, d);
  c.options.causal = causal;
  c.options.softmax_scale = static_cast<float>(1.0 / std::sqrt(double(d)));
  c.options.deterministic = det;
  c.dtype = t;
  return c;
}

Case Packed(ElementType t, int d, const std::vector<int>& lq, const std::vector<int>& lk, int hq, int hkv, bool causal,
            bool det = false) {
  Case c;
  c.shape = PackedShape(lq, lk, hq, hkv, d);
  c.options.causal = causal;
  c.options.softmax_scale = static_cast<float>(1.0 / std::sqrt(double(d)));
  c.options.deterministic = det;
  c.dtype = t;
  return c;
}

// ---- Every head dim, both 16-bit types, causal and not, a tail in both sequence directions ----

class FlashBwdHeadDim : public ::testing::TestWithParam<std::tuple<int, ElementType, bool>> {};

TEST_P(FlashBwdHeadDim, MatchesOracleOnOddLengths) {
  const auto [d, t, causal] = GetParam();
  CheckAgainstOracle(Dense(t, d, 2, 145, 145, 2, 2, causal));
}

TEST_P(FlashBwdHeadDim, MatchesOracleWithLongerKeys) {
  const auto [d, t, causal] = GetParam();
  CheckAgainstOracle(Dense(t, d, 1, 77, 203, 2, 1, causal));
}

INSTANTIATE_TEST_SUITE_P(AllHeadDims, FlashBwdHeadDim,
                         ::testing::Combine(::testing::Values(32, 64, 96, 128, 256),
                                            ::testing::Values(ElementType::kBF16, ElementType::kFP16),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return "d" + std::to_string(std::get<0>(info.param)) + "_" + Name(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_causal" : "_full");
                         });

// ---- Sequence lengths 1, 17, 1000 ----

TEST(FlashBwd, SeqlenOne) {
  for (bool causal : {false, true}) CheckAgainstOracle(Dense(ElementType::kBF16, 64, 3, 1, 1, 2, 2, causal));
  CheckAgainstOracle(Dense(ElementType::kFP16, 128, 2, 1, 33, 2, 2, true));
  CheckAgainstOracle(Dense(ElementType::kFP16, 128, 2, 33, 1, 2, 2, true));
}

TEST(FlashBwd, Seqlen17) {
  for (bool causal : {false, true}) {
    CheckAgainstOracle(Dense(ElementType::kBF16, 128, 2, 17, 17, 3, 3, causal));
    CheckAgainstOracle(Dense(ElementType::kFP16, 64, 2, 17, 17, 3, 1, causal));
  }
}

TEST(FlashBwd, Seqlen1000) {
  for (bool causal : {false, true}) {
    CheckAgainstOracle(Dense(ElementType::kBF16, 128, 1, 1000, 1000, 2, 2, causal));
    CheckAgainstOracle(Dense(ElementType::kFP16, 64, 1, 1000, 1000, 2, 1, causal));
  }
}

// ---- Causal with seqlen_q != seqlen_k (bottom-right), including rows that see no key ----

TEST(FlashBwd, CausalBottomRightMoreKeys) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 128, 2, 100, 300, 2, 2, true));
  CheckAgainstOracle(Dense(ElementType::kFP16, 64, 2, 64, 257, 2, 2, true));
}

TEST(FlashBwd, CausalBottomRightMoreQueriesHasBlindRowsWithZeroGradient) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 128, 2, 300, 100, 2, 2, true));
  CheckAgainstOracle(Dense(ElementType::kFP16, 64, 1, 257, 64, 4, 2, true));
}

// ---- GQA / MQA: dK, dV summed over the query heads of a group ----

TEST(FlashBwd, GroupedQueryAttention) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 128, 2, 150, 150, 8, 2, false));
  CheckAgainstOracle(Dense(ElementType::kFP16, 64, 2, 150, 150, 8, 2, true));
}

TEST(FlashBwd, MultiQueryAttention) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 64, 2, 130, 130, 6, 1, true));
  CheckAgainstOracle(Dense(ElementType::kFP16, 128, 1, 70, 260, 5, 1, false));
}

// Many CTAs: every query head of the group in one CTA (no partial sums).
TEST(FlashBwd, GroupedQueryAttentionManyBlocks) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 64, 4, 384, 384, 4, 2, true));
}

// ---- More units (key block x KV head x sequence) than SMs: full waves, then a last partial
// wave whose units are split over several CTAs (flash_bwd_tail.cuh). 2 key blocks x 67 heads =
// 134 units; on a 132-SM H100 the last 2 are split (all of them split on a GPU with more SMs, none
// on one with 67 or 134). Small shapes (fewer units than SMs) split every unit. ----

TEST(FlashBwd, MoreUnitsThanSmsSplitsTheLastWave) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 64, 1, 256, 256, 67, 67, false));
  CheckAgainstOracle(Dense(ElementType::kFP16, 128, 1, 256, 256, 67, 67, false));
}

// ---- Packed variable-length batches (empty sequences on either side included) ----

TEST(FlashBwd, PackedVarlen) {
  const std::vector<int> lq = {1, 17, 0, 200, 64, 129};
  const std::vector<int> lk = {5, 17, 3, 150, 64, 0};
  for (bool causal : {false, true}) {
    CheckAgainstOracle(Packed(ElementType::kBF16, 128, lq, lk, 4, 2, causal));
    CheckAgainstOracle(Packed(ElementType::kFP16, 64, lq, lk, 3, 3, causal));
  }
}

// ---- Custom softmax scale (large, small, negative) and larger-magnitude inputs ----

TEST(FlashBwd, CustomScale) {
  for (float scale : {0.5f, 0.01f, -0.2f}) {
    Case c = Dense(ElementType::kFP16, 64, 2, 97, 131, 2, 2, scale > 0.1f);
    c.options.softmax_scale = scale;
    CheckAgainstOracle(c);
  }
  Case peaky = Dense(ElementType::kBF16, 128, 1, 160, 160, 2, 2, true);
  peaky.input_scale = 2.0;  // scores with standard deviation ~4: peaked softmax rows
  CheckAgainstOracle(peaky);
}

// ---- FP32 inputs (FP16 conversion path) ----

TEST(FlashBwd, Fp32InputsThroughFp16Path) {
  CheckAgainstOracle(Dense(ElementType::kFP32, 64, 2, 113, 113, 4, 2, true));
  CheckAgainstOracle(Dense(ElementType::kFP32, 128, 1, 90, 200, 2, 2, false));
  CheckAgainstOracle(Packed(ElementType::kFP32, 96, {3, 0, 140}, {9, 4, 100}, 2, 1, true));
  Case big = Dense(ElementType::kFP32, 64, 1, 64, 64, 2, 2, false);
  big.input_scale = 300.0;  // would overflow FP16 without the scales
  big.options.softmax_scale = 1e-5f;
  CheckAgainstOracle(big);
}

// ---- Deterministic mode ----

TEST(FlashBwd, DeterministicMatchesOracle) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 128, 2, 300, 300, 4, 2, true, /*det=*/true));
  CheckAgainstOracle(Packed(ElementType::kFP16, 64, {1, 17, 0, 200}, {5, 17, 3, 150}, 4, 1, false, /*det=*/true));
}

// Identical bits twice on a GQA shape with several key blocks per query row (8 KV tiles of 128
// keys, from 8 CTAs running at once, add into every dQ row, so an atomic order would show in the
// last bits).
TEST(FlashBwd, DeterministicModeGivesIdenticalBitsTwice) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (ElementType t : {ElementType::kBF16, ElementType::kFP32}) {
    Case c = Dense(t, 64, 2, 1024, 1024, 8, 2, false, /*det=*/true);
    const uint32_t seed = FreshSeed();
    SCOPED_TRACE("seed " + std::to_string(seed) + " " + Name(t));
    const HostProblem hp = MakeProblem(c, seed, /*with_reference=*/false);
    Gradients a, b, fast;
    ASSERT_NO_FATAL_FAILURE(RunBackward(c, hp, &a));
    ASSERT_NO_FATAL_FAILURE(RunBackward(c, hp, &b, /*runs=*/2));
    EXPECT_TRUE(a.dq == b.dq) << "dQ differs between deterministic runs";
    EXPECT_TRUE(a.dk == b.dk) << "dK differs between deterministic runs";
    EXPECT_TRUE(a.dv == b.dv) << "dV differs between deterministic runs";
    // The atomic (default) mode computes the same function: compare it with the deterministic one.
    c.options.deterministic = false;
    ASSERT_NO_FATAL_FAILURE(RunBackward(c, hp, &fast));
    const double eq = testing::RelativeL2Error(Decode(t, fast.dq), Decode(t, a.dq));
    EXPECT_LE(eq, 1e-2);
    EXPECT_EQ(CountNaN(Decode(t, a.dq)), 0u);
    std::printf("  [%s] deterministic runs bitwise equal: dQ %s dK %s dV %s; atomic vs deterministic dQ rel %.2e (%s)\n",
                Name(t), a.dq == b.dq ? "yes" : "NO", a.dk == b.dk ? "yes" : "NO", a.dv == b.dv ? "yes" : "NO", eq,
                fast.dq == a.dq ? "atomic run happened to match bitwise" : "atomic run differs in the last bits");
  }
}

// ---- Small shapes for compute-sanitizer (memcheck, racecheck): every code path, few CTAs ----

TEST(FlashBwdSmall, SanitizerShapes) {
  CheckAgainstOracle(Dense(ElementType::kBF16, 128, 1, 70, 150, 2, 1, true));
  CheckAgainstOracle(Dense(ElementType::kFP16, 64, 1, 130, 33, 4, 2, true, /*det=*/true));
  CheckAgainstOracle(Packed(ElementType::kBF16, 64, {1, 0, 40}, {3, 5, 0}, 2, 2, false));
  CheckAgainstOracle(Dense(ElementType::kFP32, 32, 1, 20, 20, 2, 1, false));
  CheckAgainstOracle(Dense(ElementType::kBF16, 256, 1, 65, 65, 1, 1, true));
  CheckAgainstOracle(Dense(ElementType::kFP16, 96, 1, 40, 40, 1, 1, false));
}

// ---- Argument checks ----

TEST(FlashBwd, RejectsBadParams) {
  FlashBwdParams p;
  p.batch = 1;
  p.heads_q = 4;
  p.heads_kv = 3;  // does not divide heads_q
  p.head_dim = 64;
  p.softmax_scale = 0.125f;
  kernels::SetContiguousStrides(p);
  EXPECT_EQ(kernels::FlashBwdCheck(p), cudaErrorInvalidValue);
  p.heads_kv = 2;
  p.head_dim = 80;  // unsupported head dim
  kernels::SetContiguousStrides(p);
  EXPECT_EQ(kernels::FlashBwdCheck(p), cudaErrorInvalidValue);
  p.head_dim = 64;
  p.softmax_scale = 0.f;
  kernels::SetContiguousStrides(p);
  EXPECT_EQ(kernels::FlashBwdCheck(p), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace attnd
