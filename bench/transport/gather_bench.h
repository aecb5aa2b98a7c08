// The daemon's gather alone, without sockets: a Forward request of payload_sizes.h's fwd_sN shape
// as gRPC hands it to the server (64 KiB slices, the most gRPC 1.51 puts in one slice on
// loopback), split by the wire decoder and its q, k, v gathered into cached host buffers, either
// on the calling thread or over ParallelCopy's helpers. It separates the copy out of the slices
// (issue #6: ~38 ms of a 16k call's 49 ms of server time on the H100 host) from gRPC's receiving.
#pragma once

#include "absl/status/statusor.h"
#include "bench/transport/timing.h"

namespace attnd::bench {

absl::StatusOr<CallTimes> GatherForwardRequest(int seqlen, bool parallel_copy, const TimingRule& rule);

}  // namespace attnd::bench
