#include "tests/client/test_backends.h"

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

}  // namespace attnd::testing
