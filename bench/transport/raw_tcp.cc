#include "bench/transport/raw_tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attnd::bench {
namespace {

constexpr size_t kChunk = size_t{4} << 20;  // per send()/recv(): large, so syscalls do not dominate

absl::Status Errno(const char* what) { return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno))); }

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

bool SendAll(int fd, const char* data, int64_t n) {
  while (n > 0) {
    const ssize_t sent = send(fd, data, std::min<int64_t>(n, kChunk), MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return false;
    data += sent;
    n -= sent;
  }
  return true;
}

bool RecvAll(int fd, char* data, int64_t n) {
  while (n > 0) {
    const ssize_t got = recv(fd, data, std::min<int64_t>(n, kChunk), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    data += got;
    n -= got;
  }
  return true;
}

// A connected loopback pair: `client` dialled `server`.
absl::Status ConnectedPair(Fd* client, Fd* server) {
  Fd listener(socket(AF_INET, SOCK_STREAM, 0));
  if (listener.get() < 0) return Errno("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return Errno("bind");
  if (listen(listener.get(), 1) != 0) return Errno("listen");
  if (getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) return Errno("getsockname");
  *client = Fd(socket(AF_INET, SOCK_STREAM, 0));
  if (connect(client->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return Errno("connect");
  *server = Fd(accept(listener.get(), nullptr, nullptr));
  if (server->get() < 0) return Errno("accept");
  const int one = 1;
  setsockopt(client->get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(server->get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CallTimes> RawTcpRoundTrip(const PayloadSize& size, const TimingRule& rule) {
  Fd client, server;
  if (absl::Status s = ConnectedPair(&client, &server); !s.ok()) return s;
  std::vector<char> request(size.request_bytes, 1), response(size.response_bytes, 2);
  std::vector<char> server_in(size.request_bytes), client_in(size.response_bytes);
  std::thread echo([&] {
    while (RecvAll(server.get(), server_in.data(), size.request_bytes) &&
           SendAll(server.get(), response.data(), size.response_bytes)) {
    }
  });
  CallTimes times;
  absl::Status status = TimeCalls(rule, [&]() -> absl::Status {
    if (!SendAll(client.get(), request.data(), size.request_bytes)) return Errno("send");
    if (!RecvAll(client.get(), client_in.data(), size.response_bytes)) return Errno("recv");
    return absl::OkStatus();
  }, &times);
  shutdown(client.get(), SHUT_RDWR);
  echo.join();
  if (!status.ok()) return status;
  return times;
}

absl::StatusOr<double> RawTcpStreamBytesPerSecond(int64_t bytes) {
  Fd client, server;
  if (absl::Status s = ConnectedPair(&client, &server); !s.ok()) return s;
  std::vector<char> out(kChunk * 4, 3), in(kChunk * 4);
  std::thread sink([&] {
    for (int64_t left = bytes; left > 0;) {
      const ssize_t got = recv(server.get(), in.data(), std::min<int64_t>(left, in.size()), 0);
      if (got <= 0) return;
      left -= got;
    }
    const char done = 1;
    send(server.get(), &done, 1, MSG_NOSIGNAL);
  });
  const auto start = std::chrono::steady_clock::now();
  bool ok = true;
  for (int64_t left = bytes; ok && left > 0;) {
    const int64_t n = std::min<int64_t>(left, out.size());
    ok = SendAll(client.get(), out.data(), n);
    left -= n;
  }
  char done = 0;
  ok = ok && RecvAll(client.get(), &done, 1);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  shutdown(client.get(), SHUT_RDWR);
  sink.join();
  if (!ok) return Errno("stream");
  return bytes / seconds;
}

}  // namespace attnd::bench
