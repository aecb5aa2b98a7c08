#include "client/attnd/wire_messages.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/transport/wire_decoder.h"
#include "server/transport/wire_encoder.h"

namespace attnd {
namespace {

absl::Status BothGiven(const google::protobuf::FieldDescriptor& f) {
  return absl::InvalidArgumentError(absl::StrCat(f.name(), ": bytes given both in the request and as a buffer"));
}

constexpr int kForwardRequestTensors[] = {1, 2, 3};
constexpr int kForwardResponseTensors[] = {1, 2};
constexpr int kBackwardRequestTensors[] = {1, 2, 3, 4, 5, 6};
constexpr int kBackwardResponseTensors[] = {1, 2, 3};

absl::StatusOr<grpc::ByteBuffer> Encode(const google::protobuf::Message& request, absl::Span<const int> fields,
                                        const InputMap& inputs, std::shared_ptr<const void> owner) {
  std::vector<TensorData> data;
  const google::protobuf::Reflection* r = request.GetReflection();
  for (const auto& [field, bytes] : inputs) {
    if (bytes.empty()) continue;
    const google::protobuf::FieldDescriptor* f = request.GetDescriptor()->FindFieldByNumber(field);
    const auto& tensor = static_cast<const v1::Tensor&>(r->GetMessage(request, f));
    if (!tensor.data().empty() || tensor.has_region()) return BothGiven(*f);
    data.push_back({field, {SliceOf(bytes.data, bytes.size, nullptr)}});
  }
  return EncodeMessage(request, fields, std::move(data), std::move(owner));
}

absl::Status Decode(const grpc::ByteBuffer& buffer, absl::Span<const int> fields, const OutputMap& outputs,
                    google::protobuf::Message* response, const RangeCopier& copy) {
  absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(buffer, fields, response, response->GetTypeName());
  if (!decoded.ok()) return absl::DataLossError(decoded.status().message());
  const google::protobuf::Reflection* r = response->GetReflection();
  for (int field : fields) {
    const SlicedBytes& bytes = decoded->data(field);
    const google::protobuf::FieldDescriptor* f = response->GetDescriptor()->FindFieldByNumber(field);
    auto out = std::find_if(outputs.begin(), outputs.end(),
                            [field](const auto& o) { return o.first == field && !o.second.empty(); });
    if (out != outputs.end()) {
      if (static_cast<int64_t>(out->second.size) != bytes.size()) {
        return absl::DataLossError(absl::StrCat(f->name(), ": the response carries ", bytes.size(),
                                                " bytes, the output buffer holds ", out->second.size));
      }
      bytes.CopyTo(out->second.data, copy);
      continue;
    }
    if (bytes.empty()) continue;
    std::string* data = static_cast<v1::Tensor*>(r->MutableMessage(response, f))->mutable_data();
    data->resize(static_cast<size_t>(bytes.size()));
    bytes.CopyTo(data->data(), copy);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int64_t> InlineTensorBytes(const google::protobuf::Message& request, const InputMap& inputs) {
  const google::protobuf::Descriptor* d = request.GetDescriptor();
  const google::protobuf::Reflection* r = request.GetReflection();
  int64_t bytes = 0;
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->message_type() != v1::Tensor::descriptor()) continue;
    const auto& tensor = static_cast<const v1::Tensor&>(r->GetMessage(request, f));
    auto in = std::find_if(inputs.begin(), inputs.end(),
                           [f](const auto& e) { return e.first == f->number() && !e.second.empty(); });
    if (in == inputs.end()) {
      bytes += static_cast<int64_t>(tensor.data().size());
      continue;
    }
    if (!tensor.data().empty() || tensor.has_region()) return BothGiven(*f);
    bytes += static_cast<int64_t>(in->second.size);
  }
  return bytes;
}

InputMap InputsOf(const ForwardBuffers& b) { return {{1, b.q}, {2, b.k}, {3, b.v}}; }
OutputMap OutputsOf(const ForwardBuffers& b) { return {{1, b.out}, {2, b.lse}}; }
InputMap InputsOf(const BackwardBuffers& b) {
  return {{1, b.q}, {2, b.k}, {3, b.v}, {4, b.out}, {5, b.lse}, {6, b.grad_out}};
}
OutputMap OutputsOf(const BackwardBuffers& b) { return {{1, b.grad_q}, {2, b.grad_k}, {3, b.grad_v}}; }

absl::StatusOr<grpc::ByteBuffer> EncodeForward(const v1::ForwardRequest& request, const InputMap& inputs,
                                               std::shared_ptr<const void> owner) {
  return Encode(request, kForwardRequestTensors, inputs, std::move(owner));
}

absl::StatusOr<grpc::ByteBuffer> EncodeBackward(const v1::BackwardRequest& request, const InputMap& inputs,
                                                std::shared_ptr<const void> owner) {
  return Encode(request, kBackwardRequestTensors, inputs, std::move(owner));
}

absl::Status DecodeForward(const grpc::ByteBuffer& buffer, const OutputMap& outputs, v1::ForwardResponse* response,
                           const RangeCopier& copy) {
  return Decode(buffer, kForwardResponseTensors, outputs, response, copy);
}

absl::Status DecodeBackward(const grpc::ByteBuffer& buffer, const OutputMap& outputs,
                            v1::BackwardResponse* response, const RangeCopier& copy) {
  return Decode(buffer, kBackwardResponseTensors, outputs, response, copy);
}

}  // namespace attnd
