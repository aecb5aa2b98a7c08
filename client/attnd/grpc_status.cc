#include "client/attnd/grpc_status.h"

#include "absl/strings/cord.h"

namespace attnd {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  // Codes outside absl's range cannot come from a conforming peer; report them as UNKNOWN.
  const absl::StatusCode absl_code = (code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated))
                                         ? static_cast<absl::StatusCode>(code)
                                         : absl::StatusCode::kUnknown;
  absl::Status result(absl_code, status.error_message());
  if (!status.error_details().empty()) {
    result.SetPayload(kGrpcErrorDetailsUrl, absl::Cord(status.error_details()));
  }
  return result;
}

}  // namespace attnd
