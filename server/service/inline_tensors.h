// InlineTensors: the bytes of a call's tensors that travelled inside the call (not in a region).
// A unary call's come as pieces of the received message (DecodedInlineTensors); a streamed call's
// are assembled chunk by chunk into buffers as they arrive (stream_calls.cc).
#pragma once

#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "server/transport/range_copier.h"
#include "server/transport/tensor_buffer.h"
#include "server/transport/wire_decoder.h"

namespace attnd {

class InlineTensors {
 public:
  virtual ~InlineTensors() = default;
  // Bytes of the tensor in outer field `field` (0 when none travelled).
  virtual int64_t size(int field) const = 0;
  // Those bytes in a buffer of their own: gathered into one from `allocator` (the one copy they
  // cost), or handed over when they were assembled there already.
  virtual absl::StatusOr<TensorBufferPtr> Take(int field, TensorAllocator* allocator, absl::string_view name) = 0;
};

class DecodedInlineTensors final : public InlineTensors {
 public:
  // `copy` gathers the received slices (TransportContext::copier, which outlives the call).
  DecodedInlineTensors(DecodedMessage message, const RangeCopier& copy) : message_(std::move(message)), copy_(copy) {}
  int64_t size(int field) const override { return message_.data(field).size(); }
  absl::StatusOr<TensorBufferPtr> Take(int field, TensorAllocator* allocator, absl::string_view name) override {
    const SlicedBytes& data = message_.data(field);
    absl::StatusOr<TensorBufferPtr> buffer = allocator->Allocate(static_cast<size_t>(data.size()), name);
    if (buffer.ok()) data.CopyTo((*buffer)->data(), copy_);
    return buffer;
  }

 private:
  DecodedMessage message_;
  const RangeCopier& copy_;
};

}  // namespace attnd
