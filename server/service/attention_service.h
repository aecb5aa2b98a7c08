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
//
// Every call, refused or computed, ends in one record: its count by status, bytes in and out and
// stage latencies go to ServiceMetrics, and a line to the AccessLog when there is one.
#pragma once

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attnd/v1/attention.grpc.pb.h"
#include "server/backend.h"
#include "server/service/request_validation.h"
#include "server/service/server_stats.h"
#include "server/service/service_metrics.h"
#include "server/service/structured_log.h"
#include "server/service/worker_pool.h"

namespace attnd {

class CallReactor;

class AttentionService final : public v1::Attention::CallbackService {
 public:
  // `backend`, `pool`, `metrics` and `access_log` outlive the service; the last two may be null.
  // `available_backends` is reported by GetServerInfo.
  AttentionService(Backend* backend, WorkerPool* pool, const RequestLimits& limits,
                   std::vector<std::string> available_backends, ServiceMetrics* metrics = nullptr,
                   AccessLog* access_log = nullptr);
  ~AttentionService() override;  // waits for every call's reactor to be done

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context, const v1::ForwardRequest* request,
                                    v1::ForwardResponse* response) override;
  grpc::ServerUnaryReactor* Backward(grpc::CallbackServerContext* context, const v1::BackwardRequest* request,
                                     v1::BackwardResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;
  // The engine's and the service's measurements (server_stats.h); served while draining too.
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context, const v1::GetStatsRequest* request,
                                     v1::ServerStats* response) override;

  const v1::ServerInfo& info() const { return info_; }

  // From now on Forward/Backward are refused (UNAVAILABLE); accepted calls continue.
  void StartDraining();
  // True once no accepted Forward/Backward call is left (its reactor done); false at `deadline`.
  bool WaitUntilIdle(absl::Time deadline);
  // Calls whose reactor is not yet done (accepted, refused or computing).
  int64_t calls_in_flight();

 private:
  // The reactor of a new call, counted in flight until it is done. `*draining`: whether the
  // service refuses new calls.
  CallReactor* StartCall(RpcMethod method, grpc::CallbackServerContext* context,
                         const google::protobuf::Message& request, const google::protobuf::Message* response,
                         bool* draining);
  // Queues `compute` on the pool; `reactor` is finished with compute's status, or without running
  // it when the call was cancelled, expired or the queue is full.
  // `compute` gets the call's CallTimings to hand to the engine.
  void Dispatch(CallReactor* reactor, grpc::CallbackServerContext* context,
                absl::AnyInvocable<absl::Status(const CallControl&, CallTimings*) &&> compute);

  friend class CallReactor;
  void CallDone(const CallReactor& call);  // records the call; the reactor is still alive
  void CallDeleted();                       // the reactor is gone: one call fewer in flight

  absl::Status ComputeForward(const ValidatedForward& call, const CallControl& control, CallTimings* timings,
                              const v1::ForwardRequest& request, v1::ForwardResponse* response);
  absl::Status ComputeBackward(const ValidatedBackward& call, const CallControl& control, CallTimings* timings,
                               const v1::BackwardRequest& request, v1::BackwardResponse* response);

  Backend* const backend_;
  WorkerPool* const pool_;
  const RequestLimits limits_;
  ServiceMetrics* const metrics_;
  AccessLog* const access_log_;
  v1::ServerInfo info_;
  ServiceLatencyStats latencies_;
  const absl::Time started_ = absl::Now();

  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // CallReactors not yet done
};

// The daemon's version, from the CMake project version.
const char* AttndVersion();

}  // namespace attnd
