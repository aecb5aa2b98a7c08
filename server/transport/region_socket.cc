#include "server/transport/region_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

constexpr size_t kMaxMessage = 256;

void Reply(int fd, const std::string& text) { send(fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT); }

// Receives one message and the descriptors that came with it. Returns false when the peer is gone.
bool Receive(int fd, std::string* text, std::vector<int>* fds) {
  char data[kMaxMessage];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  iovec iov{data, sizeof(data)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n <= 0) return n < 0 && (errno == EAGAIN || errno == EINTR);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int passed;
      std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(passed);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {  // descriptors were dropped: refuse the message
    for (int f : *fds) close(f);
    fds->clear();
    text->assign("TRUNCATED");
    return true;
  }
  text->assign(data, static_cast<size_t>(n));
  while (!text->empty() && (text->back() == '\n' || text->back() == '\0')) text->pop_back();
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegionSocket>> RegionSocket::Start(const std::string& path, int mode,
                                                                   RegionRegistry* registry) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("region_socket: '", path, "' must be a path of 1..",
                                                   sizeof(addr.sun_path) - 1, " characters"));
  }
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat("region_socket: '", path, "' exists and is not a socket"));
    }
    unlink(path.c_str());  // a stale socket of an earlier daemon
  }
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("region_socket: socket: ", std::strerror(errno)));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  // Created with no permissions, then opened up to `mode`: no window in which anyone else connects.
  const mode_t old_umask = umask(0777);
  const int bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old_umask);
  if (bound != 0 || chmod(path.c_str(), static_cast<mode_t>(mode)) != 0 || listen(fd, 64) != 0) {
    const std::string err = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(absl::StrCat("region_socket: cannot listen on '", path, "': ", err));
  }
  const int wake = eventfd(0, EFD_CLOEXEC);
  if (wake < 0) {
    close(fd);
    return absl::InternalError("region_socket: eventfd failed");
  }
  std::unique_ptr<RegionSocket> socket(new RegionSocket(path, fd, wake, registry));
  socket->thread_ = std::thread([s = socket.get()] { s->Serve(); });
  return socket;
}

RegionSocket::RegionSocket(std::string path, int listen_fd, int wake_fd, RegionRegistry* registry)
    : path_(std::move(path)), listen_fd_(listen_fd), wake_fd_(wake_fd), registry_(registry) {}

RegionSocket::~RegionSocket() {
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_fd_);
  unlink(path_.c_str());
}

void RegionSocket::Serve() {
  std::map<int, std::string> sessions;  // connection fd -> session token
  auto close_session = [&](int fd) {
    registry_->CloseSession(sessions[fd]);
    sessions.erase(fd);
    close(fd);
  };
  for (;;) {
    std::vector<pollfd> polled{{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const auto& [fd, token] : sessions) polled.push_back({fd, POLLIN, 0});
    if (poll(polled.data(), polled.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (polled[0].revents != 0) break;
    if (polled[1].revents & POLLIN) {
      const int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn >= 0) {
        ucred cred{};
        socklen_t len = sizeof(cred);
        getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len);
        absl::StatusOr<std::string> token = registry_->OpenSession({cred.pid, cred.uid, cred.gid});
        if (token.ok()) {
          Reply(conn, absl::StrCat("SESSION ", *token));
          sessions.emplace(conn, *token);
        } else {
          Reply(conn, absl::StrCat("ERR ", token.status().message()));
          close(conn);
        }
      }
    }
    for (size_t i = 2; i < polled.size(); ++i) {
      if (polled[i].revents == 0) continue;
      const int fd = polled[i].fd;
      std::string text;
      std::vector<int> fds;
      if ((polled[i].revents & POLLIN) == 0 || !Receive(fd, &text, &fds)) {
        close_session(fd);  // hung up, or an error: the lease ends
        continue;
      }
      if (text == "FD" && fds.size() == 1) {
        absl::StatusOr<std::string> token = registry_->ParkFd(sessions[fd], fds[0]);
        Reply(fd, token.ok() ? absl::StrCat("FD ", *token) : absl::StrCat("ERR ", token.status().message()));
        continue;
      }
      for (int f : fds) close(f);
      Reply(fd, text == "FD" ? "ERR FD needs exactly one descriptor (SCM_RIGHTS)"
                             : absl::StrCat("ERR unknown request '", text.substr(0, 32), "' (expected FD)"));
    }
  }
  for (auto it = sessions.begin(); it != sessions.end();) close_session((it++)->first);
}

}  // namespace attnd
