// ForwardCall and BackwardCall: one Forward/Backward from its validated header to its response,
// whatever transport carried it (unary protobuf, streamed chunks; tensors inline, in shared-memory
// regions or held resident).
//
//   Create()  on the gRPC thread: validation only (cheap), so a bad request is answered at once.
//   Run()     on a worker: resolves the tensors (gathers inline bytes into buffers of the
//             TensorAllocator, leases region spans, takes a resident handle's buffers), runs the
//             backend into output buffers (or straight into output regions), keeps what a resident
//             forward keeps, and fills the response header.
// The caller then sends the header with outputs() as tensor data: one ByteBuffer whose slices
// reference the output buffers (unary), or chunks (streams). Nothing is copied on the way out.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "attnd/v1/attention.pb.h"
#include "server/backend.h"
#include "server/service/call_tensors.h"
#include "server/service/inline_tensors.h"
#include "server/service/request_validation.h"

namespace attnd {

// What every call needs from the server.
struct CallEnv {
  Backend* backend = nullptr;
  RequestLimits limits;
  TransportContext transport;
};

// An output tensor to send: the field of the response it fills, and its bytes.
struct OutputTensor {
  int field = 0;
  TensorBufferPtr buffer;
};

class ForwardCall {
 public:
  static absl::StatusOr<std::unique_ptr<ForwardCall>> Create(v1::ForwardRequest header,
                                                             std::unique_ptr<InlineTensors> inline_tensors,
                                                             const CallEnv& env);
  absl::Status Run(const CallControl& control, CallTimings* timings = nullptr);

  const v1::ForwardResponse& response() const { return response_; }
  const std::vector<OutputTensor>& outputs() const { return outputs_; }
  static constexpr int kTensorFields[] = {1, 2, 3};          // ForwardRequest q, k, v
  static constexpr int kResponseTensorFields[] = {1, 2};     // ForwardResponse out, lse

 private:
  ForwardCall(v1::ForwardRequest header, std::unique_ptr<InlineTensors> inline_tensors, const CallEnv& env,
              ValidatedForward validated)
      : header_(std::move(header)), inline_(std::move(inline_tensors)), env_(env), call_(std::move(validated)) {}

  v1::ForwardRequest header_;
  std::unique_ptr<InlineTensors> inline_;
  const CallEnv& env_;
  ValidatedForward call_;
  v1::ForwardResponse response_;
  std::vector<OutputTensor> outputs_;
};

class BackwardCall {
 public:
  static absl::StatusOr<std::unique_ptr<BackwardCall>> Create(v1::BackwardRequest header,
                                                              std::unique_ptr<InlineTensors> inline_tensors,
                                                              const CallEnv& env);
  absl::Status Run(const CallControl& control, CallTimings* timings = nullptr);

  const v1::BackwardResponse& response() const { return response_; }
  const std::vector<OutputTensor>& outputs() const { return outputs_; }
  static constexpr int kTensorFields[] = {1, 2, 3, 4, 5, 6};  // q, k, v, out, lse, grad_out
  static constexpr int kResponseTensorFields[] = {1, 2, 3};   // grad_q, grad_k, grad_v

 private:
  BackwardCall(v1::BackwardRequest header, std::unique_ptr<InlineTensors> inline_tensors, const CallEnv& env,
               ValidatedBackward validated, std::shared_ptr<const ResidentTensors> resident)
      : header_(std::move(header)), inline_(std::move(inline_tensors)), env_(env), call_(std::move(validated)),
        resident_(std::move(resident)) {}

  v1::BackwardRequest header_;
  std::unique_ptr<InlineTensors> inline_;
  const CallEnv& env_;
  ValidatedBackward call_;
  std::shared_ptr<const ResidentTensors> resident_;  // set for a resident handle's backward
  v1::BackwardResponse response_;
  std::vector<OutputTensor> outputs_;
};

}  // namespace attnd
