#include "client/attnd/region_session.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// One reply line of the daemon: "<word> <value>" or "ERR <message>".
absl::StatusOr<std::string> Expect(int socket, absl::string_view word) {
  char buf[512];
  ssize_t n;
  do {
    n = recv(socket, buf, sizeof(buf), 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return absl::UnavailableError("region socket: the daemon closed the session");
  std::string line(buf, static_cast<size_t>(n));
  if (absl::StartsWith(line, absl::StrCat(word, " "))) return line.substr(word.size() + 1);
  if (absl::StartsWith(line, "ERR ")) return absl::FailedPreconditionError(absl::StrCat("region socket: ", line.substr(4)));
  return absl::InternalError(absl::StrCat("region socket: unexpected reply '", line, "'"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegionSession>> RegionSession::Open(const std::string& socket_path) {
  sockaddr_un addr{};
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("region socket path '", socket_path, "' is empty or too long"));
  }
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("region socket");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    absl::Status s = Errno(absl::StrCat("region socket ", socket_path));
    close(fd);
    return s;
  }
  absl::StatusOr<std::string> token = Expect(fd, "SESSION");
  if (!token.ok()) {
    close(fd);
    return token.status();
  }
  return std::unique_ptr<RegionSession>(new RegionSession(fd, *std::move(token)));
}

absl::StatusOr<std::unique_ptr<RegionSession>> RegionSession::Open(Client& client) {
  absl::StatusOr<v1::ServerInfo> info = client.GetServerInfo();
  if (!info.ok()) return info.status();
  if (info->transports().region_socket().empty()) {
    return absl::FailedPreconditionError("the daemon serves no shared-memory regions (no --region_socket)");
  }
  return Open(info->transports().region_socket());
}

// Closing is a handshake: our end stops sending, the daemon releases the session's regions and
// closes its end, and we wait for that (up to 5 s). Once this returns, no request can name the
// regions any more; a bare close() would race the caller's next call.
RegionSession::~RegionSession() {
  if (shutdown(socket_, SHUT_WR) == 0) {
    timeval timeout{5, 0};
    setsockopt(socket_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    char buf[512];
    ssize_t n;
    do {
      n = recv(socket_, buf, sizeof(buf), 0);
    } while (n > 0 || (n < 0 && errno == EINTR));
  }
  close(socket_);
}

absl::StatusOr<std::string> RegionSession::PassFd(int fd) {
  char text[] = "FD";
  iovec iov{text, 2};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  if (sendmsg(socket_, &msg, MSG_NOSIGNAL) < 0) return Errno("region socket: passing a descriptor");
  return Expect(socket_, "FD");
}

absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> SharedMemoryRegion::Create(Client& client, RegionSession& session,
                                                                               size_t size, const std::string& label) {
  const int fd = memfd_create(absl::StrCat("attnd-", label).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Errno("memfd_create");
  struct CloseFd {
    int fd;
    ~CloseFd() { close(fd); }
  } close_fd{fd};
  // Sealed against shrinking: the daemon refuses a region that could shrink under it.
  if (ftruncate(fd, static_cast<off_t>(size)) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
    return Errno("sizing and sealing the region");
  }
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) return Errno("mmap");
  absl::StatusOr<std::string> fd_token = session.PassFd(fd);
  if (!fd_token.ok()) {
    munmap(data, size);
    return fd_token.status();
  }
  v1::RegisterSharedMemoryRequest request;
  request.set_session(session.token());
  request.set_fd_token(*fd_token);
  request.set_size(size);
  request.set_label(label);
  absl::StatusOr<v1::RegionInfo> info = client.RegisterSharedMemory(request);
  if (!info.ok()) {
    munmap(data, size);
    return info.status();
  }
  return std::unique_ptr<SharedMemoryRegion>(new SharedMemoryRegion(data, size, *std::move(info)));
}

SharedMemoryRegion::~SharedMemoryRegion() { munmap(data_, size_); }

v1::RegionSpan SpanOf(const v1::RegionInfo& region, uint64_t offset, uint64_t size) {
  v1::RegionSpan span;
  span.set_region_id(region.region_id());
  span.set_key(region.key());
  span.set_offset(offset);
  span.set_size(size);
  return span;
}

}  // namespace attnd
