// InlineTensors: the bytes of a call's tensors that travelled inside the call (not in a region).
// A unary call's come as pieces of the received message (DecodedInlineTensors); a streamed call's
// are assembled chunk by chunk into buffers as they arrive (stream_calls.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "server/engine/parallel_copy.h"
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
  explicit DecodedInlineTensors(DecodedMessage message) : message_(std::move(message)) {}
  int64_t size(int field) const override { return message_.data(field).size(); }
  absl::StatusOr<TensorBufferPtr> Take(int field, TensorAllocator* allocator, absl::string_view name) override {
    const SlicedBytes& data = message_.data(field);
    absl::StatusOr<TensorBufferPtr> buffer = allocator->Allocate(static_cast<size_t>(data.size()), name);
    if (buffer.ok()) Gather(data, (*buffer)->data());
    return buffer;
  }

  // Over the engine's copy helpers (engine/parallel_copy.h): one core copies about 5 GB/s on the
  // H100 host, so the 48 MiB of a seqlen-4096 forward took ~9 ms of the worker alone, time the
  // call spends outside both transfer and kernel. Tensors under 1 MiB stay on the worker.
  static void Gather(const SlicedBytes& data, void* dest) {
    std::vector<engine::ParallelCopy::Range> ranges;
    ranges.reserve(data.pieces().size());
    auto* out = static_cast<uint8_t*>(dest);
    for (const SlicedBytes::Piece& piece : data.pieces()) {
      ranges.push_back({out, piece.data(), piece.size()});
      out += piece.size();
    }
    engine::ParallelCopy::Shared().Copy(ranges);
  }

 private:
  DecodedMessage message_;
};

}  // namespace attnd
