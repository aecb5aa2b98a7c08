// Client::ForwardStream / BackwardStream: one call over the daemon's streamed RPCs, for tensors
// beyond protobuf's 2 GiB message limit (proto: "Streamed calls"). The header goes first (the
// request without tensor bytes), then every inline tensor in chunks whose slices reference the
// caller's memory; the response header and chunks are copied straight into the output buffers
// (or into the response message's strings).
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "client/attnd/client.h"
#include "client/attnd/grpc_status.h"
#include "client/attnd/wire_messages.h"
#include "server/transport/wire_decoder.h"
#include "server/transport/wire_encoder.h"

namespace attnd {
namespace {

constexpr int kChunkField = 2;  // {Forward,Backward}Stream{Request,Response}.chunk
constexpr int kChunkTensorFields[] = {kChunkField};

int64_t ShapeBytes(const v1::Tensor& t) {
  int64_t n = t.dtype() == v1::DTYPE_FP32 ? 4 : 2;
  for (int64_t d : t.shape()) n *= d;
  return n;
}

// Where the bytes of one response tensor go.
struct OutputSink {
  uint8_t* data = nullptr;
  int64_t size = 0;
  int64_t received = 0;
};

template <typename StreamRequest, typename StreamResponse, typename Request, typename Response>
class StreamCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamCall(const Request& request, const InputMap& inputs, const OutputMap& outputs, size_t chunk_bytes,
             const RangeCopier& copier)
      : outputs_(outputs), copier_(copier) {
    // The header: every field, each tensor without its bytes.
    StreamRequest head;
    Request* header = head.mutable_header();
    const google::protobuf::Descriptor* d = Request::descriptor();
    CopyFieldsExcept(request, header, [](const google::protobuf::FieldDescriptor* f) {
      return f->message_type() == v1::Tensor::descriptor();
    });
    for (int i = 0; i < d->field_count(); ++i) {
      const google::protobuf::FieldDescriptor* f = d->field(i);
      if (f->message_type() != v1::Tensor::descriptor()) continue;
      const google::protobuf::Reflection* r = request.GetReflection();
      if (!r->HasField(request, f)) continue;
      const auto& tensor = static_cast<const v1::Tensor&>(r->GetMessage(request, f));
      CopyFieldsExcept(tensor, header->GetReflection()->MutableMessage(header, f),
                       [](const google::protobuf::FieldDescriptor* t) { return t->number() == kTensorDataField; });
      // The bytes: the caller's buffer for this field, else the request's own data.
      const uint8_t* data = reinterpret_cast<const uint8_t*>(tensor.data().data());
      size_t size = tensor.data().size();
      for (const auto& [field, bytes] : inputs) {
        if (field == f->number() && !bytes.empty()) {
          data = static_cast<const uint8_t*>(bytes.data);
          size = bytes.size;
        }
      }
      for (size_t offset = 0; offset < size; offset += chunk_bytes) {
        StreamRequest part;
        part.mutable_chunk()->set_tensor(static_cast<uint32_t>(f->number()));
        part.mutable_chunk()->set_offset(offset);
        std::vector<TensorData> slices;
        slices.push_back({kChunkField, {SliceOf(data + offset, std::min(chunk_bytes, size - offset), nullptr)}});
        writes_.push_back(EncodeMessage(part, kChunkTensorFields, std::move(slices)));
      }
    }
    const std::string bytes = head.SerializeAsString();
    grpc::Slice slice(bytes.data(), bytes.size());
    writes_.insert(writes_.begin(), grpc::ByteBuffer(&slice, 1));
  }

  void Start() {
    StartRead(&in_);
    WriteNext();
    StartCall();
  }

  void OnWriteDone(bool ok) override {
    if (ok) WriteNext();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (absl::Status s = Consume(); !s.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (error_.ok()) error_ = s;
      context_.TryCancel();
      return;
    }
    in_.Clear();
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    done_ = true;
    cv_.notify_all();
  }

  absl::StatusOr<Response> Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    if (!error_.ok()) return error_;
    if (!status_.ok()) return FromGrpcStatus(status_);
    if (!have_header_) return absl::DataLossError("the stream ended without a response header");
    for (const auto& [field, sink] : sinks_) {
      if (sink.received != sink.size) {
        return absl::DataLossError(absl::StrCat("response tensor ", field, ": ", sink.received, " of ", sink.size,
                                                " bytes received"));
      }
    }
    return std::move(response_);
  }

  grpc::ClientContext* context() { return &context_; }

 private:
  void WriteNext() {
    if (next_ < writes_.size()) {
      StartWrite(&writes_[next_++]);
    } else if (next_++ == writes_.size()) {
      StartWritesDone();
    }
  }

  absl::Status Consume() {
    StreamResponse message;
    absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(in_, kChunkTensorFields, &message,
                                                                    StreamResponse::descriptor()->name());
    if (!decoded.ok()) return absl::DataLossError(decoded.status().message());
    if (message.has_header()) {
      response_ = std::move(*message.mutable_header());
      have_header_ = true;
      const google::protobuf::Descriptor* d = Response::descriptor();
      for (int i = 0; i < d->field_count(); ++i) {
        const google::protobuf::FieldDescriptor* f = d->field(i);
        if (f->message_type() != v1::Tensor::descriptor()) continue;
        auto* tensor = static_cast<v1::Tensor*>(response_.GetReflection()->MutableMessage(&response_, f));
        if (tensor->has_region() || tensor->shape_size() == 0) continue;
        OutputSink sink;
        sink.size = ShapeBytes(*tensor);
        for (const auto& [field, out] : outputs_) {
          if (field == f->number() && !out.empty()) {
            if (static_cast<int64_t>(out.size) != sink.size) {
              return absl::DataLossError(absl::StrCat(f->name(), ": the response carries ", sink.size,
                                                      " bytes, the output buffer holds ", out.size));
            }
            sink.data = static_cast<uint8_t*>(out.data);
          }
        }
        if (sink.data == nullptr) {
          tensor->mutable_data()->resize(static_cast<size_t>(sink.size));
          sink.data = reinterpret_cast<uint8_t*>(tensor->mutable_data()->data());
        }
        sinks_.emplace_back(f->number(), sink);
      }
      return absl::OkStatus();
    }
    if (!have_header_ || !message.has_chunk()) return absl::DataLossError("a response chunk came before the header");
    const SlicedBytes& bytes = decoded->data(kChunkField);
    for (auto& [field, sink] : sinks_) {
      if (field != static_cast<int>(message.chunk().tensor())) continue;
      if (message.chunk().offset() != static_cast<uint64_t>(sink.received) || bytes.size() > sink.size - sink.received) {
        return absl::DataLossError(absl::StrCat("response tensor ", field, ": chunk at ", message.chunk().offset(),
                                                " out of order or past the end"));
      }
      bytes.CopyTo(sink.data + sink.received, copier_);
      sink.received += bytes.size();
      return absl::OkStatus();
    }
    return absl::DataLossError(absl::StrCat("a response chunk names tensor ", message.chunk().tensor()));
  }

  grpc::ClientContext context_;
  const OutputMap outputs_;
  const RangeCopier& copier_;  // the client's, which outlives the blocking call
  std::vector<grpc::ByteBuffer> writes_;
  size_t next_ = 0;
  grpc::ByteBuffer in_;
  Response response_;
  bool have_header_ = false;
  std::vector<std::pair<int, OutputSink>> sinks_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
  absl::Status error_;
};

}  // namespace

absl::StatusOr<v1::ForwardResponse> Client::ForwardStream(const v1::ForwardRequest& request,
                                                          const ForwardBuffers& buffers, const CallOptions& call,
                                                          size_t chunk_bytes) {
  StreamCall<v1::ForwardStreamRequest, v1::ForwardStreamResponse, v1::ForwardRequest, v1::ForwardResponse> stream(
      request, InputsOf(buffers), OutputsOf(buffers), std::max<size_t>(chunk_bytes, 1), copier_);
  Prepare(call, stream.context());
  generic_->PrepareBidiStreamingCall(stream.context(), "/attnd.v1.Attention/ForwardStream", grpc::StubOptions(),
                                     &stream);
  stream.Start();
  return stream.Wait();
}

absl::StatusOr<v1::BackwardResponse> Client::BackwardStream(const v1::BackwardRequest& request,
                                                            const BackwardBuffers& buffers, const CallOptions& call,
                                                            size_t chunk_bytes) {
  StreamCall<v1::BackwardStreamRequest, v1::BackwardStreamResponse, v1::BackwardRequest, v1::BackwardResponse> stream(
      request, InputsOf(buffers), OutputsOf(buffers), std::max<size_t>(chunk_bytes, 1), copier_);
  Prepare(call, stream.context());
  generic_->PrepareBidiStreamingCall(stream.context(), "/attnd.v1.Attention/BackwardStream", grpc::StubOptions(),
                                     &stream);
  stream.Start();
  return stream.Wait();
}

}  // namespace attnd
