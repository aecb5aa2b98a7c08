#include "tests/reliability/soak/soak_workload.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "client/attnd/tensors.h"
#include "tests/client/client_test_util.h"

namespace attnd::soak {
namespace {

using testing::AsSent;
using testing::Matches;
using testing::RandomNormal;

// Bounds of the relative L2 error against the float64 oracle: the output is rounded to the wire
// dtype once (forward); gradients also see the rounded out and grad_out.
double Tolerance(DType dtype, bool backward) {
  switch (dtype) {
    case DType::kBF16: return backward ? 2e-2 : 1e-2;
    case DType::kFP16: return backward ? 5e-3 : 2e-3;
    case DType::kFP32: return backward ? 1e-4 : 1e-5;
  }
  return 0;
}

struct Spec {
  const char* name;
  DType dtype;
  AttentionShape shape;
  bool causal;
};

GoodProblem MakeGood(const Spec& s, bool backward, uint64_t seed) {
  GoodProblem p;
  p.name = absl::StrCat(backward ? "backward_" : "forward_", s.name);
  p.backward = backward;
  p.shape = s.shape;
  p.dtype = s.dtype;
  p.tolerance = Tolerance(s.dtype, backward);
  AttentionOptions wire;
  wire.causal = s.causal;
  AttentionOptions oracle = wire;
  oracle.softmax_scale = 1.f / std::sqrt(static_cast<float>(s.shape.head_dim));
  const std::vector<float> q = RandomNormal(s.shape.q_elements(), seed);
  const std::vector<float> k = RandomNormal(s.shape.kv_elements(), seed + 1);
  const std::vector<float> v = RandomNormal(s.shape.kv_elements(), seed + 2);
  const std::vector<double> qs = AsSent(s.dtype, q), ks = AsSent(s.dtype, k), vs = AsSent(s.dtype, v);
  v1::ForwardRequest forward = *MakeForwardRequest(s.shape, s.dtype, wire, q, k, v);
  p.want_forward = testing::ReferenceAttentionForward(s.shape, oracle, qs, ks, vs);
  if (!backward) {
    p.forward = std::make_shared<const v1::ForwardRequest>(std::move(forward));
    return p;
  }
  // The forward's out and lse as a daemon would have returned them: the oracle's, in wire types.
  const std::vector<float> out(p.want_forward.out.begin(), p.want_forward.out.end());
  std::vector<float> lse(s.shape.lse_elements());
  for (size_t i = 0; i < lse.size(); ++i) lse[i] = static_cast<float>(p.want_forward.lse[i]);
  const std::vector<float> grad_out = RandomNormal(s.shape.q_elements(), seed + 3);
  p.backward_request = std::make_shared<const v1::BackwardRequest>(
      *MakeBackwardRequest(s.shape, s.dtype, wire, q, k, v, out, lse, grad_out));
  p.want_backward = testing::ReferenceAttentionBackward(s.shape, oracle, qs, ks, vs, AsSent(s.dtype, grad_out));
  return p;
}

MalformedRequest Bad(std::string name, v1::ForwardRequest r, absl::StatusCode code, std::string names) {
  return {std::move(name), std::make_shared<const v1::ForwardRequest>(std::move(r)), nullptr, code, std::move(names)};
}

MalformedRequest BadBackward(std::string name, v1::BackwardRequest r, absl::StatusCode code, std::string names) {
  return {std::move(name), nullptr, std::make_shared<const v1::BackwardRequest>(std::move(r)), code, std::move(names)};
}

std::vector<MalformedRequest> MakeMalformed(const GoodProblem& dense, const GoodProblem& packed,
                                            const GoodProblem& backward, int64_t max_tokens) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  std::vector<MalformedRequest> bad;
  v1::ForwardRequest r = *dense.forward;
  r.mutable_k()->mutable_data()->pop_back();
  bad.push_back(Bad("k_one_byte_short", r, kInvalid, "k.data"));
  r = *dense.forward;
  r.mutable_v()->set_dtype(v1::DTYPE_FP32);
  bad.push_back(Bad("v_dtype_differs", r, kInvalid, "v.dtype"));
  r = *dense.forward;
  r.mutable_q()->add_shape(1);
  bad.push_back(Bad("q_rank_5", r, kInvalid, "q.shape"));
  r = *dense.forward;
  r.clear_q();
  bad.push_back(Bad("q_missing", r, kInvalid, "q: missing"));
  r = *dense.forward;
  r.mutable_params()->set_softmax_scale(std::numeric_limits<float>::quiet_NaN());
  bad.push_back(Bad("scale_nan", r, kInvalid, "params.softmax_scale"));
  r = *packed.forward;
  r.mutable_params()->set_cu_seqlens_q(1, r.params().cu_seqlens_q(2) + 1);
  bad.push_back(Bad("cu_seqlens_decreasing", r, kInvalid, "params.cu_seqlens_q"));
  r = *dense.forward;
  r.mutable_params()->add_cu_seqlens_q(0);
  bad.push_back(Bad("cu_seqlens_on_dense", r, kInvalid, "params.cu_seqlens_q"));
  // max_tokens + 1 query tokens of one head of width 1: a few KiB, over the token limit.
  const AttentionShape long_shape = DenseShape(1, static_cast<int>(max_tokens + 1), 4, 1, 1, 1);
  const std::vector<float> ones(long_shape.q_elements(), 1.f);
  bad.push_back(Bad("too_many_tokens", *MakeForwardRequest(long_shape, DType::kFP16, {}, ones, {1, 1, 1, 1}, {1, 1, 1, 1}),
                    absl::StatusCode::kResourceExhausted, "max_tokens_per_request"));
  v1::BackwardRequest b = *backward.backward_request;
  b.mutable_lse()->mutable_shape()->RemoveLast();
  bad.push_back(BadBackward("lse_shape", b, kInvalid, "lse.shape"));
  b = *backward.backward_request;
  b.mutable_grad_out()->set_dtype(v1::DTYPE_UNSPECIFIED);
  bad.push_back(BadBackward("grad_out_dtype_unspecified", b, kInvalid, "grad_out.dtype"));
  return bad;
}

}  // namespace

Workload MakeWorkload(uint64_t seed, int64_t max_tokens) {
  const Spec specs[] = {
      {"bf16_dense_gqa", DType::kBF16, DenseShape(2, 32, 48, 4, 2, 32), false},
      {"bf16_causal_q_shorter", DType::kBF16, DenseShape(1, 24, 64, 2, 2, 64), true},
      {"fp16_dense_mqa", DType::kFP16, DenseShape(1, 40, 40, 4, 1, 32), false},
      {"fp32_causal", DType::kFP32, DenseShape(2, 17, 17, 2, 2, 16), true},
      {"bf16_packed_causal", DType::kBF16, PackedShape({7, 33, 1}, {9, 33, 5}, 2, 1, 32), true},
      {"fp16_packed_empty_key", DType::kFP16, PackedShape({5, 12}, {0, 20}, 2, 2, 16), false},
  };
  Workload w;
  uint64_t s = seed;
  for (const Spec& spec : specs) {
    w.good.push_back(MakeGood(spec, /*backward=*/false, s += 10));
    w.good.push_back(MakeGood(spec, /*backward=*/true, s += 10));
  }
  w.malformed = MakeMalformed(w.good[0], w.good[8], w.good[1], max_tokens);
  return w;
}

std::string CheckForward(const GoodProblem& p, const v1::ForwardResponse& r) {
  ::testing::AssertionResult out = Matches("out", r.out(), WireQShape(p.shape), p.want_forward.out, p.tolerance);
  if (!out) return out.message();
  ::testing::AssertionResult lse = Matches("lse", r.lse(), WireLseShape(p.shape), p.want_forward.lse, 1e-4);
  return lse ? "" : lse.message();
}

std::string CheckBackward(const GoodProblem& p, const v1::BackwardResponse& r) {
  for (const auto& [name, got, shape, want] :
       {std::tuple{"grad_q", &r.grad_q(), WireQShape(p.shape), &p.want_backward.grad_q},
        std::tuple{"grad_k", &r.grad_k(), WireKVShape(p.shape), &p.want_backward.grad_k},
        std::tuple{"grad_v", &r.grad_v(), WireKVShape(p.shape), &p.want_backward.grad_v}}) {
    ::testing::AssertionResult ok = Matches(name, *got, shape, *want, p.tolerance);
    if (!ok) return ok.message();
  }
  return "";
}

}  // namespace attnd::soak
