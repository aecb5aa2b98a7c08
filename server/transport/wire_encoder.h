// Encoding attnd messages into a grpc::ByteBuffer whose tensor bytes are sent from where they lie.
//
// The message's fields are serialized by protobuf except each tensor's `data`, which is framed by
// hand and appended as slices that reference the bytes: an output buffer of the daemon (the slice
// keeps the TensorBuffer alive until gRPC has written it) or the request strings of a client. A
// stock protobuf parser reads the result like any other message: field order is free on the wire.
#pragma once

#include <memory>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>
#include <google/protobuf/message.h>

#include "absl/types/span.h"
#include "server/transport/tensor_buffer.h"

namespace attnd {

// A slice over `size` bytes at `data` that keeps `owner` alive until gRPC lets the slice go.
grpc::Slice SliceOf(const void* data, size_t size, std::shared_ptr<const void> owner);
inline grpc::Slice SliceOf(const TensorBufferPtr& buffer) { return SliceOf(buffer->data(), buffer->size(), buffer); }

// The data of one tensor field, as slices.
struct TensorData {
  int field = 0;
  std::vector<grpc::Slice> slices;
};

// Encodes `message`. Its tensor fields (`tensor_fields`, attnd.v1.Tensor messages) are sent with
// their metadata from the message and their data from `data` when it has an entry for the field,
// else from the message's own `data` string, referenced in place: then `message_owner` must keep
// `message` alive (it is held by the slices; null means the caller guarantees it until the call ends).
grpc::ByteBuffer EncodeMessage(const google::protobuf::Message& message, absl::Span<const int> tensor_fields,
                               std::vector<TensorData> data, std::shared_ptr<const void> message_owner = nullptr);

// Copies every set field of `from` into `to` (same type) except those `skip` says to leave out:
// the way to take a message's metadata without copying its tensor bytes.
void CopyFieldsExcept(const google::protobuf::Message& from, google::protobuf::Message* to,
                      const std::function<bool(const google::protobuf::FieldDescriptor*)>& skip);

}  // namespace attnd
