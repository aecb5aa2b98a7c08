// An attnd daemon as a child process, for the soak and fault tests: started with flags, its
// stderr in a file, its address and metrics address read from its log, its resident memory read
// from /proc, signalled and waited for like an orchestrator would.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace attnd::soak {

class DaemonProcess {
 public:
  // Runs `binary` with `args` (plus --listen=127.0.0.1:0 and --metrics_listen=127.0.0.1:0),
  // stderr appended to `log_path`, and waits up to `timeout` for "attnd listening on".
  static absl::StatusOr<std::unique_ptr<DaemonProcess>> Start(const std::string& binary,
                                                             const std::vector<std::string>& args,
                                                             const std::string& log_path,
                                                             absl::Duration timeout = absl::Seconds(60));
  ~DaemonProcess();  // SIGKILL if still running

  const std::string& address() const { return address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  pid_t pid() const { return pid_; }

  // VmRSS of the process, in bytes; -1 once it has exited.
  int64_t ResidentBytes() const;
  void Signal(int signal) const;
  // The exit status (128 + signal when killed by one); DEADLINE_EXCEEDED if still running.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  bool running() const { return !exited_; }

  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

 private:
  DaemonProcess() = default;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_status_ = -1;
  std::string address_;
  std::string metrics_address_;
};

// The value of the first Prometheus series line starting with `series` (a name, or a name and
// labels) in a /metrics scrape of `metrics_address`; NOT_FOUND when the series is absent.
absl::StatusOr<double> ScrapeSeries(const std::string& metrics_address, const std::string& series);

}  // namespace attnd::soak
