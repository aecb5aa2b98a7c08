#include "server/service/grpc_log.h"

#include <grpc/support/log.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/service/structured_log.h"

namespace attnd {
namespace {

LogLevel LevelOf(const gpr_log_func_args& args) {
  const absl::string_view message = args.message;
  if (absl::StartsWith(message, "Failed accept4: Invalid argument")) return LogLevel::kDebug;
  if (absl::StartsWith(message, "Handshake failed")) return LogLevel::kWarning;
  switch (args.severity) {
    case GPR_LOG_SEVERITY_DEBUG: return LogLevel::kDebug;
    case GPR_LOG_SEVERITY_INFO: return LogLevel::kInfo;
    case GPR_LOG_SEVERITY_ERROR: return LogLevel::kError;
  }
  return LogLevel::kError;
}

void LogToLogfmt(gpr_log_func_args* args) {
  absl::string_view file = args->file != nullptr ? args->file : "";
  if (const size_t slash = file.rfind('/'); slash != absl::string_view::npos) file.remove_prefix(slash + 1);
  LogLine(LevelOf(*args), args->message != nullptr ? args->message : "")
      .Kv("source", "grpc")
      .Kv("file", absl::StrCat(file, ":", args->line));
}

}  // namespace

void RouteGrpcLogsToLogfmt() {
  // gRPC filters by its own verbosity (GRPC_VERBOSITY, default ERROR) before calling us.
  gpr_set_log_function(&LogToLogfmt);
}

}  // namespace attnd
