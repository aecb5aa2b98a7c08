// The plain gRPC baseline: a unary Echo whose request and response carry the payload as protobuf
// `bytes`, served by the generated synchronous service and called through the generated stub.
// Nothing is tuned except the message size limits (gRPC refuses messages over 4 MiB otherwise);
// extra channel arguments (applied to both ends) let the benchmark show what tuning alone buys.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/transport/payload_sizes.h"
#include "bench/transport/timing.h"

namespace attnd::bench {

using ChannelArgList = std::vector<std::pair<std::string, int>>;

// Starts an in-process echo server on 127.0.0.1, times unary calls of `size` over one channel.
// `callback_api`: the server on gRPC's callback API (as attnd's), else the synchronous one.
absl::StatusOr<CallTimes> GrpcEchoRoundTrip(const PayloadSize& size, const TimingRule& rule,
                                            const ChannelArgList& args = {}, bool callback_api = false);

}  // namespace attnd::bench
