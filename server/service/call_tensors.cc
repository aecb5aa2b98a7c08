#include "server/service/call_tensors.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace attnd {

absl::StatusOr<ResolvedSpan> CallTensors::Resolve(const v1::RegionSpan& span, absl::string_view name, bool output) {
  if (context_.regions == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(name, ": this daemon serves no shared-memory regions "
                                                      "(start it with --region_socket)"));
  }
  absl::StatusOr<ResolvedSpan> resolved =
      context_.regions->Resolve(span.region_id(), span.key(), span.offset(), span.size(), name);
  if (!resolved.ok()) return resolved.status();
  if (resolved->kind == MemoryKind::kDevice && !context_.backend_takes_device_memory) {
    return absl::FailedPreconditionError(absl::StrCat(name, ": region ", span.region_id(), " is GPU memory (CUDA "
                                                      "IPC), and this daemon's backend reads host buffers only"));
  }
  leases_.push_back(resolved->lease);
  placements_.emplace_back(std::string(name), resolved->kind == MemoryKind::kDevice ? resolved->device : -1);
  spans_.push_back({std::string(name), span.region_id(), span.offset(), span.offset() + span.size(), output});
  return resolved;
}

absl::StatusOr<TensorBytes> CallTensors::Input(const v1::Tensor& tensor, InlineTensors& inline_tensors, int field,
                                               absl::string_view name, bool keep, TensorBufferPtr* buffer) {
  if (tensor.has_region()) {
    absl::StatusOr<ResolvedSpan> span = Resolve(tensor.region(), absl::StrCat(name, ".region"), /*output=*/false);
    if (!span.ok()) return span.status();
    if (!keep) return TensorBytes::Shared(span->data, static_cast<int64_t>(span->size), span->lease);
    if (span->kind == MemoryKind::kDevice) {
      return absl::InvalidArgumentError(absl::StrCat(name, ".region: keep_resident takes host tensors; tensors in a "
                                                     "GPU region (CUDA IPC) stay on your GPU between calls anyway"));
    }
    absl::StatusOr<TensorBufferPtr> copy = context_.allocator->Allocate(span->size, name);
    if (!copy.ok()) return copy.status();
    std::memcpy((*copy)->data(), span->data, span->size);
    *buffer = *copy;
    return TensorBytes::Shared((*copy)->data(), static_cast<int64_t>(span->size), *copy);
  }
  absl::StatusOr<TensorBufferPtr> taken = inline_tensors.Take(field, context_.allocator, name);
  if (!taken.ok()) return taken.status();
  placements_.emplace_back(std::string(name), -1);
  *buffer = *taken;
  return TensorBytes::Shared((*taken)->data(), static_cast<int64_t>((*taken)->size()), *taken);
}

absl::StatusOr<OutputTarget> CallTensors::Output(const v1::RegionSpan* region, absl::string_view name, int64_t bytes) {
  OutputTarget target;
  if (region != nullptr) {
    absl::StatusOr<ResolvedSpan> span = Resolve(*region, name, /*output=*/true);
    if (!span.ok()) return span.status();
    target.data = span->data;
    return target;
  }
  absl::StatusOr<TensorBufferPtr> buffer = context_.allocator->Allocate(static_cast<size_t>(bytes), name);
  if (!buffer.ok()) return buffer.status();
  placements_.emplace_back(std::string(name), -1);
  target.buffer = *std::move(buffer);
  target.data = target.buffer->data();
  return target;
}

absl::StatusOr<int> CallTensors::Device() const {
  if (placements_.empty()) return -1;
  const auto& [first_name, first] = placements_.front();
  for (const auto& [name, device] : placements_) {
    if (device == first) continue;
    auto where = [](int d) { return d < 0 ? std::string("host memory") : absl::StrCat("GPU ", d, " (CUDA IPC)"); };
    return absl::InvalidArgumentError(absl::StrCat(name, ": in ", where(device), " but ", first_name, " is in ",
                                                   where(first), "; a call's tensors, inputs and outputs, must all "
                                                   "be in host memory or all in GPU regions of one device"));
  }
  return first;
}

absl::Status CallTensors::CheckOverlaps() const {
  for (size_t i = 0; i < spans_.size(); ++i) {
    for (size_t j = 0; j < spans_.size(); ++j) {
      const Span& a = spans_[i];
      const Span& b = spans_[j];
      if (i == j || !a.output || (b.output && j < i)) continue;
      if (a.region_id == b.region_id && a.begin < b.end && b.begin < a.end) {
        return absl::InvalidArgumentError(absl::StrCat(a.name, ": bytes [", a.begin, ", ", a.end, ") of region ",
                                                       a.region_id, " overlap ", b.name, " [", b.begin, ", ", b.end,
                                                       "); an output may share its bytes with no other tensor"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace attnd
