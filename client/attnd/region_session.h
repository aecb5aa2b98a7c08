// Shared memory with a co-located attnd: the session on the daemon's region socket, and regions.
//
//   ASSIGN_OR_RETURN(auto session, attnd::RegionSession::Open(*client));     // the lease
//   ASSIGN_OR_RETURN(auto region, attnd::SharedMemoryRegion::Create(*client, *session, 64 << 20, "kv"));
//   std::memcpy(region->data(), q, q_bytes);
//   *request.mutable_q()->mutable_region() = region->Span(0, q_bytes);     // instead of q.data
//   *request.mutable_out_region() = region->Span(out_offset, out_bytes);  // the daemon writes there
//
// The region is a memfd sealed against shrinking, mapped here and in the daemon: tensors named by
// spans cross no socket at all. Everything registered in a session is released by the daemon when
// the session's socket closes: when the RegionSession is destroyed, or the process dies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "attnd/v1/attention.pb.h"
#include "client/attnd/client.h"

namespace attnd {

// The bytes [offset, offset + size) of a registered region, as a request names them.
v1::RegionSpan SpanOf(const v1::RegionInfo& region, uint64_t offset, uint64_t size);

class RegionSession {
 public:
  // Connects to `socket_path` (the daemon's --region_socket).
  static absl::StatusOr<std::unique_ptr<RegionSession>> Open(const std::string& socket_path);
  // The path from the daemon's ServerInfo.transports.region_socket (FAILED_PRECONDITION when off).
  static absl::StatusOr<std::unique_ptr<RegionSession>> Open(Client& client);
  ~RegionSession();  // ends the session: returns once the daemon has released its regions

  const std::string& token() const { return token_; }
  // Passes `fd` (not taken: the caller still owns it) to the daemon; the token to register it with.
  absl::StatusOr<std::string> PassFd(int fd);

 private:
  RegionSession(int socket, std::string token) : socket_(socket), token_(std::move(token)) {}
  int socket_;
  std::string token_;
};

class SharedMemoryRegion {
 public:
  // A fresh zero-filled region of `size` bytes, registered in `session`.
  static absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> Create(Client& client, RegionSession& session,
                                                                    size_t size, const std::string& label);
  ~SharedMemoryRegion();  // unmaps it here (the daemon's mapping goes with the registration)

  void* data() const { return data_; }
  size_t size() const { return size_; }
  const v1::RegionInfo& info() const { return info_; }
  // The bytes [offset, offset + size) as a request names them.
  v1::RegionSpan Span(uint64_t offset, uint64_t size) const { return SpanOf(info_, offset, size); }

 private:
  SharedMemoryRegion(void* data, size_t size, v1::RegionInfo info) : data_(data), size_(size), info_(std::move(info)) {}
  void* data_;
  size_t size_;
  v1::RegionInfo info_;
};

}  // namespace attnd
