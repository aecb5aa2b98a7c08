// Request validation: from a wire ForwardRequest/BackwardRequest to the AttentionShape,
// AttentionOptions and DType every backend understands, before any work is done.
//
// Every rejection is an absl::Status whose message starts with the offending field ("q.shape: ...",
// "params.cu_seqlens_k[3]: ..."): INVALID_ARGUMENT for malformed requests, RESOURCE_EXHAUSTED for
// requests over the server's limits. A request that passes can be handed to Backend::Forward or
// Backward as is: every tensor has exactly the bytes its shape promises, shapes agree, cu_seqlens
// are consistent and the backend has said it runs the shape.
//
// Tensor bytes may travel in the message (`data`) or lie in a registered region (`region`, the
// shared-memory and CUDA IPC transports); validation checks both ways against the shape, and the
// front end resolves them afterwards (server/service/call_tensors.h). The *Header functions take
// the data sizes from a function, because the zero-copy front end parses tensor data apart from
// the message (server/transport/wire_decoder.h); ValidateForwardRequest / ValidateBackwardRequest
// take them from the message's `data` fields and point the validated request into them. Only
// when such a buffer is not aligned to its element type is it copied into aligned storage that the
// validated request owns.
#pragma once

#include <cstdint>
#include <functional>
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
// Largest streamed request (ForwardStream / BackwardStream) unless configured otherwise.
inline constexpr int64_t kDefaultMaxStreamRequestBytes = int64_t{16} << 30;
// 16 Mi tokens for q and for k/v: far beyond any single attention call in practice, and it keeps
// every offset inside cu_seqlens' int32 range.
inline constexpr int64_t kDefaultMaxTokensPerRequest = int64_t{1} << 24;

struct RequestLimits {
  // Sum of the request's tensor bytes; the response's tensor bytes are held to it too (a response
  // must also fit in one protobuf message). Capped at kMaxRequestBytesLimit.
  int64_t max_request_bytes = kDefaultMaxRequestBytes;
  // total_q and total_k (batch * seqlen for dense requests) each; capped at INT32_MAX internally.
  int64_t max_tokens_per_request = kDefaultMaxTokensPerRequest;
  // Streamed calls (ForwardStream/BackwardStream) carry their tensors in chunks, not in one
  // message: max_request_bytes is then theirs (--max_stream_request_bytes), not capped at 2 GiB.
  bool streamed = false;
  // Message-size errors cite this flag.
  const char* limit_flag = "max_request_bytes";
  // Whether streamed calls may carry more than this unary limit (a refusal then points to them).
  bool larger_streams = true;
};

// The bytes of one validated input tensor, aligned for its element type.
class TensorBytes {
 public:
  const void* data() const { return data_; }
  int64_t size() const { return size_; }
  // What keeps the bytes alive (a buffer, received slices, a region lease); may be null for views.
  const std::shared_ptr<const void>& owner() const { return owner_; }

  // Points into `bytes` when it is aligned to `alignment`, otherwise copies it into owned storage.
  static TensorBytes View(std::string_view bytes, size_t alignment);
  // Bytes kept alive by `owner`.
  static TensorBytes Shared(const void* data, int64_t size, std::shared_ptr<const void> owner);

 private:
  const void* data_ = nullptr;
  int64_t size_ = 0;
  std::shared_ptr<uint64_t[]> copy_;  // set only when `bytes` was misaligned
  std::shared_ptr<const void> owner_;
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

// The data bytes of a tensor: DataBytesOf reads its `data` field.
using DataBytesFn = std::function<int64_t(const v1::Tensor&)>;
int64_t DataBytesOf(const v1::Tensor& t);

// Shape, options and dtype only; the tensors' bytes are left to resolve. Also checks the transport
// fields: regions (sizes, alignment; whether they exist is the registry's to say), output regions.
// The message-size limits count only bytes that travel in the message.
absl::StatusOr<ValidatedForward> ValidateForwardHeader(const v1::ForwardRequest& request, const DataBytesFn& data_bytes,
                                                       const RequestLimits& limits, const Backend* backend);
// A BackwardRequest without resident_handle.
absl::StatusOr<ValidatedBackward> ValidateBackwardHeader(const v1::BackwardRequest& request,
                                                         const DataBytesFn& data_bytes, const RequestLimits& limits,
                                                         const Backend* backend);

// What a resident handle holds, as the backward of it is checked.
struct ResidentForward {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kFP32;
  std::vector<int64_t> q_wire_shape;  // the forward's q.shape; grad_out must match it
};
// A BackwardRequest naming resident_handle: only grad_out (and gradient regions, `deterministic`).
absl::StatusOr<ValidatedBackward> ValidateResidentBackward(const v1::BackwardRequest& request,
                                                           const DataBytesFn& data_bytes,
                                                           const ResidentForward& resident,
                                                           const RequestLimits& limits);

// INVALID_ARGUMENT naming `field` unless the span names a region, has exactly `bytes` bytes and an
// offset aligned to `alignment`.
absl::Status CheckRegionSpan(const v1::RegionSpan& span, absl::string_view field, int64_t bytes, size_t alignment);

// `backend` may be null (skips Backend::CheckSupported). The returned pointers stay valid while
// `request` lives and is not modified. Tensors naming a region get no bytes here.
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
