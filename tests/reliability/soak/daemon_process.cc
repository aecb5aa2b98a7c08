#include "tests/reliability/soak/daemon_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

extern char** environ;

namespace attnd::soak {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DaemonProcess>> DaemonProcess::Start(const std::string& binary,
                                                                    const std::vector<std::string>& args,
                                                                    const std::string& log_path,
                                                                    absl::Duration timeout) {
  std::vector<std::string> argv_strings = {binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0"};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);

  const size_t log_start = ReadFile(log_path).size();  // the log is appended to across daemons
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  std::unique_ptr<DaemonProcess> daemon(new DaemonProcess);
  const int rc = posix_spawn(&daemon->pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return absl::InternalError(absl::StrCat("cannot start ", binary, ": ", strerror(rc)));

  static const std::regex listening("attnd listening on (\\S+)");
  static const std::regex metrics("metrics_address=(\\S+)");
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up) {
    const std::string log = ReadFile(log_path).substr(log_start);
    std::smatch m;
    if (daemon->address_.empty() && std::regex_search(log, m, listening)) daemon->address_ = m[1];
    if (daemon->metrics_address_.empty() && std::regex_search(log, m, metrics)) daemon->metrics_address_ = m[1];
    if (!daemon->address_.empty() && !daemon->metrics_address_.empty()) return daemon;
    int status = 0;
    if (waitpid(daemon->pid_, &status, WNOHANG) == daemon->pid_) {
      daemon->exited_ = true;
      return absl::FailedPreconditionError(absl::StrCat("attnd exited before serving; its log (", log_path,
                                                        ") ends:\n", log.substr(log.size() > 2000 ? log.size() - 2000 : 0)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("attnd did not log its addresses within ",
                                                  absl::FormatDuration(timeout), "; see ", log_path));
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

int64_t DaemonProcess::ResidentBytes() const {
  if (exited_) return -1;
  std::ifstream status(absl::StrCat("/proc/", pid_, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (!absl::StartsWith(line, "VmRSS:")) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t kib = 0;
    if (fields.size() >= 2 && absl::SimpleAtoi(fields[1], &kib)) return kib * 1024;
  }
  return -1;
}

void DaemonProcess::Signal(int signal) const {
  if (!exited_) kill(pid_, signal);
}

absl::StatusOr<int> DaemonProcess::Wait(absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!exited_) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      exited_ = true;
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (absl::Now() >= give_up) return absl::DeadlineExceededError("attnd is still running");
    absl::SleepFor(absl::Milliseconds(10));
  }
  return exit_status_;
}

absl::StatusOr<double> ScrapeSeries(const std::string& metrics_address, const std::string& series) {
  httplib::Client http(absl::StrCat("http://", metrics_address));
  http.set_connection_timeout(5);
  http.set_read_timeout(5);
  httplib::Result result = http.Get("/metrics");
  if (!result || result->status != 200) {
    return absl::UnavailableError(absl::StrCat("cannot scrape http://", metrics_address, "/metrics"));
  }
  for (absl::string_view line : absl::StrSplit(result->body, '\n')) {
    if (!absl::StartsWith(line, series)) continue;
    const absl::string_view rest = line.substr(series.size());
    if (!rest.empty() && rest[0] != ' ' && rest[0] != '{' && series.back() != '}') continue;  // a longer name
    double value = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) return value;
  }
  return absl::NotFoundError(absl::StrCat("no series ", series, " at ", metrics_address));
}

}  // namespace attnd::soak
