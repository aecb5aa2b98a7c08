#include "tests/support/reference_attention.h"

#include <cmath>
#include <limits>

namespace attnd::testing {
namespace {

struct Index {
  const AttentionShape& s;
  size_t q(int64_t row, int h, int d) const { return (size_t(row) * s.heads_q + h) * s.head_dim + d; }
  size_t kv(int64_t row, int h, int d) const { return (size_t(row) * s.heads_kv + h) * s.head_dim + d; }
  int kv_head(int h) const { return h / (s.heads_q / s.heads_kv); }
};

// Probabilities of query row i of sequence b, head h, over that sequence's keys (0 where masked),
// and the row's logsumexp. Returns false when the row sees no key.
bool RowProbabilities(const AttentionShape& s, const AttentionOptions& o, const std::vector<double>& q,
                      const std::vector<double>& k, int b, int h, int i, std::vector<double>& p,
                      double& lse) {
  const Index ix{s};
  const int sq = s.seqlen_q(b), sk = s.seqlen_k(b);
  const int64_t qrow = s.cu_seqlens_q[b] + i;
  const int hk = ix.kv_head(h);
  p.assign(sk, 0.0);
  double m = -std::numeric_limits<double>::infinity();
  int last = sk - 1;
  if (o.causal) last = std::min(sk - 1, i + sk - sq);
  for (int j = 0; j <= last; ++j) {
    const int64_t krow = s.cu_seqlens_k[b] + j;
    double dot = 0;
    for (int d = 0; d < s.head_dim; ++d) dot += q[ix.q(qrow, h, d)] * k[ix.kv(krow, hk, d)];
    p[j] = dot * o.softmax_scale;
    m = std::max(m, p[j]);
  }
  if (last < 0) {
    lse = std::numeric_limits<double>::infinity();
    return false;
  }
  double sum = 0;
  for (int j = 0; j <= last; ++j) sum += std::exp(p[j] - m);
  lse = m + std::log(sum);
  for (int j = 0; j <= last; ++j) p[j] = std::exp(p[j] - lse);
  return true;
}

}  // namespace

ReferenceForward ReferenceAttentionForward(const AttentionShape& s, const AttentionOptions& o,
                                           const std::vector<double>& q, const std::vector<double>& k,
                                           const std::vector<double>& v) {
  const Index ix{s};
  ReferenceForward r;
  r.out.assign(size_t(s.q_elements()), 0.0);
  r.lse.assign(size_t(s.packed ? s.lse_elements() : int64_t{s.batch} * s.heads_q * s.max_seqlen_q), 0.0);
  std::vector<double> p;
  for (int b = 0; b < s.batch; ++b) {
    for (int h = 0; h < s.heads_q; ++h) {
      for (int i = 0; i < s.seqlen_q(b); ++i) {
        double lse;
        const bool any = RowProbabilities(s, o, q, k, b, h, i, p, lse);
        r.lse[size_t(s.LseIndex(b, h, i))] = lse;
        if (!any) continue;
        const int64_t qrow = s.cu_seqlens_q[b] + i;
        for (int j = 0; j < s.seqlen_k(b); ++j) {
          if (p[j] == 0) continue;
          const int64_t krow = s.cu_seqlens_k[b] + j;
          for (int d = 0; d < s.head_dim; ++d) r.out[ix.q(qrow, h, d)] += p[j] * v[ix.kv(krow, ix.kv_head(h), d)];
        }
      }
    }
  }
  return r;
}

ReferenceBackward ReferenceAttentionBackward(const AttentionShape& s, const AttentionOptions& o,
                                             const std::vector<double>& q, const std::vector<double>& k,
                                             const std::vector<double>& v,
                                             const std::vector<double>& dout) {
  const Index ix{s};
  ReferenceBackward g;
  g.grad_q.assign(size_t(s.q_elements()), 0.0);
  g.grad_k.assign(size_t(s.kv_elements()), 0.0);
  g.grad_v.assign(size_t(s.kv_elements()), 0.0);
  std::vector<double> p, dp;
  for (int b = 0; b < s.batch; ++b) {
    for (int h = 0; h < s.heads_q; ++h) {
      const int hk = ix.kv_head(h);
      for (int i = 0; i < s.seqlen_q(b); ++i) {
        double lse;
        if (!RowProbabilities(s, o, q, k, b, h, i, p, lse)) continue;
        const int64_t qrow = s.cu_seqlens_q[b] + i;
        const int sk = s.seqlen_k(b);
        // dP_ij = dO_i . V_j ; D_i = sum_j P_ij dP_ij ; dS_ij = P_ij (dP_ij - D_i)
        dp.assign(sk, 0.0);
        double D = 0;
        for (int j = 0; j < sk; ++j) {
          if (p[j] == 0) continue;
          const int64_t krow = s.cu_seqlens_k[b] + j;
          for (int d = 0; d < s.head_dim; ++d) dp[j] += dout[ix.q(qrow, h, d)] * v[ix.kv(krow, hk, d)];
          D += p[j] * dp[j];
        }
        for (int j = 0; j < sk; ++j) {
          if (p[j] == 0) continue;
          const int64_t krow = s.cu_seqlens_k[b] + j;
          const double ds = p[j] * (dp[j] - D) * o.softmax_scale;
          for (int d = 0; d < s.head_dim; ++d) {
            g.grad_v[ix.kv(krow, hk, d)] += p[j] * dout[ix.q(qrow, h, d)];
            g.grad_q[ix.q(qrow, h, d)] += ds * k[ix.kv(krow, hk, d)];
            g.grad_k[ix.kv(krow, hk, d)] += ds * q[ix.q(qrow, h, d)];
          }
        }
      }
    }
  }
  return g;
}

double RelativeL2Error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  if (den == 0) return num == 0 ? 0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

}  // namespace attnd::testing
