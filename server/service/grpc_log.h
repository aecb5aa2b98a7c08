// gRPC's own log lines (gpr_log) in the daemon's logfmt, so that one parser reads the whole stderr:
//   ts=... level=error msg="..." source=grpc file=chttp2_transport.cc:1234
// Two messages lose their severity on the way: a failed TLS handshake is the client's problem
// (warning, not error), and "Failed accept4: Invalid argument" is attnd's own drain stopping the
// listener (AttentionServer::Shutdown; debug). Process-wide; the daemon calls it once at start.
#pragma once

namespace attnd {

void RouteGrpcLogsToLogfmt();

}  // namespace attnd
