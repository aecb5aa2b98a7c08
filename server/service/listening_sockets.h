// Stops a listening socket of this process from admitting connections, without closing it.
//
// gRPC's Server offers no way to stop accepting connections short of Shutdown(), and Shutdown()
// drops the calls that arrive while it runs (see AttentionServer::Shutdown). So the server finds
// its own listening sockets among the process's descriptors and shuts them down for reading:
// Linux then refuses new connections (clients see "connection refused", UNAVAILABLE) and gRPC's
// accept loop stops on its own; the descriptor stays gRPC's, which closes it at Shutdown().
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace attnd {

// Listening TCP sockets bound to `port` (IPv4 and IPv6), or the Unix socket bound to `unix_path`
// when it is not empty. Returns how many sockets were stopped; INTERNAL if /proc/self/fd cannot
// be read.
absl::StatusOr<int> StopListening(int port, const std::string& unix_path = "");

}  // namespace attnd
