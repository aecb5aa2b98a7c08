#include "server/service/listening_sockets.h"

#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

// Whether `fd` is a socket in the listening state bound to `port` or `unix_path`.
bool IsOurListener(int fd, int port, const std::string& unix_path) {
  int accepting = 0;
  socklen_t len = sizeof(accepting);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0 || accepting == 0) return false;
  sockaddr_storage addr{};
  len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return false;
  switch (addr.ss_family) {
    case AF_INET:
      return unix_path.empty() && ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port) == port;
    case AF_INET6:
      return unix_path.empty() && ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port) == port;
    case AF_UNIX: {
      const auto* un = reinterpret_cast<const sockaddr_un*>(&addr);
      return !unix_path.empty() && std::strncmp(un->sun_path, unix_path.c_str(), sizeof(un->sun_path)) == 0;
    }
    default:
      return false;
  }
}

}  // namespace

absl::StatusOr<int> StopListening(int port, const std::string& unix_path) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return absl::InternalError("cannot list /proc/self/fd to find the listening sockets");
  int stopped = 0;
  while (const dirent* entry = readdir(dir)) {
    int fd = -1;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || fd == dirfd(dir)) continue;
    if (IsOurListener(fd, port, unix_path) && shutdown(fd, SHUT_RD) == 0) ++stopped;
  }
  closedir(dir);
  return stopped;
}

}  // namespace attnd
