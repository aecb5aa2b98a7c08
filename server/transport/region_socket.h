// RegionSocket: the daemon's Unix socket for co-located clients (attnd --region_socket=PATH).
//
// Each connection is one session of the RegionRegistry, and its lease: the session, and every
// region registered in it, lives exactly as long as the connection. The kernel closes a client's
// socket however the client ends, so a client that crashes or is killed leaks nothing.
//
// The socket is SOCK_SEQPACKET (message boundaries kept). The protocol, one text line per message:
//   daemon -> client on accept:             "SESSION <token>"   (or "ERR <message>" and close)
//   client -> daemon, one fd in SCM_RIGHTS: "FD"                -> "FD <fd_token>" | "ERR <message>"
//   anything else                                               -> "ERR <message>"
// Registration itself is the RegisterSharedMemory RPC naming the session and the fd token, so that
// its errors are ordinary gRPC statuses. The socket file is created with `mode` (who may connect).
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/transport/region_registry.h"

namespace attnd {

class RegionSocket {
 public:
  // Binds `path` (an existing socket file there is replaced; any other file is an error) and starts
  // serving on a thread of its own.
  static absl::StatusOr<std::unique_ptr<RegionSocket>> Start(const std::string& path, int mode,
                                                             RegionRegistry* registry);
  ~RegionSocket();  // closes every session (releasing their regions) and removes the socket file

  const std::string& path() const { return path_; }

 private:
  RegionSocket(std::string path, int listen_fd, int wake_fd, RegionRegistry* registry);
  void Serve();

  const std::string path_;
  const int listen_fd_;
  const int wake_fd_;  // eventfd: tells Serve() to stop
  RegionRegistry* const registry_;
  std::thread thread_;
};

}  // namespace attnd
