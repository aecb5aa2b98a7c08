// A request beyond protobuf's 2 GiB message limit, through ForwardStream: a decode-like forward (one
// query against 2.36 M keys, d=256, bf16) whose k and v are 1.125 GiB each, 2.25 GiB in all. The
// result must equal, bit for bit, what the CPU backend computes from the same bytes locally.
// Needs ~5 GiB of memory and a minute: runs only with ATTND_LARGE_TESTS=1 (reported as skipped
// otherwise), e.g. ATTND_LARGE_TESTS=1 ctest -R LargeStream.
#include <cstdlib>
#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "tests/client/transport_test_util.h"

namespace attnd::testing {
namespace {

// n bf16 values in [-1, 1), from a cheap generator (random normal floats would need 4x the memory).
std::string Bf16Bytes(size_t n, uint32_t seed) {
  std::string bytes(2 * n, '\0');
  auto* out = reinterpret_cast<uint16_t*>(bytes.data());
  uint32_t x = seed;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    const float f = static_cast<float>(static_cast<int32_t>(x)) * (1.0f / 2147483648.0f);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
  return bytes;
}

TEST(LargeStream, ATwoAndAQuarterGibRequestStreamsThroughAndMatchesTheBackend) {
  if (std::getenv("ATTND_LARGE_TESTS") == nullptr) GTEST_SKIP() << "set ATTND_LARGE_TESTS=1 (needs ~5 GiB)";
  TransportDaemon d;
  StartTransportDaemon(&d, nullptr, [](ServerOptions& o) { o.resident_bytes = 0; });
  const int seqlen_k = 2359296, head_dim = 256;
  const AttentionShape shape = DenseShape(1, 1, seqlen_k, 1, 1, head_dim);
  const std::string q = Bf16Bytes(head_dim, 1), k = Bf16Bytes(shape.kv_elements(), 2),
                    v = Bf16Bytes(shape.kv_elements(), 3);
  ASSERT_GT(k.size() + v.size(), size_t{2} << 30);
  v1::ForwardRequest header;
  for (auto [t, wire] : {std::pair{header.mutable_q(), WireQShape(shape)}, std::pair{header.mutable_k(), WireKVShape(shape)},
                         std::pair{header.mutable_v(), WireKVShape(shape)}}) {
    t->set_dtype(v1::DTYPE_BF16);
    t->mutable_shape()->Assign(wire.begin(), wire.end());
  }
  ForwardBuffers buffers;
  buffers.q = {q.data(), q.size()};
  buffers.k = {k.data(), k.size()};
  buffers.v = {v.data(), v.size()};
  absl::StatusOr<v1::ForwardResponse> streamed = d.client->ForwardStream(header, buffers, {.timeout = absl::Minutes(5)});
  ASSERT_TRUE(streamed.ok()) << streamed.status();

  std::string out(head_dim * 2, '\0');
  float lse = 0;
  ForwardArgs args;
  args.shape = &shape;
  args.options.softmax_scale = 1.f / 16.f;
  args.q = q.data();
  args.k = k.data();
  args.v = v.data();
  args.out = out.data();
  args.lse = &lse;
  ASSERT_TRUE(CreateCpuBackend(2)->Forward(args).ok());
  EXPECT_EQ(streamed->out().data(), out);
  EXPECT_EQ(streamed->lse().data(), std::string(reinterpret_cast<const char*>(&lse), 4));
  EXPECT_TRUE(TransportIdle(*d.server));
}

}  // namespace
}  // namespace attnd::testing
