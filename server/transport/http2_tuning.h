// HTTP/2 and TCP settings for messages of many MiB, applied by the daemon and the C++ client alike
// (both ends must agree for windows to matter).
//
// gRPC's defaults are made for small messages: 16 KiB frames (a 192 MiB tensor is 12k frames, each
// parsed and each a slice), flow-control windows that start at 64 KiB and grow only as BDP probes
// find bandwidth, and socket reads sized from what the last reads returned. Measured on loopback
// (bench/results/2026-11-23_h100_transport.md), the values below let a large message flow at close
// to the socket's speed.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <grpc/grpc.h>

namespace attnd {

inline std::vector<std::pair<std::string, int>> Http2TuningArgs() {
  return {
      // Largest HTTP/2 frame a peer may send us (the protocol's maximum is 16 MiB - 1).
      {GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (1 << 24) - 1},
      // Initial per-stream receive window: a whole tensor may be in flight before a window update.
      {GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20},
      // Read the socket in large pieces once data flows.
      {GRPC_ARG_TCP_READ_CHUNK_SIZE, 1 << 20},
      {GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, 256 << 10},
      {GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 8 << 20},
  };
}

}  // namespace attnd
