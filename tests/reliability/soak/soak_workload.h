// What the soak sends: a pool of good problems (forward and backward, every dtype, dense and
// packed, causal and GQA) whose answers the float64 oracle computed once, and malformed requests,
// each with the status and the field the daemon must name. All small, so that a CPU daemon answers
// thousands per minute.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "attnd/v1/attention.pb.h"
#include "server/core/attention_problem.h"
#include "tests/support/reference_attention.h"

namespace attnd::soak {

struct GoodProblem {
  std::string name;
  bool backward = false;
  AttentionShape shape;
  DType dtype = DType::kBF16;
  std::shared_ptr<const v1::ForwardRequest> forward;    // set when !backward
  std::shared_ptr<const v1::BackwardRequest> backward_request;  // set when backward
  testing::ReferenceForward want_forward;
  testing::ReferenceBackward want_backward;
  double tolerance = 0;  // relative L2 against the oracle
};

struct MalformedRequest {
  std::string name;
  std::shared_ptr<const v1::ForwardRequest> forward;    // one of the two is set
  std::shared_ptr<const v1::BackwardRequest> backward;
  absl::StatusCode code;  // what the daemon must answer
  std::string names;      // and what its message must contain (the field)
};

struct Workload {
  std::vector<GoodProblem> good;
  std::vector<MalformedRequest> malformed;
};

// `max_tokens`: the daemon's --max_tokens, which one malformed request exceeds.
Workload MakeWorkload(uint64_t seed, int64_t max_tokens);

// Empty when `response` is the right answer to `problem`, else what is wrong.
std::string CheckForward(const GoodProblem& problem, const v1::ForwardResponse& response);
std::string CheckBackward(const GoodProblem& problem, const v1::BackwardResponse& response);

}  // namespace attnd::soak
