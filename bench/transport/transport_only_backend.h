// TransportOnlyBackend: a Backend that computes nothing and writes every output byte (a fill), so
// that a benchmark of attnd's transport measures decode, gather, response and socket costs alone,
// the way a GPU backend whose kernel takes well under a millisecond leaves them exposed.
#pragma once

#include <cstring>

#include "server/backend.h"

namespace attnd::bench {

class TransportOnlyBackend final : public Backend {
 public:
  std::string_view name() const override { return "transport-only"; }
  absl::Status CheckSupported(const AttentionShape&, DType) const override { return absl::OkStatus(); }
  absl::Status Forward(const ForwardArgs& a) override {
    std::memset(a.out, 0, a.shape->q_elements() * ElementSize(a.dtype));
    std::memset(a.lse, 0, a.shape->lse_elements() * sizeof(float));
    return absl::OkStatus();
  }
  absl::Status Backward(const BackwardArgs& a) override {
    std::memset(a.grad_q, 0, a.shape->q_elements() * ElementSize(a.dtype));
    std::memset(a.grad_k, 0, a.shape->kv_elements() * ElementSize(a.dtype));
    std::memset(a.grad_v, 0, a.shape->kv_elements() * ElementSize(a.dtype));
    return absl::OkStatus();
  }
};

}  // namespace attnd::bench
