// Writes the seed corpus of the two fuzz targets (committed under tests/fuzz/corpus/): a few
// small, valid messages of every kind plus near-misses, so that libFuzzer starts from inputs that
// reach deep into validation instead of from random bytes. Rerun after changing the wire protocol:
//   ninja -C build make_fuzz_seed_corpus && build/bin/make_fuzz_seed_corpus tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "attnd/v1/attention.pb.h"
#include "tests/server/service/service_test_util.h"

namespace {

using attnd::DType;
using attnd::testing::BackwardRequestFor;
using attnd::testing::DenseForwardRequest;
using attnd::testing::PackedForwardRequest;
using attnd::testing::RequestSpec;

void Write(const std::filesystem::path& dir, const std::string& name, char selector,
           const google::protobuf::Message& message) {
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out << selector << message.SerializeAsString();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (e.g. tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  const std::filesystem::path root(argv[1]);
  const std::filesystem::path validation = root / "request_validation";
  const RequestSpec tiny{.batch = 1, .seqlen_q = 3, .seqlen_k = 4, .heads_q = 2, .heads_kv = 1, .head_dim = 4};
  const attnd::v1::ForwardRequest dense = DenseForwardRequest(tiny);
  RequestSpec causal_fp32 = tiny;
  causal_fp32.dtype = DType::kFP32;
  causal_fp32.causal = true;
  const attnd::v1::ForwardRequest packed = PackedForwardRequest({2, 1}, {3, 0}, 2, 2, 4, DType::kFP16);
  Write(validation, "forward_dense_bf16", 0, dense);
  Write(validation, "forward_dense_fp32_causal", 0, DenseForwardRequest(causal_fp32));
  Write(validation, "forward_packed_fp16_empty_key", 0, packed);
  Write(validation, "backward_dense_bf16", 1, BackwardRequestFor(dense));
  Write(validation, "backward_packed_fp16", 1, BackwardRequestFor(packed));
  attnd::v1::ForwardRequest short_data = dense;
  short_data.mutable_k()->mutable_data()->pop_back();
  Write(validation, "forward_k_one_byte_short", 0, short_data);
  attnd::v1::ForwardRequest bad_offsets = packed;
  bad_offsets.mutable_params()->set_cu_seqlens_q(1, 3);
  Write(validation, "forward_cu_seqlens_decreasing", 0, bad_offsets);

  const std::filesystem::path decoding = root / "tensor_decoding";
  Write(decoding, "tensor_bf16", 0, dense.q());
  Write(decoding, "tensor_fp16", 0, packed.k());
  attnd::v1::ForwardResponse forward;
  *forward.mutable_out() = dense.q();
  *forward.mutable_lse() = BackwardRequestFor(dense).lse();
  Write(decoding, "forward_response", 1, forward);
  attnd::v1::BackwardResponse backward;
  *backward.mutable_grad_q() = dense.q();
  *backward.mutable_grad_k() = dense.k();
  *backward.mutable_grad_v() = dense.v();
  Write(decoding, "backward_response", 2, backward);
  std::ofstream raw(decoding / "raw_fp16", std::ios::binary | std::ios::trunc);
  raw << '\3' << '\1' << std::string("\x00\x3c\x00\xbc\xff\x7b\x00\x7c", 8);  // 1, -1, 65504, +inf
  std::printf("wrote the seed corpus under %s\n", root.c_str());
  return 0;
}
