// Structured one-line logs: `ts=2026-01-02T03:04:05.678Z level=info msg="..." key=value ...`,
// one write per line so lines from different threads never interleave. Values with spaces,
// quotes or '=' are quoted (logfmt). The level is process-wide (--log_level). Abseil 20220623 has
// no absl logging, hence this small logger.
//
//   LogLine(LogLevel::kInfo, "metrics exporter listening").Kv("metrics_address", addr);
//
// The AccessLog writes one such line per finished call (--access_log), to a file or stderr.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace attnd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning" (or "warn"), "error".
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text);
absl::string_view LogLevelName(LogLevel level);
void SetLogLevel(LogLevel level);  // default kInfo
bool LogEnabled(LogLevel level);

// key=value appended as logfmt: bare when the value is a plain token, else quoted and escaped.
void AppendLogField(std::string* line, absl::string_view key, absl::string_view value);

// One log line, written to stderr when it goes out of scope (if its level is enabled).
class LogLine {
 public:
  LogLine(LogLevel level, absl::string_view msg);
  ~LogLine();
  LogLine& Kv(absl::string_view key, absl::string_view value);
  template <typename T>
  LogLine& Kv(absl::string_view key, const T& value) {
    return Kv(key, absl::string_view(absl::StrCat(value)));
  }

  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;

 private:
  const bool enabled_;
  std::string line_;
};

// What the access log records of one finished call. Durations are in seconds; a negative
// queue_wait/compute means the call never reached that stage (refused, or dropped in the queue).
struct AccessRecord {
  absl::string_view method;
  absl::string_view code;  // gRPC status code name, e.g. "OK", "INVALID_ARGUMENT"
  absl::string_view peer;
  int64_t request_bytes = 0;
  int64_t response_bytes = 0;
  double queue_wait_s = -1;
  double compute_s = -1;
  double total_s = 0;
  // Inside the engine (CallTimings): batch queue + stream wait, H2D, kernel, D2H; negative when
  // the call never reached that stage or its backend has none.
  double batch_queue_s = -1;
  double h2d_s = -1;
  double kernel_s = -1;
  double d2h_s = -1;
  int batch_requests = 0;  // requests in the launch that computed the call
};

class AccessLog {
 public:
  // `path`: "-" for stderr, otherwise a file opened for appending (created if missing).
  static absl::StatusOr<std::unique_ptr<AccessLog>> Open(const std::string& path);
  ~AccessLog();
  void Write(const AccessRecord& record);

 private:
  AccessLog(std::FILE* file, bool owned) : file_(file), owned_(owned) {}
  absl::Mutex mu_;
  std::FILE* const file_;
  const bool owned_;
};

}  // namespace attnd
