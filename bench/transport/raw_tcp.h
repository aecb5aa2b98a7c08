// Raw TCP on loopback: the ceiling a transport over one connection can hope for. No framing, no
// copies beyond the kernel's: one socket, large send()/recv() calls into buffers allocated once.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "bench/transport/payload_sizes.h"
#include "bench/transport/timing.h"

namespace attnd::bench {

// One "call": the client sends size.request_bytes, the server reads them all and sends
// size.response_bytes back, the client reads them all. The same shape as a unary RPC.
absl::StatusOr<CallTimes> RawTcpRoundTrip(const PayloadSize& size, const TimingRule& rule);

// One direction, one stream: `bytes` sent as fast as the socket takes them. Bytes per second.
absl::StatusOr<double> RawTcpStreamBytesPerSecond(int64_t bytes);

}  // namespace attnd::bench
