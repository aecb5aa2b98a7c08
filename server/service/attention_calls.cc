#include "server/service/attention_calls.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

// Which outer field of a request `t` is (the tensors are its direct fields).
template <typename Request>
int FieldOf(const Request& request, const v1::Tensor& t, absl::Span<const int> fields) {
  const google::protobuf::Reflection* r = request.GetReflection();
  for (int field : fields) {
    if (&r->GetMessage(request, request.GetDescriptor()->FindFieldByNumber(field)) == &t) return field;
  }
  return 0;
}

// A response tensor's metadata: dtype, shape and, when it went to a region, that region.
void Describe(v1::Tensor* t, DType dtype, const std::vector<int64_t>& shape, const v1::RegionSpan* region) {
  t->set_dtype(ToProto(dtype));
  t->mutable_shape()->Assign(shape.begin(), shape.end());
  if (region != nullptr) *t->mutable_region() = *region;
}

std::vector<int64_t> ShapeOf(const v1::Tensor& t) { return {t.shape().begin(), t.shape().end()}; }

int64_t Bytes(int64_t elements, DType dtype) { return elements * static_cast<int64_t>(ElementSize(dtype)); }

absl::Duration TtlOf(const v1::ResidentOptions& options) { return absl::Milliseconds(options.ttl_ms()); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Forward

absl::StatusOr<std::unique_ptr<ForwardCall>> ForwardCall::Create(v1::ForwardRequest header,
                                                                 std::unique_ptr<InlineTensors> inline_tensors,
                                                                 const CallEnv& env) {
  InlineTensors* data = inline_tensors.get();
  absl::StatusOr<ValidatedForward> validated = ValidateForwardHeader(
      header, [&](const v1::Tensor& t) { return data->size(FieldOf(header, t, kTensorFields)); }, env.limits,
      env.backend);
  if (!validated.ok()) return validated.status();
  if (header.keep_resident().keep()) {
    if (env.transport.resident == nullptr) {
      return absl::FailedPreconditionError("keep_resident: resident tensors are off on this daemon "
                                           "(--resident_bytes=0)");
    }
    const int64_t bytes = 2 * Bytes(validated->shape.q_elements(), validated->dtype) +  // q, out
                          2 * Bytes(validated->shape.kv_elements(), validated->dtype) +
                          validated->shape.lse_elements() * 4;
    const int64_t capacity = env.transport.resident->options().capacity_bytes;
    if (bytes > capacity) {
      return absl::ResourceExhaustedError(absl::StrCat("keep_resident: the call's ", bytes, " bytes exceed the "
                                                       "resident capacity of ", capacity, " bytes (--resident_bytes)"));
    }
  } else if (header.keep_resident().ttl_ms() != 0) {
    return absl::InvalidArgumentError("keep_resident.ttl_ms: set without keep_resident.keep");
  }
  return std::unique_ptr<ForwardCall>(new ForwardCall(std::move(header), std::move(inline_tensors), env,
                                                      *std::move(validated)));
}

absl::Status ForwardCall::Run(const CallControl& control, CallTimings* timings) {
  const bool keep = header_.keep_resident().keep();
  CallTensors tensors(env_.transport);
  ResidentTensors kept;
  for (const auto& [field, tensor, name, bytes, buffer] :
       {std::tuple{1, &header_.q(), "q", &call_.q, &kept.q}, std::tuple{2, &header_.k(), "k", &call_.k, &kept.k},
        std::tuple{3, &header_.v(), "v", &call_.v, &kept.v}}) {
    absl::StatusOr<TensorBytes> input = tensors.Input(*tensor, *inline_, field, name, keep, buffer);
    if (!input.ok()) return input.status();
    *bytes = *std::move(input);
  }
  // A resident forward computes into buffers the store keeps; an output region then gets a copy.
  const v1::RegionSpan* out_region = header_.has_out_region() ? &header_.out_region() : nullptr;
  const v1::RegionSpan* lse_region = header_.has_lse_region() ? &header_.lse_region() : nullptr;
  const int64_t out_bytes = Bytes(call_.shape.q_elements(), call_.dtype);
  const int64_t lse_bytes = call_.shape.lse_elements() * 4;
  absl::StatusOr<OutputTarget> out = tensors.Output(keep ? nullptr : out_region, "out_region", out_bytes);
  if (!out.ok()) return out.status();
  absl::StatusOr<OutputTarget> lse = tensors.Output(keep ? nullptr : lse_region, "lse_region", lse_bytes);
  if (!lse.ok()) return lse.status();
  OutputTarget out_copy, lse_copy;  // keep + region: where the result is copied to
  if (keep && out_region != nullptr) {
    absl::StatusOr<OutputTarget> t = tensors.Output(out_region, "out_region", out_bytes);
    if (!t.ok()) return t.status();
    out_copy = *t;
  }
  if (keep && lse_region != nullptr) {
    absl::StatusOr<OutputTarget> t = tensors.Output(lse_region, "lse_region", lse_bytes);
    if (!t.ok()) return t.status();
    lse_copy = *t;
  }
  if (absl::Status s = tensors.CheckOverlaps(); !s.ok()) return s;
  absl::StatusOr<int> device = tensors.Device();  // -1: host memory; else every tensor is on this GPU
  if (!device.ok()) return device.status();

  ForwardArgs args = call_.Args(out->data, static_cast<float*>(lse->data));
  args.control = control;
  args.timings = timings;
  if (*device >= 0) args.placement = TensorPlacement{MemorySpace::kDevice, *device};
  if (absl::Status s = env_.backend->Forward(args); !s.ok()) return s;
  if (out_copy.data != nullptr) std::memcpy(out_copy.data, out->data, out_bytes);
  if (lse_copy.data != nullptr) std::memcpy(lse_copy.data, lse->data, lse_bytes);

  Describe(response_.mutable_out(), call_.dtype, ShapeOf(header_.q()), out_region);
  Describe(response_.mutable_lse(), DType::kFP32, LseShape(call_.shape), lse_region);
  if (keep) {
    kept.shape = call_.shape;
    kept.options = call_.options;
    kept.dtype = call_.dtype;
    kept.q_wire_shape = ShapeOf(header_.q());
    kept.kv_wire_shape = ShapeOf(header_.k());
    kept.out = out->buffer;
    kept.lse = lse->buffer;
    absl::StatusOr<ResidentHandleInfo> handle = env_.transport.resident->Put(std::move(kept),
                                                                             TtlOf(header_.keep_resident()));
    if (!handle.ok()) return handle.status();
    v1::ResidentHandle* r = response_.mutable_resident();
    r->set_handle(handle->handle);
    r->set_bytes(handle->bytes);
    r->set_expires_in_ms(absl::ToInt64Milliseconds(handle->ttl));
  }
  if (out_region == nullptr) outputs_.push_back({1, out->buffer});
  if (lse_region == nullptr) outputs_.push_back({2, lse->buffer});
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Backward

absl::StatusOr<std::unique_ptr<BackwardCall>> BackwardCall::Create(v1::BackwardRequest header,
                                                                   std::unique_ptr<InlineTensors> inline_tensors,
                                                                   const CallEnv& env) {
  InlineTensors* data = inline_tensors.get();
  auto data_bytes = [&](const v1::Tensor& t) { return data->size(FieldOf(header, t, kTensorFields)); };
  if (header.resident_handle().empty()) {
    absl::StatusOr<ValidatedBackward> validated = ValidateBackwardHeader(header, data_bytes, env.limits, env.backend);
    if (!validated.ok()) return validated.status();
    return std::unique_ptr<BackwardCall>(
        new BackwardCall(std::move(header), std::move(inline_tensors), env, *std::move(validated), nullptr));
  }
  if (env.transport.resident == nullptr) {
    return absl::FailedPreconditionError("resident_handle: resident tensors are off on this daemon");
  }
  absl::StatusOr<std::shared_ptr<const ResidentTensors>> resident =
      env.transport.resident->Acquire(header.resident_handle(), "resident_handle");
  if (!resident.ok()) return resident.status();
  ResidentForward forward{(*resident)->shape, (*resident)->options, (*resident)->dtype, (*resident)->q_wire_shape};
  absl::StatusOr<ValidatedBackward> validated = ValidateResidentBackward(header, data_bytes, forward, env.limits);
  if (!validated.ok()) return validated.status();
  return std::unique_ptr<BackwardCall>(new BackwardCall(std::move(header), std::move(inline_tensors), env,
                                                        *std::move(validated), *std::move(resident)));
}

absl::Status BackwardCall::Run(const CallControl& control, CallTimings* timings) {
  CallTensors tensors(env_.transport);
  std::vector<std::tuple<int, const v1::Tensor*, const char*, TensorBytes*>> inputs{
      {6, &header_.grad_out(), "grad_out", &call_.grad_out}};
  if (resident_ != nullptr) {
    tensors.AddHostTensors("resident_handle");
    const ResidentTensors& r = *resident_;
    call_.q = TensorBytes::Shared(r.q->data(), static_cast<int64_t>(r.q->size()), resident_);
    call_.k = TensorBytes::Shared(r.k->data(), static_cast<int64_t>(r.k->size()), resident_);
    call_.v = TensorBytes::Shared(r.v->data(), static_cast<int64_t>(r.v->size()), resident_);
    call_.out = TensorBytes::Shared(r.out->data(), static_cast<int64_t>(r.out->size()), resident_);
    call_.lse = TensorBytes::Shared(r.lse->data(), static_cast<int64_t>(r.lse->size()), resident_);
  } else {
    inputs.insert(inputs.end(), {{1, &header_.q(), "q", &call_.q},
                                 {2, &header_.k(), "k", &call_.k},
                                 {3, &header_.v(), "v", &call_.v},
                                 {4, &header_.out(), "out", &call_.out},
                                 {5, &header_.lse(), "lse", &call_.lse}});
  }
  for (const auto& [field, tensor, name, bytes] : inputs) {
    TensorBufferPtr unused;
    absl::StatusOr<TensorBytes> input = tensors.Input(*tensor, *inline_, field, name, /*keep=*/false, &unused);
    if (!input.ok()) return input.status();
    *bytes = *std::move(input);
  }
  const int64_t q_bytes = Bytes(call_.shape.q_elements(), call_.dtype);
  const int64_t kv_bytes = Bytes(call_.shape.kv_elements(), call_.dtype);
  const v1::RegionSpan* regions[] = {header_.has_grad_q_region() ? &header_.grad_q_region() : nullptr,
                                     header_.has_grad_k_region() ? &header_.grad_k_region() : nullptr,
                                     header_.has_grad_v_region() ? &header_.grad_v_region() : nullptr};
  const char* names[] = {"grad_q_region", "grad_k_region", "grad_v_region"};
  const int64_t sizes[] = {q_bytes, kv_bytes, kv_bytes};
  OutputTarget grads[3];
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<OutputTarget> t = tensors.Output(regions[i], names[i], sizes[i]);
    if (!t.ok()) return t.status();
    grads[i] = *std::move(t);
  }
  if (absl::Status s = tensors.CheckOverlaps(); !s.ok()) return s;
  absl::StatusOr<int> device = tensors.Device();
  if (!device.ok()) return device.status();

  BackwardArgs args = call_.Args(grads[0].data, grads[1].data, grads[2].data);
  args.control = control;
  args.timings = timings;
  if (*device >= 0) args.placement = TensorPlacement{MemorySpace::kDevice, *device};
  if (absl::Status s = env_.backend->Backward(args); !s.ok()) return s;

  const std::vector<int64_t> q_shape =
      resident_ ? resident_->q_wire_shape : std::vector<int64_t>(header_.q().shape().begin(), header_.q().shape().end());
  const std::vector<int64_t> kv_shape =
      resident_ ? resident_->kv_wire_shape : std::vector<int64_t>(header_.k().shape().begin(), header_.k().shape().end());
  Describe(response_.mutable_grad_q(), call_.dtype, q_shape, regions[0]);
  Describe(response_.mutable_grad_k(), call_.dtype, kv_shape, regions[1]);
  Describe(response_.mutable_grad_v(), call_.dtype, kv_shape, regions[2]);
  for (int i = 0; i < 3; ++i) {
    if (regions[i] == nullptr) outputs_.push_back({i + 1, grads[i].buffer});
  }
  if (resident_ != nullptr && !header_.keep_resident_after()) {
    // The handle served its backward. Another call may have released it meanwhile: that is fine.
    (void)env_.transport.resident->Release(header_.resident_handle(), "released after its backward");
  }
  return absl::OkStatus();
}

}  // namespace attnd
