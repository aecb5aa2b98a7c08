// Request validation: from a wire ForwardRequest/BackwardRequest to the AttentionShape,
// AttentionOptions and DType every backend understands, before any work is done.
//
// Every rejection is an absl::Status whose message starts with the offending field ("q.shape: ...",
// "params.cu_seqlens_k[3]: ..."): INVALID_ARGUMENT for malformed requests, RESOURCE_EXHAUSTED for
// requests over the server's limits. A request that passes can be handed to Backend::Forward or
// Backward as is: every tensor has exactly the bytes its shape promises, shapes agree, cu_seqlens
// are consistent and the backend has said it runs the shape.
//
// Tensor bytes are used in place: the validated request points into the protobuf message's
// `bytes` fields. Only when a buffer is not aligned to its element type (never seen in practice:
// large std::string buffers come from malloc, 16-byte aligned) is it copied into aligned storage
// that the validated request owns.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attnd/v1/attention.pb.h"
#include "server/backend.h"
#include "server/core/attention_problem.h"

namespace attnd {

// protobuf cannot parse or serialize a message of 2 GiB or more; 1 MiB of that is kept for what is
// not tensor bytes (framing, shapes, params). The largest, and default, max_request_bytes.
inline constexpr int64_t kMaxRequestBytesLimit = (int64_t{2} << 30) - (int64_t{1} << 20);
inline constexpr int64_t kDefaultMaxRequestBytes = kMaxRequestBytesLimit;
// 16 Mi tokens for q and for k/v: far beyond any single attention call in practice, and it keeps
// every offset inside cu_seqlens' int32 range.
inline constexpr int64_t kDefaultMaxTokensPerRequest = int64_t{1} << 24;

struct RequestLimits {
  // Sum of the request's tensor bytes; the response's tensor bytes are held to it too (a response
  // must also fit in one protobuf message). Capped at kMaxRequestBytesLimit.
  int64_t max_request_bytes = kDefaultMaxRequestBytes;
  // total_q and total_k (batch * seqlen for dense requests) each; capped at INT32_MAX internally.
  int64_t max_tokens_per_request = kDefaultMaxTokensPerRequest;
};

// The bytes of one validated input tensor, aligned for its element type.
class TensorBytes {
 public:
  const void* data() const { return data_; }
  int64_t size() const { return size_; }

  // Points into `bytes` when it is aligned to `alignment`, otherwise copies it into owned storage.
  static TensorBytes View(std::string_view bytes, size_t alignment);

 private:
  const void* data_ = nullptr;
  int64_t size_ = 0;
  std::shared_ptr<uint64_t[]> copy_;  // set only when `bytes` was misaligned
};

struct ValidatedForward {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kFP32;
  TensorBytes q, k, v;

  // The backend arguments, with the caller's output buffers.
  ForwardArgs Args(void* out, float* lse) const;
};

struct ValidatedBackward {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kFP32;
  TensorBytes q, k, v, out, lse, grad_out;

  BackwardArgs Args(void* grad_q, void* grad_k, void* grad_v) const;
};

// `backend` may be null (skips Backend::CheckSupported). The returned pointers stay valid while
// `request` lives and is not modified.
absl::StatusOr<ValidatedForward> ValidateForwardRequest(const v1::ForwardRequest& request,
                                                        const RequestLimits& limits,
                                                        const Backend* backend);
absl::StatusOr<ValidatedBackward> ValidateBackwardRequest(const v1::BackwardRequest& request,
                                                          const RequestLimits& limits,
                                                          const Backend* backend);

// Wire <-> internal dtype. FromProto rejects DTYPE_UNSPECIFIED and unknown values naming `field`.
v1::DType ToProto(DType dtype);
absl::StatusOr<DType> FromProto(int dtype, absl::string_view field);

// The wire shape of the logsumexp: dense [batch, heads_q, seqlen_q], packed [heads_q, total_q].
std::vector<int64_t> LseShape(const AttentionShape& shape);

}  // namespace attnd
