// The zero-copy wire codec (server/transport/wire_*.h) against stock protobuf: what it encodes,
// protobuf parses to the same message; what protobuf serializes, it decodes to the same skeleton
// and tensor bytes, however gRPC happens to slice the bytes; malformed input is refused cleanly.
#include <random>
#include <string>
#include <vector>

#include "attnd/v1/attention.pb.h"
#include "gtest/gtest.h"
#include "server/transport/tensor_buffer.h"
#include "server/transport/wire_decoder.h"
#include "server/transport/wire_encoder.h"

namespace attnd {
namespace {

constexpr int kForwardTensors[] = {1, 2, 3};

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

v1::ForwardRequest SampleRequest() {
  v1::ForwardRequest r;
  for (auto [t, seed] : {std::pair{r.mutable_q(), 1u}, std::pair{r.mutable_k(), 2u}, std::pair{r.mutable_v(), 3u}}) {
    t->set_dtype(v1::DTYPE_BF16);
    t->add_shape(1);
    t->add_shape(300);
    t->add_shape(2);
    t->add_shape(64);
    t->set_data(RandomBytes(300 * 2 * 64 * 2, seed));
  }
  r.mutable_params()->set_causal(true);
  r.mutable_params()->set_softmax_scale(0.25f);
  r.mutable_out_region()->set_region_id("shm-1");
  r.mutable_keep_resident()->set_keep(true);
  return r;
}

// `bytes` as a ByteBuffer cut into slices at the given boundaries.
grpc::ByteBuffer Sliced(const std::string& bytes, const std::vector<size_t>& cuts) {
  std::vector<grpc::Slice> slices;
  size_t at = 0;
  for (size_t cut : cuts) {
    if (cut <= at || cut >= bytes.size()) continue;
    slices.emplace_back(bytes.data() + at, cut - at);
    at = cut;
  }
  slices.emplace_back(bytes.data() + at, bytes.size() - at);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

std::string Gather(const SlicedBytes& bytes) {
  std::string out(static_cast<size_t>(bytes.size()), '\0');
  bytes.CopyTo(out.data());
  return out;
}

TEST(WireDecoder, SplitsTensorBytesFromTheSkeletonAtAnySlicing) {
  const v1::ForwardRequest request = SampleRequest();
  const std::string wire = request.SerializeAsString();
  std::mt19937 rng(5);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<size_t> cuts;
    const int n = trial == 0 ? 0 : 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) cuts.push_back(rng() % wire.size());
    if (trial == 1) {
      for (size_t c = 1; c < 64; ++c) cuts.push_back(c);  // byte-by-byte through the framing
    }
    std::sort(cuts.begin(), cuts.end());
    v1::ForwardRequest skeleton;
    absl::StatusOr<DecodedMessage> decoded =
        DecodedMessage::Decode(Sliced(wire, cuts), kForwardTensors, &skeleton, "ForwardRequest");
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->wire_bytes(), static_cast<int64_t>(wire.size()));
    EXPECT_EQ(Gather(decoded->data(1)), request.q().data());
    EXPECT_EQ(Gather(decoded->data(2)), request.k().data());
    EXPECT_EQ(Gather(decoded->data(3)), request.v().data());
    v1::ForwardRequest want = request;
    for (v1::Tensor* t : {want.mutable_q(), want.mutable_k(), want.mutable_v()}) t->clear_data();
    EXPECT_EQ(skeleton.SerializeAsString(), want.SerializeAsString());
  }
}

TEST(WireEncoder, StockProtobufParsesWhatItEncodes) {
  const v1::ForwardRequest request = SampleRequest();
  // Tensor q from a separate buffer, k and v from the message's own strings.
  v1::ForwardRequest header = request;
  header.mutable_q()->clear_data();
  auto q = std::make_shared<std::string>(request.q().data());
  std::vector<TensorData> data;
  data.push_back({1, {SliceOf(q->data(), q->size(), q)}});
  const grpc::ByteBuffer encoded = EncodeMessage(header, kForwardTensors, std::move(data));
  v1::ForwardRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(encoded)));
  EXPECT_EQ(parsed.SerializeAsString(), request.SerializeAsString());
}

TEST(WireEncoder, KeepsTheOwnerAliveUntilTheSliceGoes) {
  auto owner = std::make_shared<std::string>("0123456789");
  std::weak_ptr<std::string> watch = owner;
  {
    grpc::Slice slice = SliceOf(owner->data(), owner->size(), owner);
    owner.reset();
    EXPECT_FALSE(watch.expired());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(slice.begin()), slice.size()), "0123456789");
  }
  EXPECT_TRUE(watch.expired());
}

TEST(WireEncoder, CopyFieldsExceptLeavesOutOnlyTheSkippedField) {
  v1::Tensor full;
  full.set_dtype(v1::DTYPE_FP16);
  full.add_shape(3);
  full.set_data("abc");
  full.mutable_region()->set_region_id("r");
  // Every field of Tensor but `data` must survive, whatever fields are added later.
  const google::protobuf::Descriptor* d = v1::Tensor::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->number() == kTensorDataField) continue;
    EXPECT_TRUE(f->is_repeated() ? full.GetReflection()->FieldSize(full, f) > 0 : full.GetReflection()->HasField(full, f))
        << "set Tensor." << f->name() << " in this test";
  }
  v1::Tensor meta;
  CopyFieldsExcept(full, &meta, [](const google::protobuf::FieldDescriptor* f) { return f->number() == kTensorDataField; });
  v1::Tensor want = full;
  want.clear_data();
  EXPECT_EQ(meta.SerializeAsString(), want.SerializeAsString());
}

TEST(WireDecoder, RefusesMalformedMessagesNamingThem) {
  const std::string wire = SampleRequest().SerializeAsString();
  for (const std::string& bad : {wire.substr(0, wire.size() - 1), wire.substr(0, 3), std::string("\x0b\x00", 2),
                                 std::string("\x0a\xff\xff\xff\xff\x0f", 6), std::string("\x08\x80\x80", 3)}) {
    v1::ForwardRequest skeleton;
    absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(Sliced(bad, {}), kForwardTensors, &skeleton, "ForwardRequest");
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(decoded.status().message().find("ForwardRequest"), std::string::npos) << decoded.status();
  }
}

TEST(WireDecoder, TheLastOccurrenceOfATensorsDataWinsAsInProtobuf) {
  v1::ForwardRequest a, b;
  a.mutable_q()->set_data("first");
  b.mutable_q()->set_data("second");
  b.mutable_q()->set_dtype(v1::DTYPE_FP32);
  const std::string wire = a.SerializeAsString() + b.SerializeAsString();  // protobuf merges
  v1::ForwardRequest want;
  ASSERT_TRUE(want.ParseFromString(wire));
  v1::ForwardRequest skeleton;
  absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(Sliced(wire, {7}), kForwardTensors, &skeleton, "x");
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(Gather(decoded->data(1)), want.q().data());
  EXPECT_EQ(skeleton.q().dtype(), want.q().dtype());
}

}  // namespace
}  // namespace attnd
