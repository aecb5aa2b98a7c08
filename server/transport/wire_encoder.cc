#include "server/transport/wire_encoder.h"

#include <algorithm>
#include <string>

#include "server/transport/wire_decoder.h"

namespace attnd {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

void AppendLengthDelimitedTag(std::string* out, int field) { AppendVarint(out, (uint64_t(field) << 3) | 2); }

void CopyField(const Message& from, Message* to, const FieldDescriptor* f) {
  const Reflection* in = from.GetReflection();
  const Reflection* out = to->GetReflection();
  if (f->is_repeated()) {
    const int n = in->FieldSize(from, f);
    for (int i = 0; i < n; ++i) {
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32: out->AddInt32(to, f, in->GetRepeatedInt32(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_INT64: out->AddInt64(to, f, in->GetRepeatedInt64(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_UINT32: out->AddUInt32(to, f, in->GetRepeatedUInt32(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_UINT64: out->AddUInt64(to, f, in->GetRepeatedUInt64(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_FLOAT: out->AddFloat(to, f, in->GetRepeatedFloat(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_DOUBLE: out->AddDouble(to, f, in->GetRepeatedDouble(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_BOOL: out->AddBool(to, f, in->GetRepeatedBool(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_ENUM: out->AddEnumValue(to, f, in->GetRepeatedEnumValue(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_STRING: out->AddString(to, f, in->GetRepeatedString(from, f, i)); break;
        case FieldDescriptor::CPPTYPE_MESSAGE: out->AddMessage(to, f)->CopyFrom(in->GetRepeatedMessage(from, f, i)); break;
      }
    }
    return;
  }
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: out->SetInt32(to, f, in->GetInt32(from, f)); break;
    case FieldDescriptor::CPPTYPE_INT64: out->SetInt64(to, f, in->GetInt64(from, f)); break;
    case FieldDescriptor::CPPTYPE_UINT32: out->SetUInt32(to, f, in->GetUInt32(from, f)); break;
    case FieldDescriptor::CPPTYPE_UINT64: out->SetUInt64(to, f, in->GetUInt64(from, f)); break;
    case FieldDescriptor::CPPTYPE_FLOAT: out->SetFloat(to, f, in->GetFloat(from, f)); break;
    case FieldDescriptor::CPPTYPE_DOUBLE: out->SetDouble(to, f, in->GetDouble(from, f)); break;
    case FieldDescriptor::CPPTYPE_BOOL: out->SetBool(to, f, in->GetBool(from, f)); break;
    case FieldDescriptor::CPPTYPE_ENUM: out->SetEnumValue(to, f, in->GetEnumValue(from, f)); break;
    case FieldDescriptor::CPPTYPE_STRING: out->SetString(to, f, in->GetString(from, f)); break;
    case FieldDescriptor::CPPTYPE_MESSAGE: out->MutableMessage(to, f)->CopyFrom(in->GetMessage(from, f)); break;
  }
}

bool IsTensorField(const FieldDescriptor* f, absl::Span<const int> tensor_fields) {
  return f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated() &&
         std::find(tensor_fields.begin(), tensor_fields.end(), f->number()) != tensor_fields.end();
}

}  // namespace

grpc::Slice SliceOf(const void* data, size_t size, std::shared_ptr<const void> owner) {
  if (owner == nullptr) return grpc::Slice(data, size, grpc::Slice::STATIC_SLICE);
  auto* keep = new std::shared_ptr<const void>(std::move(owner));
  return grpc::Slice(const_cast<void*>(data), size,
                     [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); }, keep);
}

void CopyFieldsExcept(const Message& from, Message* to, const std::function<bool(const FieldDescriptor*)>& skip) {
  std::vector<const FieldDescriptor*> fields;
  from.GetReflection()->ListFields(from, &fields);
  for (const FieldDescriptor* f : fields) {
    if (!skip(f)) CopyField(from, to, f);
  }
}

grpc::ByteBuffer EncodeMessage(const Message& message, absl::Span<const int> tensor_fields,
                               std::vector<TensorData> data, std::shared_ptr<const void> message_owner) {
  // Every field but the tensors, serialized by protobuf.
  std::unique_ptr<Message> rest(message.New());
  CopyFieldsExcept(message, rest.get(), [&](const FieldDescriptor* f) { return IsTensorField(f, tensor_fields); });
  std::string head = rest->SerializeAsString();

  std::vector<grpc::Slice> slices;
  const Reflection* reflection = message.GetReflection();
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  for (int field : tensor_fields) {
    const FieldDescriptor* f = descriptor->FindFieldByNumber(field);
    auto given = std::find_if(data.begin(), data.end(), [field](const TensorData& d) { return d.field == field; });
    if (f == nullptr || (!reflection->HasField(message, f) && given == data.end())) continue;
    const Message& tensor = reflection->GetMessage(message, f);
    const FieldDescriptor* data_field = tensor.GetDescriptor()->FindFieldByNumber(kTensorDataField);
    std::unique_ptr<Message> meta(tensor.New());
    CopyFieldsExcept(tensor, meta.get(), [data_field](const FieldDescriptor* d) { return d == data_field; });
    std::string meta_bytes = meta->SerializeAsString();

    std::vector<grpc::Slice> payload;
    if (given != data.end()) {
      payload = std::move(given->slices);
    } else {
      std::string scratch;
      const std::string& own = tensor.GetReflection()->GetStringReference(tensor, data_field, &scratch);
      if (&own == &scratch) {  // not stored as a string (never for attnd.v1.Tensor): send a copy
        auto copy = std::make_shared<const std::string>(std::move(scratch));
        if (!copy->empty()) payload.push_back(SliceOf(copy->data(), copy->size(), copy));
      } else if (!own.empty()) {
        payload.push_back(SliceOf(own.data(), own.size(), message_owner));
      }
    }
    size_t n = 0;
    for (const grpc::Slice& s : payload) n += s.size();
    // field { meta..., data (tag 3) = n bytes }
    const size_t tensor_len = meta_bytes.size() + (n > 0 ? 1 + VarintSize(n) + n : 0);
    AppendLengthDelimitedTag(&head, field);
    AppendVarint(&head, tensor_len);
    head.append(meta_bytes);
    if (n > 0) {
      AppendLengthDelimitedTag(&head, kTensorDataField);
      AppendVarint(&head, n);
      slices.emplace_back(head.data(), head.size());  // copies the small framing
      head.clear();
      for (grpc::Slice& s : payload) slices.push_back(std::move(s));
    }
  }
  if (!head.empty()) slices.emplace_back(head.data(), head.size());
  return grpc::ByteBuffer(slices.data(), slices.size());
}

}  // namespace attnd
