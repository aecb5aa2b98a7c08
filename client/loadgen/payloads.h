// Payloads: the random requests attn_loadgen rotates through, built once before the run, and,
// with --check, the responses the local CPU backend gives for them.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/v1/attention.pb.h"
#include "client/loadgen/load_spec.h"
#include "server/core/attention_problem.h"

namespace attnd::loadgen {

struct Payload {
  AttentionShape shape;
  std::shared_ptr<const v1::ForwardRequest> forward;    // set when the direction is forward or train
  std::shared_ptr<const v1::BackwardRequest> backward;  // set when the direction is backward or train
  std::optional<v1::ForwardResponse> expected_forward;  // with --check
  std::optional<v1::BackwardResponse> expected_backward;
  int64_t request_bytes = 0;   // tensor bytes sent
  int64_t response_bytes = 0;  // tensor bytes a correct response carries
  double flops = 0;            // 4*Nq*Nk*H*d per sequence forward, half when causal; 2.5x backward
  // How it is sent (mixed workloads give each payload its own), and its workload's name.
  Direction direction = Direction::kForward;
  Transport transport = Transport::kProto;
  bool resident = false;
  int workload = 0;
};

// Builds spec.payloads payloads with fresh normal random q/k/v (and grad_out). A backward payload's
// out/lse come from the local CPU backend's forward, so it is a request a real trainer would send.
// The CPU backend also fills the expected responses when spec.check is set.
absl::StatusOr<std::vector<Payload>> BuildPayloads(const LoadSpec& spec);

}  // namespace attnd::loadgen
