#include "client/loadgen/response_check.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/attnd/tensors.h"

namespace attnd::loadgen {
namespace {

CheckResult Fail(std::string detail) { return CheckResult{false, 0, std::move(detail)}; }

// Folds one tensor's result into the response's.
void Merge(const CheckResult& one, CheckResult* all) {
  all->max_rel_l2 = std::max(all->max_rel_l2, one.max_rel_l2);
  if (!one.ok && all->ok) {
    all->ok = false;
    all->detail = one.detail;
  }
}

}  // namespace

CheckResult CompareTensor(const char* name, const v1::Tensor& got, const v1::Tensor& want, double tolerance) {
  if (got.dtype() != want.dtype()) {
    return Fail(absl::StrCat(name, ": dtype ", v1::DType_Name(got.dtype()), ", expected ", v1::DType_Name(want.dtype())));
  }
  if (!std::equal(got.shape().begin(), got.shape().end(), want.shape().begin(), want.shape().end())) {
    return Fail(absl::StrCat(name, ": shape [", absl::StrJoin(got.shape(), ", "), "], expected [",
                             absl::StrJoin(want.shape(), ", "), "]"));
  }
  absl::StatusOr<std::vector<float>> g = TensorToFloats(got, name);
  if (!g.ok()) return Fail(std::string(g.status().message()));
  absl::StatusOr<std::vector<float>> w = TensorToFloats(want, name);
  if (!w.ok()) return Fail(std::string(w.status().message()));
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < g->size(); ++i) {
    const double a = (*g)[i], b = (*w)[i];
    if (std::isnan(a) && !std::isnan(b)) return Fail(absl::StrCat(name, "[", i, "] is NaN, expected ", b));
    if (std::isinf(b) || std::isinf(a)) {
      if (a != b) return Fail(absl::StrCat(name, "[", i, "] is ", a, ", expected ", b));
      continue;
    }
    if (std::isnan(b)) continue;
    diff2 += (a - b) * (a - b);
    ref2 += b * b;
  }
  CheckResult r;
  r.max_rel_l2 = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  if (!(r.max_rel_l2 <= tolerance)) {
    r.ok = false;
    r.detail = absl::StrCat(name, ": relative L2 error ", r.max_rel_l2, " > tolerance ", tolerance);
  }
  return r;
}

CheckResult CheckForward(const v1::ForwardResponse& got, const v1::ForwardResponse& want, double tolerance) {
  CheckResult all;
  Merge(CompareTensor("out", got.out(), want.out(), tolerance), &all);
  // lse is FP32 and of a reduction the backends all do in FP32: hold it to a tighter bound.
  Merge(CompareTensor("lse", got.lse(), want.lse(), std::min(tolerance, 1e-4)), &all);
  return all;
}

CheckResult CheckBackward(const v1::BackwardResponse& got, const v1::BackwardResponse& want, double tolerance) {
  CheckResult all;
  Merge(CompareTensor("grad_q", got.grad_q(), want.grad_q(), tolerance), &all);
  Merge(CompareTensor("grad_k", got.grad_k(), want.grad_k(), tolerance), &all);
  Merge(CompareTensor("grad_v", got.grad_v(), want.grad_v(), tolerance), &all);
  return all;
}

}  // namespace attnd::loadgen
