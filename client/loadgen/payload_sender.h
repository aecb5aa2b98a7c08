// PayloadSender: how one closed-loop load thread sends payloads, by each payload's transport.
//
//   proto     tensors in the messages (sent from where they lie), outputs copied once into this
//             thread's buffers, as a careful caller would.
//   shm       the payloads' tensors are placed once in a shared-memory region this thread
//             registers; calls name spans, and outputs land in the region (nothing on the socket
//             but the headers).
//   cuda_ipc  the same with GPU memory of this process shared by CUDA IPC.
// A kTrain payload is a Forward then its Backward; with `resident` the Forward keeps its tensors in
// the daemon and the Backward names the handle.
//
// Each call reports the bytes of its messages on the wire (protobuf serialized sizes).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "client/attnd/client.h"
#include "client/attnd/cuda_memory_region.h"
#include "client/attnd/region_session.h"
#include "client/loadgen/payloads.h"

namespace attnd::loadgen {

struct SendResult {
  absl::Status status;
  int64_t wire_bytes = 0;  // request + response messages of the call (both calls of a train step)
  // With want_response (--check): the response, tensors in its messages.
  std::optional<v1::ForwardResponse> forward;
  std::optional<v1::BackwardResponse> backward;
};

class PayloadSender {
 public:
  // Registers the regions `payloads` need (shared memory, CUDA IPC) in a session of this sender.
  static absl::StatusOr<std::unique_ptr<PayloadSender>> Create(Client& client, const std::vector<Payload>& payloads,
                                                               int cuda_device);
  ~PayloadSender();  // closes the session: the daemon releases this sender's regions
  SendResult Send(const Payload& payload, const CallOptions& call, bool want_response);

 private:
  struct Placed;  // a payload's requests, pointing at region spans
  explicit PayloadSender(Client& client);
  absl::Status Place(const Payload& payload);
  absl::Status Write(Transport t, uint64_t offset, const std::string& bytes);
  absl::Status Read(Transport t, const v1::RegionSpan& span, std::string* bytes);
  v1::RegionSpan Span(Transport t, uint64_t offset, uint64_t size) const;
  SendResult SendForward(const Payload& p, const v1::ForwardRequest& request, const CallOptions& call, bool want);
  SendResult SendBackward(const Payload& p, const v1::BackwardRequest& request, const CallOptions& call, bool want);

  Client& client_;
  std::unique_ptr<RegionSession> session_;
  std::unique_ptr<SharedMemoryRegion> shm_;
  std::unique_ptr<CudaMemoryRegion> cuda_;
  std::map<const Payload*, std::unique_ptr<Placed>> placed_;
  uint64_t shm_at_ = 0, cuda_at_ = 0;  // next free byte of each region
  std::string out_, lse_, grad_q_, grad_k_, grad_v_;  // proto outputs land here
};

}  // namespace attnd::loadgen
