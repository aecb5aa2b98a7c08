#include "bench/transport/gather_bench.h"

#include <algorithm>
#include <string>
#include <vector>

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "attnd/v1/attention.pb.h"
#include "server/transport/host_tensor_allocator.h"
#include "server/transport/parallel_range_copier.h"
#include "server/transport/wire_decoder.h"

namespace attnd::bench {

absl::StatusOr<CallTimes> GatherForwardRequest(int seqlen, bool parallel_copy, const TimingRule& rule) {
  constexpr size_t kSliceBytes = size_t{64} << 10;
  constexpr int kTensorFields[] = {1, 2, 3};
  const size_t tensor_bytes = static_cast<size_t>(seqlen) * 16 * 128 * 2;
  std::string wire;
  {
    v1::ForwardRequest request;
    char fill = 1;
    for (v1::Tensor* t : {request.mutable_q(), request.mutable_k(), request.mutable_v()}) {
      t->set_dtype(v1::DTYPE_BF16);
      for (int64_t d : {int64_t{1}, int64_t{seqlen}, int64_t{16}, int64_t{128}}) t->add_shape(d);
      t->mutable_data()->assign(tensor_bytes, fill++);
    }
    wire = request.SerializeAsString();
  }
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < wire.size(); at += kSliceBytes) {
    slices.emplace_back(wire.data() + at, std::min(kSliceBytes, wire.size() - at));
  }
  wire.clear();
  wire.shrink_to_fit();
  const grpc::ByteBuffer buffer(slices.data(), slices.size());
  slices.clear();
  HostTensorAllocator allocator;
  const RangeCopier copy = parallel_copy ? RangeCopier(CopyRangesInParallel) : RangeCopier(CopyRangesSerially);
  CallTimes times;
  absl::Status status = TimeCalls(rule, [&]() -> absl::Status {
    v1::ForwardRequest skeleton;
    absl::StatusOr<DecodedMessage> decoded = DecodedMessage::Decode(buffer, kTensorFields, &skeleton, "ForwardRequest");
    if (!decoded.ok()) return decoded.status();
    for (int field : kTensorFields) {
      const SlicedBytes& data = decoded->data(field);
      absl::StatusOr<TensorBufferPtr> dest = allocator.Allocate(static_cast<size_t>(data.size()), "q");
      if (!dest.ok()) return dest.status();
      data.CopyTo((*dest)->data(), copy);
      if (static_cast<const char*>((*dest)->data())[data.size() - 1] != static_cast<char>(field)) {
        return absl::InternalError("gathered bytes differ from the request's");
      }
    }
    return absl::OkStatus();
  }, &times);
  if (!status.ok()) return status;
  return times;
}

}  // namespace attnd::bench
