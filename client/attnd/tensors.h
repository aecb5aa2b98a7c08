// Tensor helpers: build attnd.v1 Tensor messages and whole requests from host buffers, and read
// response tensors back into floats.
//
// Shapes follow the wire protocol (proto/attnd/v1/attention.proto): an AttentionShape with
// packed == false is sent dense (q [batch, seqlen_q, heads_q, head_dim], lse [batch, heads_q,
// seqlen_q]); with packed == true as the variable-length layout (q [total_q, heads_q, head_dim],
// lse [heads_q, total_q], cu_seqlens in the params). Build shapes with attnd::DenseShape() /
// attnd::PackedShape() from server/core/attention_problem.h. Float data is converted to the wire
// dtype with round-to-nearest-even (server/core/float16.h), the same rounding the daemon uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "attnd/v1/attention.pb.h"
#include "server/core/attention_problem.h"

namespace attnd {

v1::DType ToProtoDType(DType dtype);
absl::StatusOr<DType> FromProtoDType(v1::DType dtype);  // INVALID_ARGUMENT for UNSPECIFIED/unknown
absl::StatusOr<DType> ParseDType(absl::string_view name);  // "bf16", "fp16", "fp32"

// Converts floats to `dtype`'s little-endian bytes, and back.
std::string EncodeFloats(DType dtype, absl::Span<const float> values);
void EncodeFloatsInto(DType dtype, absl::Span<const float> values, std::string* bytes);
absl::Status DecodeFloats(DType dtype, absl::string_view bytes, absl::Span<float> values);

int64_t NumElements(absl::Span<const int64_t> shape);

// A tensor of `shape` holding `values` converted to `dtype`. INVALID_ARGUMENT when the number of
// values is not the product of the shape.
absl::StatusOr<v1::Tensor> MakeTensor(DType dtype, std::vector<int64_t> shape, absl::Span<const float> values);
// A tensor taking raw bytes already in `dtype`. INVALID_ARGUMENT when the byte count is not
// product(shape) * element size.
absl::StatusOr<v1::Tensor> MakeTensorFromBytes(DType dtype, std::vector<int64_t> shape, std::string bytes);

// All elements of a tensor as floats. INVALID_ARGUMENT (naming `what`) when the dtype is
// unspecified or the byte count disagrees with the shape.
absl::StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& tensor, absl::string_view what = "tensor");

// Wire shapes of the tensors of one request.
std::vector<int64_t> WireQShape(const AttentionShape& shape);    // also out, grad_out, grad_q
std::vector<int64_t> WireKVShape(const AttentionShape& shape);   // k, v, grad_k, grad_v
std::vector<int64_t> WireLseShape(const AttentionShape& shape);

// Wire params: causal, softmax_scale (0: the daemon uses 1/sqrt(head_dim)), deterministic, and the
// cu_seqlens of a packed shape.
v1::AttentionParams MakeParams(const AttentionShape& shape, const AttentionOptions& options);

// A complete ForwardRequest from float data (converted to `dtype`): q has shape.q_elements()
// values, k and v shape.kv_elements().
absl::StatusOr<v1::ForwardRequest> MakeForwardRequest(const AttentionShape& shape, DType dtype,
                                                      const AttentionOptions& options, absl::Span<const float> q,
                                                      absl::Span<const float> k, absl::Span<const float> v);

// A complete BackwardRequest from float data: out and grad_out like q (converted to `dtype`), lse
// shape.lse_elements() FP32 values in the wire layout (as a ForwardResponse returns it).
absl::StatusOr<v1::BackwardRequest> MakeBackwardRequest(const AttentionShape& shape, DType dtype,
                                                        const AttentionOptions& options, absl::Span<const float> q,
                                                        absl::Span<const float> k, absl::Span<const float> v,
                                                        absl::Span<const float> out, absl::Span<const float> lse,
                                                        absl::Span<const float> grad_out);

// The BackwardRequest for a forward call that already ran: q/k/v/params from the request, out/lse
// from its response, and grad_out (shaped and typed like out).
v1::BackwardRequest MakeBackwardRequest(const v1::ForwardRequest& forward, const v1::ForwardResponse& response,
                                        v1::Tensor grad_out);

// Bytes of tensor data (not protobuf framing) in a request or response.
int64_t PayloadBytes(const v1::ForwardRequest& request);
int64_t PayloadBytes(const v1::ForwardResponse& response);
int64_t PayloadBytes(const v1::BackwardRequest& request);
int64_t PayloadBytes(const v1::BackwardResponse& response);

}  // namespace attnd
