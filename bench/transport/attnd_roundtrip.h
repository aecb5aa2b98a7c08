// attnd's own transport on loopback, in process: an AttentionServer with TransportOnlyBackend and
// an attnd::Client, moving a Forward of B=1, H=16, d=128, bf16 (the payload sizes of
// payload_sizes.h's fwd_sN). The request goes from the client's buffers, the response into
// preallocated buffers: what a well-written caller does.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/transport/payload_sizes.h"
#include "bench/transport/timing.h"

namespace attnd::bench {

struct AttndRoundTripOptions {
  // The client's routing (ClientOptions): requests above stream_above_bytes go over ForwardStream
  // in chunks of stream_chunk_bytes (the daemon copies each chunk as it arrives); 0: one unary
  // message whatever the size.
  int64_t stream_above_bytes = int64_t{8} << 20;
  size_t stream_chunk_bytes = size_t{4} << 20;
  // Gather received tensors over ParallelCopy's helpers (both ends) or on one thread.
  bool parallel_copy = true;
  // Put the daemon's engine over the backend, as attnd does (StageTimingBackend over a
  // BatchingBackend with the daemon's default batcher flags): its hand-offs count too.
  bool engine = false;
  bool lone_calls_on_caller = true;  // the engine's batcher option (attnd --lone_calls_on_caller)
  // The server's access log (per call: worker queue wait, compute, total): where the time of a
  // call goes on the server's side. Empty: none.
  std::string access_log;
  // Extra channel arguments for both ends (after attnd's own tuning).
  std::vector<std::pair<std::string, int>> channel_args;
};

// `seqlen` picks the shape (B=1, H=16, d=128, bf16).
absl::StatusOr<CallTimes> AttndForwardRoundTrip(int seqlen, const AttndRoundTripOptions& options,
                                                const TimingRule& rule);

}  // namespace attnd::bench
