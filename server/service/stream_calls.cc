// AttentionService's streamed calls, ForwardStream and BackwardStream: the same calls as Forward
// and Backward for tensors beyond protobuf's 2 GiB message limit (proto: "Streamed calls").
//
// The request header is validated as soon as it arrives (against --max_stream_request_bytes, not
// the unary 2 GiB cap); each inline tensor then gets a buffer of its full size from the
// TensorAllocator, and every chunk is copied from the received slices straight to its offset
// there: one copy, as for a unary call. Chunks must come in order within a tensor (tensors may
// interleave) and fill it exactly. After the client half-closes, a worker runs the call; the
// response header and then the outputs' chunks are written one message at a time, each chunk's
// slices referencing the output buffer.
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/service/attention_service.h"
#include "server/service/call_reactor.h"
#include "server/transport/wire_decoder.h"
#include "server/transport/wire_encoder.h"

namespace attnd {
namespace {

// The field of ForwardStreamRequest / BackwardStreamRequest (and responses) holding a chunk.
constexpr int kChunkField = 2;
constexpr int kChunkTensorFields[] = {kChunkField};

// Bytes a tensor's shape and dtype promise (-1 when the dtype is not one or the product overflows:
// validation then names the problem).
int64_t ShapeBytes(const v1::Tensor& t) {
  absl::StatusOr<DType> dtype = FromProto(t.dtype(), "dtype");
  if (!dtype.ok()) return -1;
  int64_t bytes = static_cast<int64_t>(ElementSize(*dtype));
  for (int64_t d : t.shape()) {
    if (d < 0 || __builtin_mul_overflow(bytes, d, &bytes)) return -1;
  }
  return bytes;
}

// The inline tensors of a stream: promised by the header, filled by chunks.
class StreamedInlineTensors final : public InlineTensors {
 public:
  struct Slot {
    int field;
    std::string name;
    int64_t expected = 0;
    int64_t received = 0;
    TensorBufferPtr buffer;
  };

  void Promise(int field, std::string name, int64_t bytes) { slots_.push_back({field, std::move(name), bytes}); }

  int64_t size(int field) const override {
    const Slot* s = Find(field);
    return s == nullptr ? 0 : s->expected;
  }
  absl::StatusOr<TensorBufferPtr> Take(int field, TensorAllocator*, absl::string_view name) override {
    Slot* s = Find(field);
    if (s == nullptr || s->buffer == nullptr) return absl::InternalError(absl::StrCat(name, ": no streamed bytes"));
    return s->buffer;
  }

  // Buffers for every promised tensor, once the header is validated.
  absl::Status Allocate(TensorAllocator* allocator) {
    for (Slot& s : slots_) {
      if (s.expected <= 0) continue;
      absl::StatusOr<TensorBufferPtr> buffer = allocator->Allocate(static_cast<size_t>(s.expected), s.name);
      if (!buffer.ok()) return buffer.status();
      s.buffer = *std::move(buffer);
    }
    return absl::OkStatus();
  }

  absl::Status Append(uint32_t field, uint64_t offset, const SlicedBytes& data, const RangeCopier& copy) {
    Slot* s = Find(static_cast<int>(field));
    if (s == nullptr || s->expected <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("chunk.tensor: ", field, " names no tensor of the header that "
                                                     "travels in chunks"));
    }
    if (offset != static_cast<uint64_t>(s->received)) {
      return absl::InvalidArgumentError(absl::StrCat("chunk.offset: ", offset, " for ", s->name, ", expected ",
                                                     s->received, " (chunks of a tensor come in order)"));
    }
    if (data.size() > s->expected - s->received) {
      return absl::InvalidArgumentError(absl::StrCat("chunk.data: ", data.size(), " bytes at offset ", offset,
                                                     " run past the end of ", s->name, " (", s->expected, " bytes)"));
    }
    data.CopyTo(static_cast<uint8_t*>(s->buffer->data()) + s->received, copy);
    s->received += data.size();
    return absl::OkStatus();
  }

  absl::Status CheckComplete() const {
    for (const Slot& s : slots_) {
      if (s.received != s.expected) {
        return absl::InvalidArgumentError(absl::StrCat(s.name, ": the stream ended after ", s.received, " of its ",
                                                       s.expected, " bytes"));
      }
    }
    return absl::OkStatus();
  }

 private:
  Slot* Find(int field) {
    for (Slot& s : slots_) {
      if (s.field == field) return &s;
    }
    return nullptr;
  }
  const Slot* Find(int field) const { return const_cast<StreamedInlineTensors*>(this)->Find(field); }

  std::vector<Slot> slots_;
};

}  // namespace

template <typename Call, typename Header, typename StreamRequest, typename StreamResponse>
class StreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  using Clock = std::chrono::steady_clock;

  StreamReactor(AttentionService* service, RpcMethod method, const char* what, grpc::CallbackServerContext* context)
      : service_(service), method_(method), what_(what), context_(context), start_(Clock::now()) {
    entered_ = service_->EnterCall();
    if (!entered_) {
      Complete(ShuttingDown());
      return;
    }
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      EndOfRequest();
      return;
    }
    absl::Status status = Consume();
    in_.Clear();
    if (!status.ok()) {
      Complete(ToGrpc(status));
      return;
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Complete(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading the response"));
      return;
    }
    WriteNext();
  }

  void OnCancel() override { cancelled_.store(true, std::memory_order_release); }

  void OnDone() override {
    AccessRecord r;
    r.method = RpcMethodName(method_);
    r.code = StatusCodeName(code_);
    r.request_bytes = request_bytes_;
    r.response_bytes = response_bytes_;
    r.compute_s = compute_s_;
    r.total_s = std::chrono::duration<double>(Clock::now() - start_).count();
    AttentionService* service = service_;
    const bool entered = entered_;
    service->RecordCall(method_, r, code_);
    delete this;
    if (entered) service->CallDeleted();
  }

 private:
  void Complete(const grpc::Status& status) {
    code_ = status.error_code();
    Finish(status);
  }

  absl::Status Consume() {
    StreamRequest message;
    absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(in_, kChunkTensorFields, &message, what_);
    if (!decoded.ok()) return decoded.status();
    request_bytes_ += decoded->wire_bytes();
    if (message.has_header()) {
      if (call_ != nullptr) return absl::InvalidArgumentError("header: sent twice; a stream carries one call");
      return Begin(*message.mutable_header());
    }
    if (!message.has_chunk()) return absl::InvalidArgumentError("part: a stream message must hold a header or a chunk");
    if (call_ == nullptr) return absl::InvalidArgumentError("chunk: sent before the header");
    return streamed_->Append(message.chunk().tensor(), message.chunk().offset(), decoded->data(kChunkField),
                             service_->env_.transport.copier);
  }

  absl::Status Begin(Header& header) {
    auto streamed = std::make_unique<StreamedInlineTensors>();
    const google::protobuf::Reflection* reflection = header.GetReflection();
    for (int field : Call::kTensorFields) {
      const google::protobuf::FieldDescriptor* f = header.GetDescriptor()->FindFieldByNumber(field);
      if (!reflection->HasField(header, f)) continue;
      const auto& tensor = static_cast<const v1::Tensor&>(reflection->GetMessage(header, f));
      if (!tensor.data().empty()) {
        return absl::InvalidArgumentError(absl::StrCat("header.", f->name(), ".data: must be empty in a stream; send "
                                                       "the tensor's bytes in chunks"));
      }
      if (!tensor.has_region()) streamed->Promise(field, f->name(), ShapeBytes(tensor));
    }
    StreamedInlineTensors* raw = streamed.get();
    absl::StatusOr<std::unique_ptr<Call>> call = Call::Create(std::move(header), std::move(streamed),
                                                              service_->stream_env_);
    if (!call.ok()) return call.status();
    if (absl::Status s = raw->Allocate(service_->env_.transport.allocator); !s.ok()) return s;
    call_ = *std::move(call);
    streamed_ = raw;
    return absl::OkStatus();
  }

  void EndOfRequest() {
    if (call_ == nullptr) {
      Complete(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "header: the stream ended without one"));
      return;
    }
    if (absl::Status s = streamed_->CheckComplete(); !s.ok()) {
      Complete(ToGrpc(s));
      return;
    }
    const bool queued = service_->pool_->Submit([this] { Compute(); });
    if (!queued) {
      Complete(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "server busy: too many calls are waiting for a worker; retry later"));
    }
  }

  void Compute() {
    if (cancelled_.load(std::memory_order_acquire) || context_->IsCancelled()) {
      Complete(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled before it was computed"));
      return;
    }
    if (context_->deadline() <= std::chrono::system_clock::now()) {
      Complete(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed before the call was computed"));
      return;
    }
    const Clock::time_point t0 = Clock::now();
    absl::Status status;
    try {
      status = call_->Run(CallControl{context_->deadline(), &cancelled_});
    } catch (const std::bad_alloc&) {
      status = absl::ResourceExhaustedError("out of host memory while computing the response");
    }
    compute_s_ = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!status.ok()) {
      call_.reset();
      Complete(ToGrpc(status));
      return;
    }
    // The header, then each output in chunks whose slices reference its buffer.
    StreamResponse head;
    *head.mutable_header() = call_->response();
    const std::string bytes = head.SerializeAsString();
    grpc::Slice slice(bytes.data(), bytes.size());
    writes_.emplace_back(&slice, 1);
    const int64_t chunk = std::max<int64_t>(1, service_->settings_.stream_chunk_bytes);
    for (const OutputTensor& out : call_->outputs()) {
      const int64_t size = static_cast<int64_t>(out.buffer->size());
      for (int64_t offset = 0; offset < size; offset += chunk) {
        const int64_t n = std::min(chunk, size - offset);
        StreamResponse part;
        part.mutable_chunk()->set_tensor(static_cast<uint32_t>(out.field));
        part.mutable_chunk()->set_offset(static_cast<uint64_t>(offset));
        std::vector<TensorData> data;
        data.push_back({kChunkField, {SliceOf(static_cast<uint8_t*>(out.buffer->data()) + offset,
                                              static_cast<size_t>(n), out.buffer)}});
        writes_.push_back(EncodeMessage(part, kChunkTensorFields, std::move(data)));
      }
    }
    call_.reset();  // inputs and region leases go before the client hears back
    streamed_ = nullptr;
    WriteNext();
  }

  void WriteNext() {
    if (next_write_ == writes_.size()) {
      Complete(grpc::Status::OK);
      return;
    }
    response_bytes_ += static_cast<int64_t>(writes_[next_write_].Length());
    StartWrite(&writes_[next_write_++]);
  }

  AttentionService* const service_;
  const RpcMethod method_;
  const char* const what_;
  grpc::CallbackServerContext* const context_;
  const Clock::time_point start_;
  bool entered_ = false;  // counted in flight by the service
  grpc::ByteBuffer in_;
  std::unique_ptr<Call> call_;
  StreamedInlineTensors* streamed_ = nullptr;  // owned by call_
  std::vector<grpc::ByteBuffer> writes_;
  size_t next_write_ = 0;
  std::atomic<bool> cancelled_{false};
  grpc::StatusCode code_ = grpc::StatusCode::UNKNOWN;
  int64_t request_bytes_ = 0, response_bytes_ = 0;
  double compute_s_ = -1;
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionService::ForwardStream(
    grpc::CallbackServerContext* context) {
  return new StreamReactor<ForwardCall, v1::ForwardRequest, v1::ForwardStreamRequest, v1::ForwardStreamResponse>(
      this, RpcMethod::kForwardStream, "ForwardStreamRequest", context);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* AttentionService::BackwardStream(
    grpc::CallbackServerContext* context) {
  return new StreamReactor<BackwardCall, v1::BackwardRequest, v1::BackwardStreamRequest, v1::BackwardStreamResponse>(
      this, RpcMethod::kBackwardStream, "BackwardStreamRequest", context);
}

}  // namespace attnd
