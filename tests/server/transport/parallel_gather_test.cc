// Gathering received tensor bytes out of gRPC slices through a RangeCopier: the bytes land exactly,
// whether the copy runs on the caller or over ParallelCopy's helpers, for sizes on both sides of
// its 1 MiB threshold, for messages cut into many small slices, and for sub-ranges (stream chunks).
#include <random>
#include <string>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "attnd/v1/attention.pb.h"
#include "gtest/gtest.h"
#include "server/transport/parallel_range_copier.h"
#include "server/transport/wire_decoder.h"

namespace attnd {
namespace {

constexpr int kForwardTensors[] = {1, 2, 3};
constexpr size_t kMiB = size_t{1} << 20;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// `wire` cut into slices of random sizes in [1, max_slice].
grpc::ByteBuffer RandomlySliced(const std::string& wire, size_t max_slice, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < wire.size();) {
    const size_t n = std::min<size_t>(wire.size() - at, 1 + rng() % max_slice);
    slices.emplace_back(wire.data() + at, n);
    at += n;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

v1::ForwardRequest RequestOf(size_t tensor_bytes) {
  v1::ForwardRequest r;
  uint32_t seed = 1;
  for (v1::Tensor* t : {r.mutable_q(), r.mutable_k(), r.mutable_v()}) {
    t->set_dtype(v1::DTYPE_BF16);
    t->add_shape(static_cast<int64_t>(tensor_bytes / 2));
    t->set_data(RandomBytes(tensor_bytes, seed++));
  }
  return r;
}

struct Copier {
  const char* name;
  RangeCopier copy;
};

class ParallelGather : public ::testing::TestWithParam<size_t> {};

TEST_P(ParallelGather, EveryByteLandsOnTheCallerAndOverTheHelpers) {
  const size_t tensor_bytes = GetParam();
  const v1::ForwardRequest request = RequestOf(tensor_bytes);
  const std::string wire = request.SerializeAsString();
  for (size_t max_slice : {size_t{64} << 10, size_t{4096}, size_t{37}}) {
    if (max_slice < 4096 && tensor_bytes > 2 * kMiB) continue;  // ~10^5 slices is plenty below
    const grpc::ByteBuffer buffer = RandomlySliced(wire, max_slice, static_cast<uint32_t>(max_slice));
    v1::ForwardRequest skeleton;
    absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(buffer, kForwardTensors, &skeleton, "ForwardRequest");
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    for (const Copier& c : {Copier{"serial", CopyRangesSerially}, Copier{"parallel", CopyRangesInParallel}}) {
      for (auto [field, want] : {std::pair{1, &request.q().data()}, std::pair{2, &request.k().data()},
                                 std::pair{3, &request.v().data()}}) {
        const SlicedBytes& data = decoded->data(field);
        ASSERT_EQ(data.size(), static_cast<int64_t>(want->size()));
        std::string out(want->size() + 2, '\xEE');  // a guard byte on either side
        data.CopyTo(out.data() + 1, c.copy);
        EXPECT_EQ(out.substr(1, want->size()), *want) << c.name << " field " << field << " slices <= " << max_slice;
        EXPECT_EQ(out.front(), '\xEE');
        EXPECT_EQ(out.back(), '\xEE');
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AcrossTheThreshold, ParallelGather,
                         ::testing::Values(size_t{0}, size_t{2}, kMiB / 3, kMiB - 2, kMiB, kMiB + 2,
                                           3 * kMiB + 6, 17 * kMiB + 10));

TEST(ParallelGatherRanges, SubRangesOfManySmallSlicesLandExactly) {
  const std::string bytes = RandomBytes(5 * kMiB + 123, 9);
  v1::ForwardRequest r;
  r.mutable_q()->set_data(bytes);
  const grpc::ByteBuffer buffer = RandomlySliced(r.SerializeAsString(), 3000, 4);
  v1::ForwardRequest skeleton;
  absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(buffer, kForwardTensors, &skeleton, "ForwardRequest");
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const SlicedBytes& data = decoded->data(1);
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const size_t offset = rng() % bytes.size();
    const size_t n = trial % 2 == 0 ? rng() % (bytes.size() - offset) : bytes.size() - offset;
    std::string out(n, '\0');
    data.CopyTo(out.data(), offset, n, CopyRangesInParallel);
    EXPECT_EQ(out, bytes.substr(offset, n)) << "offset " << offset << " n " << n;
  }
}

}  // namespace
}  // namespace attnd
