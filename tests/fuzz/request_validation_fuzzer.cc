// libFuzzer target: wire bytes -> ForwardRequest / BackwardRequest -> request validation -> the CPU
// backend. The first input byte picks the message (even: Forward, odd: Backward), the rest is its
// protobuf encoding. Validation must never crash or read out of bounds on any input, and its
// promise must hold: a request it accepts can be handed to a backend as is (every tensor has the
// bytes its shape claims, cu_seqlens are consistent), so accepted requests that are small enough
// are computed by the CPU backend into buffers sized exactly as the service sizes them, under
// AddressSanitizer.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "attnd/v1/attention.pb.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/service/request_validation.h"

namespace {

using attnd::Backend;
using attnd::ElementSize;

// Small limits, so that accepted requests are cheap to compute.
constexpr int64_t kMaxElements = int64_t{1} << 16;

const attnd::RequestLimits& Limits() {
  static const attnd::RequestLimits limits{.max_request_bytes = 4 << 20, .max_tokens_per_request = 4096};
  return limits;
}

Backend& Cpu() {
  static Backend* backend = attnd::CreateCpuBackend(1).release();
  return *backend;
}

bool SmallEnough(const attnd::AttentionShape& shape) {
  return shape.q_elements() <= kMaxElements && shape.kv_elements() <= kMaxElements &&
         static_cast<int64_t>(shape.max_seqlen_q) * shape.max_seqlen_k * shape.heads_q <= kMaxElements * 16;
}

void FuzzForward(const uint8_t* data, size_t size) {
  attnd::v1::ForwardRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  absl::StatusOr<attnd::ValidatedForward> call = attnd::ValidateForwardRequest(request, Limits(), &Cpu());
  if (!call.ok() || !SmallEnough(call->shape)) return;
  std::vector<uint8_t> out(call->shape.q_elements() * ElementSize(call->dtype));
  std::vector<float> lse(call->shape.lse_elements());
  (void)Cpu().Forward(call->Args(out.data(), lse.data()));
}

void FuzzBackward(const uint8_t* data, size_t size) {
  attnd::v1::BackwardRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return;
  absl::StatusOr<attnd::ValidatedBackward> call = attnd::ValidateBackwardRequest(request, Limits(), &Cpu());
  if (!call.ok() || !SmallEnough(call->shape)) return;
  const size_t element = ElementSize(call->dtype);
  std::vector<uint8_t> grad_q(call->shape.q_elements() * element);
  std::vector<uint8_t> grad_k(call->shape.kv_elements() * element);
  std::vector<uint8_t> grad_v(call->shape.kv_elements() * element);
  (void)Cpu().Backward(call->Args(grad_q.data(), grad_k.data(), grad_v.data()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] % 2 == 0) {
    FuzzForward(data + 1, size - 1);
  } else {
    FuzzBackward(data + 1, size - 1);
  }
  return 0;
}
