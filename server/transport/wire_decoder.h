// Decoding attnd messages straight from a received grpc::ByteBuffer, without protobuf's copies of
// tensor bytes.
//
// A request (or response) is split in two: the skeleton, i.e. the message with every tensor's
// `data` removed, which protobuf parses (it is small: shapes, params, handles), and each tensor's
// data as SlicedBytes pointing into the buffer's slices. The buffer's slices are kept alive by the
// DecodedMessage (and by any keep_alive() taken from it).
//
// `tensor_fields` names the fields of the outer message that are attnd.v1.Tensor messages (for a
// ForwardRequest: 1, 2, 3). Malformed wire data (truncated varints or lengths, groups, lengths past
// the end) gives INVALID_ARGUMENT naming `what` ("ForwardRequest").
#pragma once

#include <memory>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <google/protobuf/message.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/transport/sliced_bytes.h"

namespace attnd {

// The field number of attnd.v1.Tensor.data.
inline constexpr int kTensorDataField = 3;

class DecodedMessage {
 public:
  // Parses `buffer` into `skeleton` (cleared first) and the tensors' data.
  static absl::StatusOr<DecodedMessage> Decode(const grpc::ByteBuffer& buffer, absl::Span<const int> tensor_fields,
                                               google::protobuf::Message* skeleton, absl::string_view what);

  // The data bytes of the tensor in outer field `field` (empty when absent or empty).
  const SlicedBytes& data(int field) const;
  // Shares ownership of the received slices: pointers from data() stay valid while it lives.
  std::shared_ptr<const void> keep_alive() const { return slices_; }
  int64_t wire_bytes() const { return wire_bytes_; }

 private:
  std::shared_ptr<std::vector<grpc::Slice>> slices_;
  std::vector<std::pair<int, SlicedBytes>> data_;
  int64_t wire_bytes_ = 0;
};

}  // namespace attnd
