// The client's half of the zero-copy wire (server/transport/wire_*.h): requests encoded with their
// tensor bytes as slices over the caller's memory, responses decoded with their tensor bytes
// copied once into caller buffers (or into the response message's strings).
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/statusor.h"
#include "attnd/v1/attention.pb.h"
#include "client/attnd/tensor_buffers.h"
#include "server/transport/range_copier.h"

namespace attnd {

// Request field -> the caller's bytes for that tensor (fields without an entry use the message).
using InputMap = std::vector<std::pair<int, InputBytes>>;
// Response field -> where to copy that tensor's bytes.
using OutputMap = std::vector<std::pair<int, OutputBytes>>;

InputMap InputsOf(const ForwardBuffers& b);
OutputMap OutputsOf(const ForwardBuffers& b);
InputMap InputsOf(const BackwardBuffers& b);
OutputMap OutputsOf(const BackwardBuffers& b);

// Tensor bytes a request carries: caller bytes where `inputs` has them, else the message's `data`.
// INVALID_ARGUMENT when a tensor has caller bytes and bytes (or a region) in the message.
absl::StatusOr<int64_t> InlineTensorBytes(const google::protobuf::Message& request, const InputMap& inputs);

// INVALID_ARGUMENT when a tensor has both bytes in the message and caller bytes.
absl::StatusOr<grpc::ByteBuffer> EncodeForward(const v1::ForwardRequest& request, const InputMap& inputs,
                                               std::shared_ptr<const void> request_owner);
absl::StatusOr<grpc::ByteBuffer> EncodeBackward(const v1::BackwardRequest& request, const InputMap& inputs,
                                                std::shared_ptr<const void> request_owner);

// Decodes a response; tensors with an output buffer are copied there (their `data` left empty),
// the others into the message, by `copy`. DATA_LOSS when a buffer's size differs from the bytes
// received.
absl::Status DecodeForward(const grpc::ByteBuffer& buffer, const OutputMap& outputs, v1::ForwardResponse* response,
                           const RangeCopier& copy = CopyRangesSerially);
absl::Status DecodeBackward(const grpc::ByteBuffer& buffer, const OutputMap& outputs, v1::BackwardResponse* response,
                            const RangeCopier& copy = CopyRangesSerially);

}  // namespace attnd
