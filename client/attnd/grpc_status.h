// gRPC status -> absl::Status. The two share their code numbering (OK = 0 ... UNAUTHENTICATED = 16),
// so the code and the message pass through unchanged; binary error details, when the server sends
// any, ride along as a payload under kGrpcErrorDetailsUrl.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace attnd {

inline constexpr char kGrpcErrorDetailsUrl[] = "type.googleapis.com/google.rpc.Status";

absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace attnd
