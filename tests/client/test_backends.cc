#include "tests/client/test_backends.h"

#include <algorithm>
#include <cstring>

#include "server/core/float16.h"

namespace attnd::testing {
namespace {

// Applies f to every element of a host buffer of `dtype`, rounding back to it.
template <typename F>
void Transform(void* data, int64_t n, DType dtype, F f) {
  char* bytes = static_cast<char*>(data);
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == DType::kFP32) {
      float x;
      std::memcpy(&x, bytes + 4 * i, 4);
      x = f(x);
      std::memcpy(bytes + 4 * i, &x, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      const float x = f(dtype == DType::kBF16 ? Bf16ToFloat(h) : Fp16ToFloat(h));
      h = dtype == DType::kBF16 ? FloatToBf16(x) : FloatToFp16(x);
      std::memcpy(bytes + 2 * i, &h, 2);
    }
  }
}

}  // namespace

absl::Status CorruptingBackend::Forward(const ForwardArgs& args) {
  if (absl::Status s = inner_->Forward(args); !s.ok()) return s;
  Transform(args.out, args.shape->q_elements(), args.dtype, [](float x) { return x + 0.5f; });
  Transform(args.lse, args.shape->lse_elements(), DType::kFP32, [](float x) { return x + 0.5f; });
  return absl::OkStatus();
}

absl::Status CorruptingBackend::Backward(const BackwardArgs& args) {
  if (absl::Status s = inner_->Backward(args); !s.ok()) return s;
  auto scale = [](float x) { return 1.5f * x; };
  Transform(args.grad_q, args.shape->q_elements(), args.dtype, scale);
  Transform(args.grad_k, args.shape->kv_elements(), args.dtype, scale);
  Transform(args.grad_v, args.shape->kv_elements(), args.dtype, scale);
  return absl::OkStatus();
}

namespace {

void Xor(void* out, const void* a, const void* b, int64_t bytes) {
  auto* o = static_cast<uint8_t*>(out);
  const auto* x = static_cast<const uint8_t*>(a);
  const auto* y = static_cast<const uint8_t*>(b);
  for (int64_t i = 0; i < bytes; ++i) o[i] = x[i] ^ y[i];
}

}  // namespace

absl::Status ByteMixingBackend::CheckSupported(const AttentionShape& shape, DType) const {
  if (shape.q_elements() != shape.kv_elements()) {
    return absl::FailedPreconditionError("byte-mixing backend: q and k/v must have one size");
  }
  return absl::OkStatus();
}

absl::Status ByteMixingBackend::Forward(const ForwardArgs& a) {
  const int64_t bytes = a.shape->q_elements() * static_cast<int64_t>(ElementSize(a.dtype));
  Xor(a.out, a.q, a.k, bytes);
  Xor(a.out, a.out, a.v, bytes);
  std::memcpy(a.lse, a.q, static_cast<size_t>(std::min<int64_t>(bytes, a.shape->lse_elements() * 4)));
  return absl::OkStatus();
}

absl::Status ByteMixingBackend::Backward(const BackwardArgs& a) {
  const int64_t bytes = a.shape->q_elements() * static_cast<int64_t>(ElementSize(a.dtype));
  Xor(a.grad_q, a.q, a.grad_out, bytes);
  Xor(a.grad_k, a.k, a.out, bytes);
  std::memcpy(a.grad_v, a.v, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

}  // namespace attnd::testing
