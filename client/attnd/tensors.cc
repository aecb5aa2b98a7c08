#include "client/attnd/tensors.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/core/float16.h"

namespace attnd {
namespace {

// DTypeName() returns a std::string_view, which this Abseil build does not take in StrCat.
absl::string_view Name(DType dtype) {
  const std::string_view name = DTypeName(dtype);
  return absl::string_view(name.data(), name.size());
}

}  // namespace

v1::DType ToProtoDType(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return v1::DTYPE_BF16;
    case DType::kFP16: return v1::DTYPE_FP16;
    case DType::kFP32: return v1::DTYPE_FP32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<DType> FromProtoDType(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_BF16: return DType::kBF16;
    case v1::DTYPE_FP16: return DType::kFP16;
    case v1::DTYPE_FP32: return DType::kFP32;
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat("dtype ", v1::DType_Name(dtype), " (", static_cast<int>(dtype),
                                                 ") is not one of BF16, FP16, FP32"));
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  if (name == "bf16") return DType::kBF16;
  if (name == "fp16") return DType::kFP16;
  if (name == "fp32") return DType::kFP32;
  return absl::InvalidArgumentError(absl::StrCat("dtype '", name, "' is not one of bf16, fp16, fp32"));
}

void EncodeFloatsInto(DType dtype, absl::Span<const float> values, std::string* bytes) {
  bytes->resize(values.size() * ElementSize(dtype));
  char* dst = bytes->data();
  switch (dtype) {
    case DType::kFP32:
      if (!values.empty()) std::memcpy(dst, values.data(), values.size() * sizeof(float));
      return;
    case DType::kBF16:
    case DType::kFP16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(values[i]) : FloatToFp16(values[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
  }
}

std::string EncodeFloats(DType dtype, absl::Span<const float> values) {
  std::string bytes;
  EncodeFloatsInto(dtype, values, &bytes);
  return bytes;
}

absl::Status DecodeFloats(DType dtype, absl::string_view bytes, absl::Span<float> values) {
  if (bytes.size() != values.size() * ElementSize(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("have ", bytes.size(), " bytes for ", values.size(), " ",
                                                   Name(dtype), " values (need ",
                                                   values.size() * ElementSize(dtype), ")"));
  }
  const char* src = bytes.data();
  switch (dtype) {
    case DType::kFP32:
      if (!values.empty()) std::memcpy(values.data(), src, bytes.size());
      break;
    case DType::kBF16:
    case DType::kFP16:
      for (size_t i = 0; i < values.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        values[i] = dtype == DType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h);
      }
      break;
  }
  return absl::OkStatus();
}

int64_t NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<v1::Tensor> MakeTensor(DType dtype, std::vector<int64_t> shape, absl::Span<const float> values) {
  if (NumElements(shape) != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(absl::StrCat("shape [", absl::StrJoin(shape, ", "), "] holds ",
                                                   NumElements(shape), " elements, got ", values.size(), " values"));
  }
  v1::Tensor tensor;
  tensor.set_dtype(ToProtoDType(dtype));
  tensor.mutable_shape()->Assign(shape.begin(), shape.end());
  EncodeFloatsInto(dtype, values, tensor.mutable_data());
  return tensor;
}

absl::StatusOr<v1::Tensor> MakeTensorFromBytes(DType dtype, std::vector<int64_t> shape, std::string bytes) {
  const int64_t need = NumElements(shape) * static_cast<int64_t>(ElementSize(dtype));
  if (static_cast<int64_t>(bytes.size()) != need) {
    return absl::InvalidArgumentError(absl::StrCat("shape [", absl::StrJoin(shape, ", "), "] of ", Name(dtype),
                                                   " needs ", need, " bytes, got ", bytes.size()));
  }
  v1::Tensor tensor;
  tensor.set_dtype(ToProtoDType(dtype));
  tensor.mutable_shape()->Assign(shape.begin(), shape.end());
  *tensor.mutable_data() = std::move(bytes);
  return tensor;
}

absl::StatusOr<std::vector<float>> TensorToFloats(const v1::Tensor& tensor, absl::string_view what) {
  absl::StatusOr<DType> dtype = FromProtoDType(tensor.dtype());
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", dtype.status().message()));
  // The shape comes from the peer: its product may overflow (found by tests/fuzz's
  // tensor_decoding target), so it is multiplied with checks, in bytes.
  int64_t n = 1;
  int64_t bytes = static_cast<int64_t>(ElementSize(*dtype));
  for (int64_t d : tensor.shape()) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": negative dimension ", d));
    if (__builtin_mul_overflow(n, d, &n) || __builtin_mul_overflow(bytes, d, &bytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape [", absl::StrJoin(tensor.shape(), ", "), "] overflows 64-bit sizes"));
    }
  }
  if (static_cast<int64_t>(tensor.data().size()) != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shape [", absl::StrJoin(tensor.shape(), ", "), "] of ",
                                                   Name(*dtype), " needs ", bytes,
                                                   " bytes, data has ", tensor.data().size()));
  }
  std::vector<float> values(n);
  if (absl::Status s = DecodeFloats(*dtype, tensor.data(), absl::MakeSpan(values)); !s.ok()) return s;
  return values;
}

std::vector<int64_t> WireQShape(const AttentionShape& s) {
  if (s.packed) return {s.total_q, s.heads_q, s.head_dim};
  return {s.batch, s.max_seqlen_q, s.heads_q, s.head_dim};
}

std::vector<int64_t> WireKVShape(const AttentionShape& s) {
  if (s.packed) return {s.total_k, s.heads_kv, s.head_dim};
  return {s.batch, s.max_seqlen_k, s.heads_kv, s.head_dim};
}

std::vector<int64_t> WireLseShape(const AttentionShape& s) {
  if (s.packed) return {s.heads_q, s.total_q};
  return {s.batch, s.heads_q, s.max_seqlen_q};
}

v1::AttentionParams MakeParams(const AttentionShape& shape, const AttentionOptions& options) {
  v1::AttentionParams params;
  params.set_causal(options.causal);
  params.set_softmax_scale(options.softmax_scale);
  params.set_deterministic(options.deterministic);
  if (shape.packed) {
    params.mutable_cu_seqlens_q()->Assign(shape.cu_seqlens_q.begin(), shape.cu_seqlens_q.end());
    params.mutable_cu_seqlens_k()->Assign(shape.cu_seqlens_k.begin(), shape.cu_seqlens_k.end());
  }
  return params;
}

namespace {

// Moves a built tensor into a request field, or returns the error naming the field.
absl::Status Put(absl::string_view field, absl::StatusOr<v1::Tensor> tensor, v1::Tensor* dst) {
  if (!tensor.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", tensor.status().message()));
  *dst = std::move(*tensor);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::ForwardRequest> MakeForwardRequest(const AttentionShape& shape, DType dtype,
                                                      const AttentionOptions& options, absl::Span<const float> q,
                                                      absl::Span<const float> k, absl::Span<const float> v) {
  v1::ForwardRequest request;
  absl::Status s = Put("q", MakeTensor(dtype, WireQShape(shape), q), request.mutable_q());
  if (s.ok()) s = Put("k", MakeTensor(dtype, WireKVShape(shape), k), request.mutable_k());
  if (s.ok()) s = Put("v", MakeTensor(dtype, WireKVShape(shape), v), request.mutable_v());
  if (!s.ok()) return s;
  *request.mutable_params() = MakeParams(shape, options);
  return request;
}

absl::StatusOr<v1::BackwardRequest> MakeBackwardRequest(const AttentionShape& shape, DType dtype,
                                                        const AttentionOptions& options, absl::Span<const float> q,
                                                        absl::Span<const float> k, absl::Span<const float> v,
                                                        absl::Span<const float> out, absl::Span<const float> lse,
                                                        absl::Span<const float> grad_out) {
  v1::BackwardRequest request;
  absl::Status s = Put("q", MakeTensor(dtype, WireQShape(shape), q), request.mutable_q());
  if (s.ok()) s = Put("k", MakeTensor(dtype, WireKVShape(shape), k), request.mutable_k());
  if (s.ok()) s = Put("v", MakeTensor(dtype, WireKVShape(shape), v), request.mutable_v());
  if (s.ok()) s = Put("out", MakeTensor(dtype, WireQShape(shape), out), request.mutable_out());
  if (s.ok()) s = Put("lse", MakeTensor(DType::kFP32, WireLseShape(shape), lse), request.mutable_lse());
  if (s.ok()) s = Put("grad_out", MakeTensor(dtype, WireQShape(shape), grad_out), request.mutable_grad_out());
  if (!s.ok()) return s;
  *request.mutable_params() = MakeParams(shape, options);
  return request;
}

v1::BackwardRequest MakeBackwardRequest(const v1::ForwardRequest& forward, const v1::ForwardResponse& response,
                                        v1::Tensor grad_out) {
  v1::BackwardRequest request;
  *request.mutable_q() = forward.q();
  *request.mutable_k() = forward.k();
  *request.mutable_v() = forward.v();
  *request.mutable_params() = forward.params();
  *request.mutable_out() = response.out();
  *request.mutable_lse() = response.lse();
  *request.mutable_grad_out() = std::move(grad_out);
  return request;
}

int64_t PayloadBytes(const v1::ForwardRequest& r) {
  return static_cast<int64_t>(r.q().data().size() + r.k().data().size() + r.v().data().size());
}

int64_t PayloadBytes(const v1::ForwardResponse& r) {
  return static_cast<int64_t>(r.out().data().size() + r.lse().data().size());
}

int64_t PayloadBytes(const v1::BackwardRequest& r) {
  return static_cast<int64_t>(r.q().data().size() + r.k().data().size() + r.v().data().size() +
                              r.out().data().size() + r.lse().data().size() + r.grad_out().data().size());
}

int64_t PayloadBytes(const v1::BackwardResponse& r) {
  return static_cast<int64_t>(r.grad_q().data().size() + r.grad_k().data().size() + r.grad_v().data().size());
}

}  // namespace attnd
