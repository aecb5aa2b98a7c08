#include "server/service/request_validation.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnd {

// The wire is little-endian and tensor bytes are handed to backends in place.
static_assert(std::endian::native == std::endian::little, "attnd uses protobuf tensor bytes in place");

namespace {

using v1::Tensor;

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status TooLarge(absl::string_view field, absl::string_view what) {
  return absl::ResourceExhaustedError(absl::StrCat(field, ": ", what));
}

std::string ShapeString(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string WireDTypeName(int dtype) {
  if (v1::DType_IsValid(dtype)) return v1::DType_Name(static_cast<v1::DType>(dtype));
  return absl::StrCat(dtype);
}

bool SameShape(const Tensor& a, const Tensor& b) {
  return a.shape_size() == b.shape_size() &&
         std::equal(a.shape().begin(), a.shape().end(), b.shape().begin());
}

// The names of a tensor's dimensions, for messages: "q.shape[1] (seqlen_q)".
struct TensorRole {
  absl::string_view name;                     // "q", "k", "grad_out", ...
  std::vector<absl::string_view> dense_dims;  // rank 4
  std::vector<absl::string_view> packed_dims; // rank 3
};

const TensorRole kQRole{"q", {"batch", "seqlen_q", "heads_q", "head_dim"}, {"total_q", "heads_q", "head_dim"}};
const TensorRole kKRole{"k", {"batch", "seqlen_k", "heads_kv", "head_dim"}, {"total_k", "heads_kv", "head_dim"}};
const TensorRole kVRole{"v", {"batch", "seqlen_k", "heads_kv", "head_dim"}, {"total_k", "heads_kv", "head_dim"}};
const TensorRole kOutRole{"out", kQRole.dense_dims, kQRole.packed_dims};
const TensorRole kGradOutRole{"grad_out", kQRole.dense_dims, kQRole.packed_dims};

std::string LayoutText(const TensorRole& role, bool packed) {
  const auto& dims = packed ? role.packed_dims : role.dense_dims;
  return absl::StrCat("rank ", dims.size(), " [", absl::StrJoin(dims, ", "), "] (",
                      packed ? "packed" : "dense", ")");
}

absl::Status CheckPresent(bool present, absl::string_view name, absl::string_view request) {
  if (present) return absl::OkStatus();
  return Invalid(name, absl::StrCat("missing (", request, " needs it)"));
}

// dtype set and equal to `want` (q's dtype) when given.
absl::StatusOr<DType> CheckDType(const Tensor& t, absl::string_view name, const DType* want,
                                 absl::string_view want_field) {
  absl::StatusOr<DType> dtype = FromProto(t.dtype(), absl::StrCat(name, ".dtype"));
  if (!dtype.ok()) return dtype.status();
  if (want != nullptr && *dtype != *want) {
    return Invalid(absl::StrCat(name, ".dtype"),
                   absl::StrCat(WireDTypeName(t.dtype()), " but ", want_field, " is ",
                                v1::DType_Name(ToProto(*want)), "; they must match"));
  }
  return dtype;
}

// Rank matches the layout, every dim in 1..INT32_MAX.
absl::Status CheckRankAndDims(const Tensor& t, const TensorRole& role, bool packed) {
  const auto& dims = packed ? role.packed_dims : role.dense_dims;
  if (t.shape_size() != static_cast<int>(dims.size())) {
    return Invalid(absl::StrCat(role.name, ".shape"),
                   absl::StrCat("expected ", LayoutText(role, packed), " like q, got rank ", t.shape_size(),
                                " ", ShapeString(t.shape())));
  }
  for (int i = 0; i < t.shape_size(); ++i) {
    const int64_t d = t.shape(i);
    if (d < 1 || d > kMaxDim) {
      return Invalid(absl::StrCat(role.name, ".shape[", i, "] (", dims[i], ")"),
                     absl::StrCat("must be in 1..", kMaxDim, ", got ", d));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckRegionSpan(const v1::RegionSpan& span, absl::string_view field, int64_t bytes, size_t alignment) {
  if (span.region_id().empty()) return Invalid(absl::StrCat(field, ".region_id"), "empty; name a registered region");
  if (span.size() != static_cast<uint64_t>(bytes)) {
    return Invalid(absl::StrCat(field, ".size"),
                   absl::StrCat(span.size(), " bytes, expected ", bytes, " (the tensor's shape x element size)"));
  }
  if (span.offset() % alignment != 0) {
    return Invalid(absl::StrCat(field, ".offset"),
                   absl::StrCat(span.offset(), " is not a multiple of the element size ", alignment));
  }
  return absl::OkStatus();
}

namespace {

// The tensor's bytes are exactly product(shape) * element size: in `data` (data_bytes of them), or
// in the region it names (then data must be empty). Dims are already in 1..INT32_MAX; the product
// is computed with overflow checks.
absl::Status CheckByteCount(const Tensor& t, absl::string_view name, DType dtype, int64_t data_bytes) {
  int64_t bytes = static_cast<int64_t>(ElementSize(dtype));
  for (int64_t d : t.shape()) {
    if (__builtin_mul_overflow(bytes, d, &bytes)) {
      return Invalid(absl::StrCat(name, ".shape"),
                     absl::StrCat(ShapeString(t.shape()), " overflows 64-bit byte counts"));
    }
  }
  if (t.has_region()) {
    if (data_bytes != 0) {
      return Invalid(absl::StrCat(name, ".data"),
                     absl::StrCat(data_bytes, " bytes set together with ", name,
                                  ".region; a tensor's bytes travel one way only"));
    }
    return CheckRegionSpan(t.region(), absl::StrCat(name, ".region"), bytes, ElementSize(dtype));
  }
  if (data_bytes != bytes) {
    return Invalid(absl::StrCat(name, ".data"),
                   absl::StrCat(data_bytes, " bytes, expected ", bytes, " (shape ", ShapeString(t.shape()),
                                " x ", ElementSize(dtype), " bytes per ", std::string(DTypeName(dtype)), " element)"));
  }
  return absl::OkStatus();
}

// The bytes of `t` that travel inside the message (0 when they lie in a region).
int64_t InlineBytes(const Tensor& t, const DataBytesFn& data_bytes) { return t.has_region() ? 0 : data_bytes(t); }

absl::Status CheckDim(const Tensor& t, int i, const TensorRole& role, bool packed, int64_t want,
                      absl::string_view want_field) {
  if (t.shape(i) == want) return absl::OkStatus();
  const auto& dims = packed ? role.packed_dims : role.dense_dims;
  return Invalid(absl::StrCat(role.name, ".shape[", i, "] (", dims[i], ")"),
                 absl::StrCat(t.shape(i), " but ", want_field, " is ", want));
}

absl::Status CheckCuSeqlens(const google::protobuf::RepeatedField<int32_t>& cu, absl::string_view name,
                            int64_t total, absl::string_view total_field) {
  if (cu.size() < 2) {
    return Invalid(name, absl::StrCat("needs batch + 1 >= 2 entries, got ", cu.size()));
  }
  if (cu[0] != 0) return Invalid(absl::StrCat(name, "[0]"), absl::StrCat("must be 0, got ", cu[0]));
  for (int i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1]) {
      return Invalid(absl::StrCat(name, "[", i, "]"),
                     absl::StrCat(cu[i], " is less than ", name, "[", i - 1, "] = ", cu[i - 1],
                                  "; offsets must be non-decreasing"));
    }
  }
  if (cu[cu.size() - 1] != total) {
    return Invalid(absl::StrCat(name, "[", cu.size() - 1, "]"),
                   absl::StrCat("last offset ", cu[cu.size() - 1], " must equal ", total_field, " = ", total));
  }
  return absl::OkStatus();
}

// What Forward and Backward share: q, k, v and the params, checked and turned into a shape.
struct CoreRequest {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kFP32;
};

absl::StatusOr<CoreRequest> ValidateCore(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const v1::AttentionParams& params, const RequestLimits& limits,
                                         const DataBytesFn& data_bytes) {
  CoreRequest core;
  absl::StatusOr<DType> dtype = CheckDType(q, "q", nullptr, "");
  if (!dtype.ok()) return dtype.status();
  core.dtype = *dtype;
  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    absl::StatusOr<DType> other = CheckDType(*t, name, &core.dtype, "q.dtype");
    if (!other.ok()) return other.status();
  }

  // q's rank decides the layout; k and v must follow it.
  if (q.shape_size() != 4 && q.shape_size() != 3) {
    return Invalid("q.shape", absl::StrCat("expected ", LayoutText(kQRole, false), " or ",
                                           LayoutText(kQRole, true), ", got rank ", q.shape_size(), " ",
                                           ShapeString(q.shape())));
  }
  const bool packed = q.shape_size() == 3;
  for (const auto& [t, role] : {std::pair{&q, &kQRole}, std::pair{&k, &kKRole}, std::pair{&v, &kVRole}}) {
    if (absl::Status s = CheckRankAndDims(*t, *role, packed); !s.ok()) return s;
  }

  // Shapes agree: same batch (dense), same head_dim, v exactly like k, GQA heads.
  const int r = packed ? 0 : 1;  // offset of the per-token dims
  if (!packed) {
    if (absl::Status s = CheckDim(k, 0, kKRole, packed, q.shape(0), "q.shape[0] (batch)"); !s.ok()) return s;
  }
  if (absl::Status s = CheckDim(k, r + 2, kKRole, packed, q.shape(r + 2), "q's head_dim"); !s.ok()) return s;
  if (!SameShape(v, k)) {
    return Invalid("v.shape", absl::StrCat(ShapeString(v.shape()), " must equal k.shape ", ShapeString(k.shape())));
  }
  const int64_t heads_q = q.shape(r + 1);
  const int64_t heads_kv = k.shape(r + 1);
  const int64_t head_dim = q.shape(r + 2);
  if (heads_q % heads_kv != 0) {
    return Invalid(absl::StrCat("k.shape[", r + 1, "] (heads_kv)"),
                   absl::StrCat(heads_kv, " does not divide q's heads_q = ", heads_q,
                                " (heads_q must be a multiple of heads_kv)"));
  }
  if (head_dim > kMaxHeadDim) {
    return Invalid(absl::StrCat("q.shape[", r + 2, "] (head_dim)"),
                   absl::StrCat(head_dim, " is outside 1..", kMaxHeadDim));
  }

  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    if (absl::Status s = CheckByteCount(*t, name, core.dtype, data_bytes(*t)); !s.ok()) return s;
  }

  // Token limits. The cap at INT32_MAX is not negotiable: offsets travel as int32 cu_seqlens.
  const int64_t max_tokens = std::min(limits.max_tokens_per_request, kMaxDim);
  const int64_t total_q = packed ? q.shape(0) : q.shape(0) * q.shape(1);
  const int64_t total_k = packed ? k.shape(0) : k.shape(0) * k.shape(1);
  if (total_q > max_tokens) {
    return TooLarge("q.shape", absl::StrCat(total_q, packed ? " tokens (total_q)" : " tokens (batch x seqlen_q)",
                                            " exceed max_tokens_per_request = ", max_tokens));
  }
  if (total_k > max_tokens) {
    return TooLarge("k.shape", absl::StrCat(total_k, packed ? " tokens (total_k)" : " tokens (batch x seqlen_k)",
                                            " exceed max_tokens_per_request = ", max_tokens));
  }

  // Params.
  const float scale = params.softmax_scale();
  if (std::isnan(scale) || std::isinf(scale) || scale < 0.f) {
    return Invalid("params.softmax_scale",
                   absl::StrCat(scale, " is not allowed; use a positive finite value, or 0 for 1/sqrt(head_dim)"));
  }
  core.options.causal = params.causal();
  core.options.deterministic = params.deterministic();
  core.options.softmax_scale =
      scale == 0.f ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim))) : scale;

  if (!packed) {
    if (params.cu_seqlens_q_size() > 0 || params.cu_seqlens_k_size() > 0) {
      return Invalid(params.cu_seqlens_q_size() > 0 ? "params.cu_seqlens_q" : "params.cu_seqlens_k",
                     "set for a dense (rank-4) request; cu_seqlens belong to the packed layout (rank-3 q, k, v)");
    }
    core.shape = DenseShape(static_cast<int>(q.shape(0)), static_cast<int>(q.shape(1)), static_cast<int>(k.shape(1)),
                            static_cast<int>(heads_q), static_cast<int>(heads_kv), static_cast<int>(head_dim));
    return core;
  }

  if (params.cu_seqlens_q_size() == 0 || params.cu_seqlens_k_size() == 0) {
    return Invalid(params.cu_seqlens_q_size() == 0 ? "params.cu_seqlens_q" : "params.cu_seqlens_k",
                   "required for the packed layout (rank-3 q, k, v): batch + 1 offsets");
  }
  if (params.cu_seqlens_k_size() != params.cu_seqlens_q_size()) {
    return Invalid("params.cu_seqlens_k", absl::StrCat(params.cu_seqlens_k_size(), " entries but cu_seqlens_q has ",
                                                       params.cu_seqlens_q_size(), "; both hold batch + 1 offsets"));
  }
  if (absl::Status s = CheckCuSeqlens(params.cu_seqlens_q(), "params.cu_seqlens_q", total_q, "q.shape[0] (total_q)");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckCuSeqlens(params.cu_seqlens_k(), "params.cu_seqlens_k", total_k, "k.shape[0] (total_k)");
      !s.ok()) {
    return s;
  }
  AttentionShape& shape = core.shape;
  shape.batch = params.cu_seqlens_q_size() - 1;
  shape.heads_q = static_cast<int>(heads_q);
  shape.heads_kv = static_cast<int>(heads_kv);
  shape.head_dim = static_cast<int>(head_dim);
  shape.total_q = total_q;
  shape.total_k = total_k;
  shape.packed = true;
  shape.cu_seqlens_q.assign(params.cu_seqlens_q().begin(), params.cu_seqlens_q().end());
  shape.cu_seqlens_k.assign(params.cu_seqlens_k().begin(), params.cu_seqlens_k().end());
  for (int b = 0; b < shape.batch; ++b) {
    shape.max_seqlen_q = std::max(shape.max_seqlen_q, shape.seqlen_q(b));
    shape.max_seqlen_k = std::max(shape.max_seqlen_k, shape.seqlen_k(b));
  }
  return core;
}

absl::Status CheckMessageBytes(absl::string_view what, int64_t bytes, absl::string_view parts,
                               const RequestLimits& limits) {
  const int64_t limit = limits.streamed ? limits.max_request_bytes : std::min(limits.max_request_bytes,
                                                                               kMaxRequestBytesLimit);
  if (bytes <= limit) return absl::OkStatus();
  return TooLarge(what, absl::StrCat(parts, " = ", bytes, " bytes exceed ", limits.limit_flag, " = ", limit,
                                     limits.streamed || !limits.larger_streams
                                         ? ""
                                         : " (larger tensors: ForwardStream / BackwardStream)"));
}

absl::Status CheckBackend(const Backend* backend, const AttentionShape& shape, DType dtype) {
  if (backend == nullptr) return absl::OkStatus();
  return backend->CheckSupported(shape, dtype);
}

}  // namespace

v1::DType ToProto(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return v1::DTYPE_BF16;
    case DType::kFP16: return v1::DTYPE_FP16;
    case DType::kFP32: return v1::DTYPE_FP32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<DType> FromProto(int dtype, absl::string_view field) {
  switch (dtype) {
    case v1::DTYPE_BF16: return DType::kBF16;
    case v1::DTYPE_FP16: return DType::kFP16;
    case v1::DTYPE_FP32: return DType::kFP32;
    case v1::DTYPE_UNSPECIFIED:
      return Invalid(field, "DTYPE_UNSPECIFIED; set DTYPE_BF16, DTYPE_FP16 or DTYPE_FP32");
    default:
      return Invalid(field, absl::StrCat("unknown value ", dtype, " (expected DTYPE_BF16, DTYPE_FP16 or DTYPE_FP32)"));
  }
}

std::vector<int64_t> LseShape(const AttentionShape& shape) {
  if (shape.packed) return {shape.heads_q, shape.total_q};
  return {shape.batch, shape.heads_q, shape.max_seqlen_q};
}

TensorBytes TensorBytes::View(std::string_view bytes, size_t alignment) {
  TensorBytes t;
  t.size_ = static_cast<int64_t>(bytes.size());
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignment == 0) {
    t.data_ = bytes.data();
    return t;
  }
  t.copy_.reset(new uint64_t[(bytes.size() + 7) / 8]);
  std::memcpy(t.copy_.get(), bytes.data(), bytes.size());
  t.data_ = t.copy_.get();
  return t;
}

ForwardArgs ValidatedForward::Args(void* out, float* lse) const {
  ForwardArgs args;
  args.shape = &shape;
  args.options = options;
  args.dtype = dtype;
  args.q = q.data();
  args.k = k.data();
  args.v = v.data();
  args.out = out;
  args.lse = lse;
  return args;
}

BackwardArgs ValidatedBackward::Args(void* grad_q, void* grad_k, void* grad_v) const {
  BackwardArgs args;
  args.shape = &shape;
  args.options = options;
  args.dtype = dtype;
  args.q = q.data();
  args.k = k.data();
  args.v = v.data();
  args.out = out.data();
  args.lse = static_cast<const float*>(lse.data());
  args.grad_out = grad_out.data();
  args.grad_q = grad_q;
  args.grad_k = grad_k;
  args.grad_v = grad_v;
  return args;
}

int64_t DataBytesOf(const v1::Tensor& t) { return static_cast<int64_t>(t.data().size()); }

TensorBytes TensorBytes::Shared(const void* data, int64_t size, std::shared_ptr<const void> owner) {
  TensorBytes t;
  t.data_ = data;
  t.size_ = size;
  t.owner_ = std::move(owner);
  return t;
}

absl::StatusOr<ValidatedForward> ValidateForwardHeader(const v1::ForwardRequest& request, const DataBytesFn& data_bytes,
                                                       const RequestLimits& limits, const Backend* backend) {
  for (const auto& [present, name] : {std::pair{request.has_q(), "q"}, std::pair{request.has_k(), "k"},
                                      std::pair{request.has_v(), "v"}}) {
    if (absl::Status s = CheckPresent(present, name, "ForwardRequest"); !s.ok()) return s;
  }
  absl::StatusOr<CoreRequest> core =
      ValidateCore(request.q(), request.k(), request.v(), request.params(), limits, data_bytes);
  if (!core.ok()) return core.status();

  const int64_t out_bytes = core->shape.q_elements() * static_cast<int64_t>(ElementSize(core->dtype));
  const int64_t lse_bytes = core->shape.lse_elements() * int64_t{sizeof(float)};
  if (request.has_out_region()) {
    if (absl::Status s = CheckRegionSpan(request.out_region(), "out_region", out_bytes, ElementSize(core->dtype));
        !s.ok()) {
      return s;
    }
  }
  if (request.has_lse_region()) {
    if (absl::Status s = CheckRegionSpan(request.lse_region(), "lse_region", lse_bytes, sizeof(float)); !s.ok()) {
      return s;
    }
  }
  const int64_t in_bytes = InlineBytes(request.q(), data_bytes) + InlineBytes(request.k(), data_bytes) +
                           InlineBytes(request.v(), data_bytes);
  if (absl::Status s = CheckMessageBytes("request", in_bytes, "q.data + k.data + v.data", limits); !s.ok()) return s;
  const int64_t response_bytes = (request.has_out_region() ? 0 : out_bytes) + (request.has_lse_region() ? 0 : lse_bytes);
  if (absl::Status s = CheckMessageBytes("response", response_bytes, "out + lse", limits); !s.ok()) return s;
  if (absl::Status s = CheckBackend(backend, core->shape, core->dtype); !s.ok()) return s;

  ValidatedForward v;
  v.shape = std::move(core->shape);
  v.options = core->options;
  v.dtype = core->dtype;
  return v;
}

absl::StatusOr<ValidatedForward> ValidateForwardRequest(const v1::ForwardRequest& request,
                                                        const RequestLimits& limits, const Backend* backend) {
  absl::StatusOr<ValidatedForward> v = ValidateForwardHeader(request, DataBytesOf, limits, backend);
  if (!v.ok()) return v;
  const size_t align = ElementSize(v->dtype);
  v->q = TensorBytes::View(request.q().data(), align);
  v->k = TensorBytes::View(request.k().data(), align);
  v->v = TensorBytes::View(request.v().data(), align);
  return v;
}

namespace {

// Backward's gradient regions: each the size of the tensor it receives.
absl::Status CheckGradRegions(const v1::BackwardRequest& request, const AttentionShape& shape, DType dtype) {
  const int64_t q_bytes = shape.q_elements() * static_cast<int64_t>(ElementSize(dtype));
  const int64_t kv_bytes = shape.kv_elements() * static_cast<int64_t>(ElementSize(dtype));
  for (const auto& [has, span, name, bytes] :
       {std::tuple{request.has_grad_q_region(), &request.grad_q_region(), "grad_q_region", q_bytes},
        std::tuple{request.has_grad_k_region(), &request.grad_k_region(), "grad_k_region", kv_bytes},
        std::tuple{request.has_grad_v_region(), &request.grad_v_region(), "grad_v_region", kv_bytes}}) {
    if (!has) continue;
    if (absl::Status s = CheckRegionSpan(*span, name, bytes, ElementSize(dtype)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

int64_t GradResponseBytes(const v1::BackwardRequest& request, const AttentionShape& shape, DType dtype) {
  const int64_t q_bytes = shape.q_elements() * static_cast<int64_t>(ElementSize(dtype));
  const int64_t kv_bytes = shape.kv_elements() * static_cast<int64_t>(ElementSize(dtype));
  return (request.has_grad_q_region() ? 0 : q_bytes) + (request.has_grad_k_region() ? 0 : kv_bytes) +
         (request.has_grad_v_region() ? 0 : kv_bytes);
}

}  // namespace

absl::StatusOr<ValidatedBackward> ValidateBackwardHeader(const v1::BackwardRequest& request,
                                                         const DataBytesFn& data_bytes, const RequestLimits& limits,
                                                         const Backend* backend) {
  if (!request.resident_handle().empty()) {
    return Invalid("resident_handle", "set: validate with ValidateResidentBackward (internal error)");
  }
  if (request.keep_resident_after()) {
    return Invalid("keep_resident_after", "set without resident_handle; it applies to a handle's backward only");
  }
  for (const auto& [present, name] :
       {std::pair{request.has_q(), "q"}, std::pair{request.has_k(), "k"}, std::pair{request.has_v(), "v"},
        std::pair{request.has_out(), "out"}, std::pair{request.has_lse(), "lse"},
        std::pair{request.has_grad_out(), "grad_out"}}) {
    if (absl::Status s = CheckPresent(present, name, "BackwardRequest"); !s.ok()) return s;
  }
  absl::StatusOr<CoreRequest> core =
      ValidateCore(request.q(), request.k(), request.v(), request.params(), limits, data_bytes);
  if (!core.ok()) return core.status();
  const bool packed = core->shape.packed;

  // out and grad_out: q's dtype and shape.
  for (const auto& [t, role] : {std::pair{&request.out(), &kOutRole}, std::pair{&request.grad_out(), &kGradOutRole}}) {
    absl::StatusOr<DType> dtype = CheckDType(*t, role->name, &core->dtype, "q.dtype");
    if (!dtype.ok()) return dtype.status();
    if (!SameShape(*t, request.q())) {
      return Invalid(absl::StrCat(role->name, ".shape"),
                     absl::StrCat(ShapeString(t->shape()), " must equal q.shape ", ShapeString(request.q().shape())));
    }
    if (absl::Status s = CheckByteCount(*t, role->name, core->dtype, data_bytes(*t)); !s.ok()) return s;
  }

  // lse: FP32, dense [batch, heads_q, seqlen_q] or packed [heads_q, total_q].
  const v1::Tensor& lse = request.lse();
  if (lse.dtype() != v1::DTYPE_FP32) {
    return Invalid("lse.dtype", absl::StrCat("must be DTYPE_FP32 (the forward's logsumexp), got ",
                                             WireDTypeName(lse.dtype())));
  }
  const std::vector<int64_t> lse_shape = LseShape(core->shape);
  if (!std::equal(lse.shape().begin(), lse.shape().end(), lse_shape.begin(), lse_shape.end())) {
    return Invalid("lse.shape", absl::StrCat("expected ", packed ? "[heads_q, total_q]" : "[batch, heads_q, seqlen_q]",
                                             " = ", ShapeString(lse_shape), ", got ", ShapeString(lse.shape())));
  }
  if (absl::Status s = CheckByteCount(lse, "lse", DType::kFP32, data_bytes(lse)); !s.ok()) return s;
  if (absl::Status s = CheckGradRegions(request, core->shape, core->dtype); !s.ok()) return s;

  int64_t in_bytes = 0;
  for (const v1::Tensor* t : {&request.q(), &request.k(), &request.v(), &request.out(), &lse, &request.grad_out()}) {
    in_bytes += InlineBytes(*t, data_bytes);
  }
  if (absl::Status s = CheckMessageBytes("request", in_bytes,
                                         "q.data + k.data + v.data + out.data + lse.data + grad_out.data", limits);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckMessageBytes("response", GradResponseBytes(request, core->shape, core->dtype),
                                         "grad_q + grad_k + grad_v", limits);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckBackend(backend, core->shape, core->dtype); !s.ok()) return s;

  ValidatedBackward v;
  v.shape = std::move(core->shape);
  v.options = core->options;
  v.dtype = core->dtype;
  return v;
}

absl::StatusOr<ValidatedBackward> ValidateBackwardRequest(const v1::BackwardRequest& request,
                                                          const RequestLimits& limits, const Backend* backend) {
  absl::StatusOr<ValidatedBackward> v = ValidateBackwardHeader(request, DataBytesOf, limits, backend);
  if (!v.ok()) return v;
  const size_t align = ElementSize(v->dtype);
  v->q = TensorBytes::View(request.q().data(), align);
  v->k = TensorBytes::View(request.k().data(), align);
  v->v = TensorBytes::View(request.v().data(), align);
  v->out = TensorBytes::View(request.out().data(), align);
  v->lse = TensorBytes::View(request.lse().data(), alignof(float));
  v->grad_out = TensorBytes::View(request.grad_out().data(), align);
  return v;
}

absl::StatusOr<ValidatedBackward> ValidateResidentBackward(const v1::BackwardRequest& request,
                                                           const DataBytesFn& data_bytes,
                                                           const ResidentForward& resident,
                                                           const RequestLimits& limits) {
  for (const auto& [present, name] :
       {std::pair{request.has_q(), "q"}, std::pair{request.has_k(), "k"}, std::pair{request.has_v(), "v"},
        std::pair{request.has_out(), "out"}, std::pair{request.has_lse(), "lse"}}) {
    if (present) {
      return Invalid(name, absl::StrCat("must be absent when resident_handle is set (handle ",
                                        request.resident_handle(), " holds it)"));
    }
  }
  if (absl::Status s = CheckPresent(request.has_grad_out(), "grad_out", "a BackwardRequest with resident_handle");
      !s.ok()) {
    return s;
  }
  const v1::AttentionParams& params = request.params();
  if (params.causal() || params.softmax_scale() != 0.f || params.cu_seqlens_q_size() > 0 ||
      params.cu_seqlens_k_size() > 0) {
    return Invalid("params", absl::StrCat("only `deterministic` may be set with resident_handle; causal, "
                                          "softmax_scale and cu_seqlens come from the forward of handle ",
                                          request.resident_handle()));
  }
  const v1::Tensor& grad_out = request.grad_out();
  absl::StatusOr<DType> dtype = FromProto(grad_out.dtype(), "grad_out.dtype");
  if (!dtype.ok()) return dtype.status();
  if (*dtype != resident.dtype) {
    return Invalid("grad_out.dtype", absl::StrCat(WireDTypeName(grad_out.dtype()), " but the forward of handle ",
                                                  request.resident_handle(), " ran in ",
                                                  v1::DType_Name(ToProto(resident.dtype))));
  }
  if (!std::equal(grad_out.shape().begin(), grad_out.shape().end(), resident.q_wire_shape.begin(),
                  resident.q_wire_shape.end())) {
    return Invalid("grad_out.shape", absl::StrCat(ShapeString(grad_out.shape()), " must equal the forward's q.shape ",
                                                  ShapeString(resident.q_wire_shape), " (handle ",
                                                  request.resident_handle(), ")"));
  }
  if (absl::Status s = CheckByteCount(grad_out, "grad_out", resident.dtype, data_bytes(grad_out)); !s.ok()) return s;
  if (absl::Status s = CheckGradRegions(request, resident.shape, resident.dtype); !s.ok()) return s;
  if (absl::Status s = CheckMessageBytes("request", InlineBytes(grad_out, data_bytes), "grad_out.data", limits);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckMessageBytes("response", GradResponseBytes(request, resident.shape, resident.dtype),
                                         "grad_q + grad_k + grad_v", limits);
      !s.ok()) {
    return s;
  }
  ValidatedBackward v;
  v.shape = resident.shape;
  v.options = resident.options;
  v.options.deterministic = params.deterministic();
  v.dtype = resident.dtype;
  return v;
}

}  // namespace attnd
