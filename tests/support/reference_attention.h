// The float64 oracle: naive attention, one query row at a time, in double precision. It is the
// ground truth every backend and kernel is tested against; it favours being obviously right over
// speed. Pure C++ (no CUDA, no Abseil) so the GPU machine can build it beside the kernels.
//
// Layout and masking follow AttentionShape: packed rows, GQA (query head h reads KV head
// h / (heads_q / heads_kv)), causal aligned bottom-right (query i sees key j iff
// j <= i + seqlen_k - seqlen_q). A query row that sees no key has out = 0 and lse = +inf, so that
// exp(s - lse) = 0 in the backward pass (flash-attn's convention).
#pragma once

#include <vector>

#include "server/core/attention_problem.h"

namespace attnd::testing {

struct ReferenceForward {
  std::vector<double> out;  // [total_q, heads_q, head_dim]
  std::vector<double> lse;  // indexed by shape.LseIndex
};

struct ReferenceBackward {
  std::vector<double> grad_q;  // [total_q, heads_q, head_dim]
  std::vector<double> grad_k;  // [total_k, heads_kv, head_dim]
  std::vector<double> grad_v;
};

ReferenceForward ReferenceAttentionForward(const AttentionShape& shape, const AttentionOptions& options,
                                           const std::vector<double>& q, const std::vector<double>& k,
                                           const std::vector<double>& v);

// Gradients of sum(out * grad_out) with respect to q, k, v, recomputed from scratch (the forward's
// out and lse are not trusted).
ReferenceBackward ReferenceAttentionBackward(const AttentionShape& shape, const AttentionOptions& options,
                                             const std::vector<double>& q, const std::vector<double>& k,
                                             const std::vector<double>& v,
                                             const std::vector<double>& grad_out);

// ||a - b|| / ||b|| over all elements (0 when both are zero).
double RelativeL2Error(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace attnd::testing
