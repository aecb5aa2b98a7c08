#include "tests/kernels/fwd_oracle_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "server/core/attention_problem.h"
#include "server/core/float16.h"
#include "tests/kernels/device_buffer.h"
#include "tests/support/reference_attention.h"

namespace attnd::testing {

using kernels::ElementType;

void PrintTo(const FwdCase& c, std::ostream* os) { *os << c.name; }

FwdCase Dense(std::string name, ElementType t, int d, int sq, int sk, bool causal, int batch, int hq, int hkv) {
  FwdCase c;
  c.name = std::move(name);
  c.dtype = t;
  c.head_dim = d;
  c.seqlens_q.assign(batch, sq);
  c.seqlens_k.assign(batch, sk);
  c.causal = causal;
  c.heads_q = hq;
  c.heads_kv = hkv;
  return c;
}

FwdCase Packed(std::string name, ElementType t, int d, std::vector<int> sq, std::vector<int> sk, bool causal) {
  FwdCase c;
  c.name = std::move(name);
  c.dtype = t;
  c.head_dim = d;
  c.seqlens_q = std::move(sq);
  c.seqlens_k = std::move(sk);
  c.packed = true;
  c.causal = causal;
  c.heads_q = 4;
  c.heads_kv = 2;
  return c;
}

namespace {

size_t ElementBytes(ElementType t) { return t == ElementType::kFP32 ? 4 : 2; }

// Rounds x to the element type and returns (bits appended to `bytes`, value seen by the kernel).
double Store(ElementType t, double x, std::vector<uint8_t>& bytes) {
  const size_t at = bytes.size();
  bytes.resize(at + ElementBytes(t));
  if (t == ElementType::kFP32) {
    const float f = static_cast<float>(x);
    std::memcpy(&bytes[at], &f, 4);
    return f;
  }
  const uint16_t h = t == ElementType::kBF16 ? FloatToBf16(static_cast<float>(x)) : FloatToFp16(static_cast<float>(x));
  std::memcpy(&bytes[at], &h, 2);
  return t == ElementType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
}

double Load(ElementType t, const uint8_t* p) {
  if (t == ElementType::kFP32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == ElementType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
}

// Random tensor [rows, heads, head_dim] stored with head vectors `pad` elements apart; returns the
// rounded values densely (what the oracle sees).
std::vector<double> RandomTensor(std::mt19937& rng, const FwdCase& c, int64_t rows, int heads,
                                 std::vector<uint8_t>& bytes) {
  std::normal_distribution<double> normal(0.0, c.magnitude);
  std::vector<double> values;
  values.reserve(size_t(rows) * heads * c.head_dim);
  std::vector<uint8_t> pad_bytes;
  for (int64_t r = 0; r < rows; ++r)
    for (int h = 0; h < heads; ++h) {
      for (int d = 0; d < c.head_dim; ++d) values.push_back(Store(c.dtype, normal(rng), bytes));
      for (int d = 0; d < c.pad; ++d) Store(c.dtype, std::nan(""), bytes);  // never read
    }
  return values;
}

double Tolerance(ElementType t) { return t == ElementType::kBF16 ? 1e-2 : 2e-3; }

uint32_t SeedFor(const std::string& name) {
  // A different stream per case, and per run of the suite: fresh inputs each time.
  std::random_device rd;
  return static_cast<uint32_t>(std::hash<std::string>{}(name)) ^ rd();
}

}  // namespace

void CheckForwardAgainstOracle(const FwdCase& c) {
  if (!HaveCudaDevice()) GTEST_SKIP() << "no CUDA device";
  const AttentionShape shape =
      c.packed ? PackedShape(c.seqlens_q, c.seqlens_k, c.heads_q, c.heads_kv, c.head_dim)
               : DenseShape(static_cast<int>(c.seqlens_q.size()), c.seqlens_q[0], c.seqlens_k[0], c.heads_q,
                            c.heads_kv, c.head_dim);
  AttentionOptions options;
  options.causal = c.causal;
  options.softmax_scale = c.scale != 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(c.head_dim));

  const uint32_t seed = SeedFor(c.name);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<uint8_t> q_bytes, k_bytes, v_bytes;
  const std::vector<double> q = RandomTensor(rng, c, shape.total_q, c.heads_q, q_bytes);
  const std::vector<double> k = RandomTensor(rng, c, shape.total_k, c.heads_kv, k_bytes);
  const std::vector<double> v = RandomTensor(rng, c, shape.total_k, c.heads_kv, v_bytes);
  const ReferenceForward ref = ReferenceAttentionForward(shape, options, q, k, v);

  const size_t esize = ElementBytes(c.dtype);
  const int64_t head_stride = c.head_dim + c.pad;
  DeviceBuffer dq(q_bytes.size()), dk(k_bytes.size()), dv(v_bytes.size());
  DeviceBuffer dout(size_t(shape.total_q) * c.heads_q * head_stride * esize);
  DeviceBuffer dlse(ref.lse.size() * sizeof(float));
  DeviceBuffer dcu_q(shape.cu_seqlens_q.size() * 4), dcu_k(shape.cu_seqlens_k.size() * 4);
  ASSERT_TRUE(dq.ok() && dk.ok() && dv.ok() && dout.ok() && dlse.ok() && dcu_q.ok() && dcu_k.ok());
  ATTND_ASSERT_CUDA(dq.Upload(q_bytes));
  ATTND_ASSERT_CUDA(dk.Upload(k_bytes));
  ATTND_ASSERT_CUDA(dv.Upload(v_bytes));
  ATTND_ASSERT_CUDA(dcu_q.Upload(shape.cu_seqlens_q));
  ATTND_ASSERT_CUDA(dcu_k.Upload(shape.cu_seqlens_k));
  ATTND_ASSERT_CUDA(dout.Poison());
  ATTND_ASSERT_CUDA(dlse.Poison());

  kernels::FlashFwdParams p;
  p.dtype = c.dtype;
  p.q = dq.get();
  p.k = dk.get();
  p.v = dv.get();
  p.out = dout.get();
  p.lse = static_cast<float*>(dlse.get());
  p.cu_seqlens_q = static_cast<const int32_t*>(dcu_q.get());
  p.cu_seqlens_k = static_cast<const int32_t*>(dcu_k.get());
  p.batch = shape.batch;
  p.heads_q = c.heads_q;
  p.heads_kv = c.heads_kv;
  p.head_dim = c.head_dim;
  p.max_seqlen_q = shape.max_seqlen_q;
  p.max_seqlen_k = shape.max_seqlen_k;
  p.total_q = shape.total_q;
  p.total_k = shape.total_k;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.out_head_stride = head_stride;
  p.q_row_stride = p.out_row_stride = c.heads_q * head_stride;
  p.k_row_stride = p.v_row_stride = c.heads_kv * head_stride;
  p.lse_packed = shape.packed;
  p.causal = c.causal;
  p.softmax_scale = options.softmax_scale;
  p.kernel = c.kernel;
  if (kernels::FlashFwdSelectKernel(p) == kernels::FwdKernel::kAuto)
    GTEST_SKIP() << "the forced kernel cannot run this problem on this device";

  DeviceBuffer workspace(kernels::FlashFwdWorkspaceBytes(p));
  ASSERT_TRUE(workspace.ok());
  ATTND_ASSERT_CUDA(kernels::FlashFwd(p, workspace.get(), nullptr));
  ATTND_ASSERT_CUDA(cudaDeviceSynchronize());

  std::vector<uint8_t> out_bytes;
  std::vector<float> lse;
  ATTND_ASSERT_CUDA(dout.Download(out_bytes));
  ATTND_ASSERT_CUDA(dlse.Download(lse));

  // Every output element written (no NaN left from the poison), then the error against the oracle.
  std::vector<double> out(ref.out.size());
  int64_t unwritten = 0;
  for (int64_t r = 0; r < shape.total_q; ++r)
    for (int h = 0; h < c.heads_q; ++h)
      for (int d = 0; d < c.head_dim; ++d) {
        const size_t packed_index = (size_t(r) * c.heads_q + h) * c.head_dim + d;
        const double x = Load(c.dtype, &out_bytes[((size_t(r) * c.heads_q + h) * head_stride + d) * esize]);
        if (std::isnan(x)) ++unwritten;
        out[packed_index] = x;
      }
  ASSERT_EQ(unwritten, 0) << "output elements left unwritten (or NaN)";
  const double err = RelativeL2Error(out, ref.out);
  EXPECT_LE(err, Tolerance(c.dtype)) << "relative L2 error of out";

  // lse: 1e-3 absolute. The FP32 path rounds q and k to FP16 (flash_fwd.h), which moves each score
  // by about 4e-4 of the scores' spread (c * sqrt(d) * magnitude^2); its lse bound scales with it.
  double lse_tol = 1e-3;
  if (c.dtype == ElementType::kFP32) {
    const double score_std = std::fabs(options.softmax_scale) * std::sqrt(double(c.head_dim)) * c.magnitude * c.magnitude;
    lse_tol = std::max(1e-3, 2e-3 * score_std);
  }
  double worst_lse = 0;
  int64_t lse_mismatch = 0;
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      if (!(std::isinf(lse[i]) && lse[i] > 0)) ++lse_mismatch;
      continue;
    }
    const double diff = std::fabs(double(lse[i]) - ref.lse[i]);
    if (!(diff <= lse_tol)) ++lse_mismatch;  // NaN counts
    if (diff > worst_lse) worst_lse = diff;
  }
  EXPECT_EQ(lse_mismatch, 0) << "lse entries off by more than " << lse_tol << " (worst " << worst_lse << ")";
  ::testing::Test::RecordProperty("out_rel_l2", std::to_string(err));
}


}  // namespace attnd::testing
