// AttentionService: the attnd.v1.Attention gRPC service on the callback API.
//
// A call's life: gRPC's callback thread validates the request (request_validation.h; a bad request
// is finished there with a status naming the field, no work done) and hands the call to the
// WorkerPool. A worker drops the call if it was cancelled or its deadline passed while it waited,
// otherwise sizes the response's `bytes` fields, lets the Backend write straight into them and
// Finish()es the reactor. gRPC threads never compute, so a long attention call never starves the
// server of threads to accept, validate or reject other calls.
//
// Draining (AttentionServer::Shutdown): new calls are refused with UNAVAILABLE, a status clients
// may retry elsewhere, while every call already accepted runs to completion. The service counts
// its calls so the server knows when the last one is done. (gRPC's own Server::Shutdown would
// instead cancel calls whose request was still being received, with CANCELLED, and wait on open
// streams such as health Watch until its deadline.)
#pragma once

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attnd/v1/attention.grpc.pb.h"
#include "server/backend.h"
#include "server/service/request_validation.h"
#include "server/service/worker_pool.h"

namespace attnd {

class CallReactor;

class AttentionService final : public v1::Attention::CallbackService {
 public:
  // `backend` and `pool` outlive the service. `available_backends` is reported by GetServerInfo.
  AttentionService(Backend* backend, WorkerPool* pool, const RequestLimits& limits,
                   std::vector<std::string> available_backends);
  ~AttentionService() override;  // waits for every call's reactor to be done

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context, const v1::ForwardRequest* request,
                                    v1::ForwardResponse* response) override;
  grpc::ServerUnaryReactor* Backward(grpc::CallbackServerContext* context, const v1::BackwardRequest* request,
                                     v1::BackwardResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

  const v1::ServerInfo& info() const { return info_; }

  // From now on Forward/Backward are refused (UNAVAILABLE); accepted calls continue.
  void StartDraining();
  // True once no accepted Forward/Backward call is left (its reactor done); false at `deadline`.
  bool WaitUntilIdle(absl::Time deadline);

 private:
  // Queues `compute` on the pool and returns the call's reactor, finished with compute's status,
  // or without running it when the call was cancelled, expired or the queue is full.
  grpc::ServerUnaryReactor* Dispatch(grpc::CallbackServerContext* context,
                                     absl::AnyInvocable<absl::Status() &&> compute);

  friend class CallReactor;
  bool draining();
  void CallDone();

  absl::Status ComputeForward(const ValidatedForward& call, const v1::ForwardRequest& request,
                              v1::ForwardResponse* response);
  absl::Status ComputeBackward(const ValidatedBackward& call, const v1::BackwardRequest& request,
                               v1::BackwardResponse* response);

  Backend* const backend_;
  WorkerPool* const pool_;
  const RequestLimits limits_;
  v1::ServerInfo info_;

  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // CallReactors not yet done
};

// The daemon's version, from the CMake project version.
const char* AttndVersion();

}  // namespace attnd
