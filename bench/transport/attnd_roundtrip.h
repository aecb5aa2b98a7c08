// attnd's own transport on loopback, in process: an AttentionServer with TransportOnlyBackend and
// an attnd::Client, moving a Forward of B=1, H=16, d=128, bf16 (the payload sizes of
// payload_sizes.h's fwd_sN). The request goes from the client's buffers, the response into
// preallocated buffers: what a well-written caller does.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/transport/payload_sizes.h"
#include "bench/transport/timing.h"

namespace attnd::bench {

// `seqlen` picks the shape; `transport` is "proto" (tensor bytes in the messages) or "shm"
// (tensors in a registered shared-memory region; the daemon reads and writes it in place).
// `args` are extra channel arguments for both ends (after attnd's own tuning).
absl::StatusOr<CallTimes> AttndForwardRoundTrip(int seqlen, const std::string& transport, const TimingRule& rule,
                                                const std::vector<std::pair<std::string, int>>& args = {});

}  // namespace attnd::bench
