// Compares a response with the one the local CPU backend computed for the same request (--check).
#pragma once

#include <string>

#include "attnd/v1/attention.pb.h"

namespace attnd::loadgen {

struct CheckResult {
  bool ok = true;
  double max_rel_l2 = 0;  // worst relative L2 error over the response's tensors
  std::string detail;     // why it failed, naming the tensor
};

// A tensor matches when dtype and shape agree, infinities sit in the same places (a row that sees
// no key has lse = +inf), there is no NaN, and ||got - want|| / ||want|| over the finite elements
// is at most `tolerance`.
CheckResult CompareTensor(const char* name, const v1::Tensor& got, const v1::Tensor& want, double tolerance);

CheckResult CheckForward(const v1::ForwardResponse& got, const v1::ForwardResponse& want, double tolerance);
CheckResult CheckBackward(const v1::BackwardResponse& got, const v1::BackwardResponse& want, double tolerance);

}  // namespace attnd::loadgen
