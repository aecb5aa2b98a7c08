// libFuzzer target: bytes -> the client library's tensor decoding (client/attnd/tensors.h), what a
// client runs on every response a server (or anything pretending to be one) sends it. The first
// byte picks the input: a Tensor message for TensorToFloats, a ForwardResponse or BackwardResponse
// whose tensors are all decoded, or raw bytes for DecodeFloats with a dtype taken from the input.
// Nothing may crash, overflow or read out of bounds; a decoded tensor has product(shape) values.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/types/span.h"
#include "attnd/v1/attention.pb.h"
#include "client/attnd/tensors.h"

namespace {

void Decode(const attnd::v1::Tensor& tensor) {
  absl::StatusOr<std::vector<float>> values = attnd::TensorToFloats(tensor, "fuzzed");
  if (!values.ok()) return;
  int64_t n = 1;
  for (int64_t d : tensor.shape()) n *= d;
  if (static_cast<int64_t>(values->size()) != n) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 4;
  const char* rest = reinterpret_cast<const char*>(data + 1);
  const int rest_size = static_cast<int>(size - 1);
  switch (mode) {
    case 0: {
      attnd::v1::Tensor tensor;
      if (tensor.ParseFromArray(rest, rest_size)) Decode(tensor);
      break;
    }
    case 1: {
      attnd::v1::ForwardResponse response;
      if (!response.ParseFromArray(rest, rest_size)) break;
      Decode(response.out());
      Decode(response.lse());
      break;
    }
    case 2: {
      attnd::v1::BackwardResponse response;
      if (!response.ParseFromArray(rest, rest_size)) break;
      Decode(response.grad_q());
      Decode(response.grad_k());
      Decode(response.grad_v());
      break;
    }
    default: {
      if (size < 2) break;
      // data[1] picks the dtype, the rest are element bytes; decode as many values as they hold.
      const attnd::DType dtype = data[1] % 3 == 0 ? attnd::DType::kBF16
                                 : data[1] % 3 == 1 ? attnd::DType::kFP16 : attnd::DType::kFP32;
      const absl::string_view bytes(reinterpret_cast<const char*>(data + 2), size - 2);
      std::vector<float> values(bytes.size() / attnd::ElementSize(dtype));
      const absl::Status s = attnd::DecodeFloats(dtype, bytes, absl::MakeSpan(values));
      if (s.ok() != (bytes.size() % attnd::ElementSize(dtype) == 0)) std::abort();
      break;
    }
  }
  return 0;
}
