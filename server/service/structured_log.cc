#include "server/service/structured_log.h"

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace attnd {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};

bool PlainToken(absl::string_view v) {
  if (v.empty()) return false;
  for (char c : v) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f) return false;
  }
  return true;
}

std::string Timestamp() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
}

// Seconds as milliseconds with microsecond resolution ("12.345"), or "-" for a stage not reached.
std::string Millis(double seconds) {
  if (seconds < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", seconds * 1e3);
  return buf;
}

void WriteLine(std::FILE* file, std::string line) {
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), file);  // one locked stdio call: lines never interleave
  std::fflush(file);
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "debug") return LogLevel::kDebug;
  if (t == "info") return LogLevel::kInfo;
  if (t == "warning" || t == "warn") return LogLevel::kWarning;
  if (t == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("log_level: '", text, "' is not one of debug, info, warning, error"));
}

absl::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "info";
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed); }

void AppendLogField(std::string* line, absl::string_view key, absl::string_view value) {
  if (!line->empty()) *line += ' ';
  absl::StrAppend(line, key, "=");
  if (PlainToken(value)) {
    line->append(value.data(), value.size());
    return;
  }
  *line += '"';
  for (char c : value) {
    switch (c) {
      case '"': *line += "\\\""; break;
      case '\\': *line += "\\\\"; break;
      case '\n': *line += "\\n"; break;
      case '\r': *line += "\\r"; break;
      case '\t': *line += "\\t"; break;
      default: *line += c;
    }
  }
  *line += '"';
}

LogLine::LogLine(LogLevel level, absl::string_view msg) : enabled_(LogEnabled(level)) {
  if (!enabled_) return;
  AppendLogField(&line_, "ts", Timestamp());
  AppendLogField(&line_, "level", LogLevelName(level));
  AppendLogField(&line_, "msg", msg);
}

LogLine& LogLine::Kv(absl::string_view key, absl::string_view value) {
  if (enabled_) AppendLogField(&line_, key, value);
  return *this;
}

LogLine::~LogLine() {
  if (enabled_) WriteLine(stderr, std::move(line_));
}

absl::StatusOr<std::unique_ptr<AccessLog>> AccessLog::Open(const std::string& path) {
  if (path == "-") return std::unique_ptr<AccessLog>(new AccessLog(stderr, false));
  std::FILE* file = std::fopen(path.c_str(), "ae");
  if (file == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("access_log: cannot open '", path, "': ", std::strerror(errno)));
  }
  return std::unique_ptr<AccessLog>(new AccessLog(file, true));
}

AccessLog::~AccessLog() {
  if (owned_) std::fclose(file_);
}

void AccessLog::Write(const AccessRecord& r) {
  std::string line;
  AppendLogField(&line, "ts", Timestamp());
  AppendLogField(&line, "log", "access");
  AppendLogField(&line, "method", r.method);
  AppendLogField(&line, "code", r.code);
  AppendLogField(&line, "peer", r.peer);
  AppendLogField(&line, "request_bytes", absl::StrCat(r.request_bytes));
  AppendLogField(&line, "response_bytes", absl::StrCat(r.response_bytes));
  AppendLogField(&line, "queue_ms", Millis(r.queue_wait_s));
  AppendLogField(&line, "compute_ms", Millis(r.compute_s));
  AppendLogField(&line, "total_ms", Millis(r.total_s));
  if (r.batch_requests > 0) {  // the engine's stages, for calls it computed
    AppendLogField(&line, "batch_queue_ms", Millis(r.batch_queue_s));
    AppendLogField(&line, "h2d_ms", Millis(r.h2d_s));
    AppendLogField(&line, "kernel_ms", Millis(r.kernel_s));
    AppendLogField(&line, "d2h_ms", Millis(r.d2h_s));
    AppendLogField(&line, "batch_requests", absl::StrCat(r.batch_requests));
  }
  absl::MutexLock lock(&mu_);
  WriteLine(file_, std::move(line));
}

}  // namespace attnd
