// AttentionService: the attnd.v1.Attention gRPC service on the callback API.
//
// A call's life: gRPC's callback thread decodes the request straight from the received slices
// (server/transport/wire_decoder.h: Forward and Backward are raw methods, so protobuf never copies
// their tensor bytes), validates it (request_validation.h; a bad request is finished there with a
// status naming the field, no work done) and hands the call to the WorkerPool. A worker drops the
// call if it was cancelled or its deadline passed while it waited, otherwise runs it
// (attention_calls.h: tensors gathered once into buffers, or read from shared-memory regions or a
// resident handle; the backend writes into output buffers) and Finish()es the reactor with a
// response whose slices reference those buffers. gRPC threads never compute, so a long attention
// call never starves the server of threads to accept, validate or reject other calls. On the wire
// everything stays attnd.v1 protobuf: stock clients see no difference.
//
// The transport RPCs (shared-memory / CUDA IPC registration, resident handles) are in
// transport_rpcs.cc, the streamed calls for tensors beyond 2 GiB in stream_calls.cc.
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
#include "server/service/attention_calls.h"
#include "server/service/request_validation.h"
#include "server/service/server_stats.h"
#include "server/service/service_metrics.h"
#include "server/service/structured_log.h"
#include "server/service/worker_pool.h"

namespace attnd {

class CallReactor;

// Forward, Backward and the streams take raw ByteBuffers (decoded by server/transport); the rest
// are ordinary protobuf methods. A new RPC of attnd.v1.Attention must be added to this chain.
using AttentionServiceBase = v1::Attention::WithRawCallbackMethod_Forward<
    v1::Attention::WithRawCallbackMethod_Backward<v1::Attention::WithCallbackMethod_GetServerInfo<
        v1::Attention::WithCallbackMethod_GetStats<v1::Attention::WithCallbackMethod_RegisterSharedMemory<v1::Attention::WithCallbackMethod_RegisterCudaMemory<
            v1::Attention::WithCallbackMethod_UnregisterRegion<v1::Attention::WithCallbackMethod_ReleaseResident<
                v1::Attention::WithRawCallbackMethod_ForwardStream<
                    v1::Attention::WithRawCallbackMethod_BackwardStream<v1::Attention::Service>>>>>>>>>>;

// The transport settings the service reports in ServerInfo.transports.
struct TransportSettings {
  std::string region_socket;
  int64_t max_stream_request_bytes = 0;
  const char* stream_limit_flag = "max_stream_request_bytes";  // the flag a refusal names
  int64_t stream_chunk_bytes = int64_t{4} << 20;  // tensor bytes per response chunk of a stream
};

class AttentionService final : public AttentionServiceBase {
 public:
  // `backend`, `pool`, the transport context's parts, `metrics` and `access_log` outlive the
  // service; the last two may be null, as may transport.regions / transport.resident (off);
  // transport.allocator is required. `available_backends` is reported by GetServerInfo.
  AttentionService(Backend* backend, WorkerPool* pool, const RequestLimits& limits,
                   std::vector<std::string> available_backends, const TransportContext& transport,
                   const TransportSettings& settings, ServiceMetrics* metrics = nullptr,
                   AccessLog* access_log = nullptr);
  ~AttentionService() override;  // waits for every call's reactor to be done

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Backward(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;
  // The engine's and the service's measurements (server_stats.h); served while draining too.
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context, const v1::GetStatsRequest* request,
                                     v1::ServerStats* response) override;

  // transport_rpcs.cc
  grpc::ServerUnaryReactor* RegisterSharedMemory(grpc::CallbackServerContext* context,
                                                 const v1::RegisterSharedMemoryRequest* request,
                                                 v1::RegionInfo* response) override;
  grpc::ServerUnaryReactor* RegisterCudaMemory(grpc::CallbackServerContext* context,
                                               const v1::RegisterCudaMemoryRequest* request,
                                               v1::RegionInfo* response) override;
  grpc::ServerUnaryReactor* UnregisterRegion(grpc::CallbackServerContext* context,
                                             const v1::UnregisterRegionRequest* request,
                                             v1::UnregisterRegionResponse* response) override;
  grpc::ServerUnaryReactor* ReleaseResident(grpc::CallbackServerContext* context,
                                            const v1::ReleaseResidentRequest* request,
                                            v1::ReleaseResidentResponse* response) override;

  // stream_calls.cc
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ForwardStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* BackwardStream(
      grpc::CallbackServerContext* context) override;

  const v1::ServerInfo& info() const { return info_; }

  // From now on Forward/Backward are refused (UNAVAILABLE); accepted calls continue.
  void StartDraining();
  // True once no accepted Forward/Backward call is left (its reactor done); false at `deadline`.
  bool WaitUntilIdle(absl::Time deadline);
  // Calls whose reactor is not yet done (accepted, refused or computing).
  int64_t calls_in_flight();

 private:
  // The reactor of a new call, counted in flight until it is done. `*draining`: whether the
  // service refuses new calls. The response's size is read from `response_message` or
  // `response_buffer` (one of them) when the call finishes.
  CallReactor* StartCall(RpcMethod method, grpc::CallbackServerContext* context, int64_t request_bytes,
                         const google::protobuf::Message* response_message,
                         const grpc::ByteBuffer* response_buffer, bool* draining);
  // Counts a call that is not a unary reactor (a stream) in flight, for draining.
  bool EnterCall();  // false while draining (the call must be refused)
  // Queues `compute` on the pool; `reactor` is finished with compute's status, or without running
  // it when the call was cancelled, expired or the queue is full.
  // `compute` gets the call's CallTimings to hand to the engine.
  void Dispatch(CallReactor* reactor, grpc::CallbackServerContext* context,
                absl::AnyInvocable<absl::Status(const CallControl&, CallTimings*) &&> compute);

  friend class CallReactor;
  void CallDone(const CallReactor& call);  // records the call; the reactor is still alive
  void RecordCall(RpcMethod method, const AccessRecord& record, grpc::StatusCode code);
  void CallDeleted();                       // the reactor is gone: one call fewer in flight

  // Answers a bookkeeping call (transport_rpcs.cc) on the gRPC thread with `body`'s status.
  template <typename Body>
  grpc::ServerUnaryReactor* AnswerNow(RpcMethod method, grpc::CallbackServerContext* context,
                                      const google::protobuf::Message& request,
                                      const google::protobuf::Message* response, Body&& body);
  // Decodes, validates and dispatches a unary Forward/Backward (Call is ForwardCall or BackwardCall).
  template <typename Call, typename Header>
  grpc::ServerUnaryReactor* UnaryAttention(RpcMethod method, const char* what, grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request, grpc::ByteBuffer* response);

  template <typename, typename, typename, typename>
  friend class StreamReactor;
  Backend* const backend_;
  WorkerPool* const pool_;
  const RequestLimits limits_;
  const CallEnv env_;
  const CallEnv stream_env_;  // the limits of streamed calls
  const TransportSettings settings_;
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
