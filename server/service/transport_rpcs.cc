// AttentionService's transport RPCs: shared-memory and CUDA IPC regions (server/transport/
// region_registry.h), resident handles (resident_store.h). All are cheap bookkeeping, answered on
// the gRPC thread; they are served while draining too, so that clients can clean up.
#include "absl/strings/str_cat.h"
#include "server/service/attention_service.h"
#include "server/service/call_reactor.h"

namespace attnd {
namespace {

void Fill(const RegisteredRegion& r, v1::RegionInfo* info) {
  info->set_region_id(r.region_id);
  info->set_key(r.key);
  info->set_size(r.size);
  info->set_kind(std::string(RegionKindName(r.kind)));
}

absl::Status NoRegions() {
  return absl::FailedPreconditionError("this daemon serves no shared-memory regions (start it with --region_socket)");
}

}  // namespace

template <typename Body>
grpc::ServerUnaryReactor* AttentionService::AnswerNow(RpcMethod method, grpc::CallbackServerContext* context,
                                                      const google::protobuf::Message& request,
                                                      const google::protobuf::Message* response, Body&& body) {
  bool draining = false;  // bookkeeping is served while draining: clients clean up
  CallReactor* reactor =
      StartCall(method, context, static_cast<int64_t>(request.ByteSizeLong()), response, nullptr, &draining);
  reactor->Complete(ToGrpc(std::forward<Body>(body)()));
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::RegisterSharedMemory(grpc::CallbackServerContext* context,
                                                                 const v1::RegisterSharedMemoryRequest* request,
                                                                 v1::RegionInfo* response) {
  return AnswerNow(RpcMethod::kRegisterSharedMemory, context, *request, response, [&]() -> absl::Status {
    if (env_.transport.regions == nullptr) return NoRegions();
    absl::StatusOr<RegisteredRegion> r = env_.transport.regions->RegisterSharedMemory(
        request->session(), request->fd_token(), request->size(), request->label());
    if (r.ok()) Fill(*r, response);
    return r.status();
  });
}

grpc::ServerUnaryReactor* AttentionService::RegisterCudaMemory(grpc::CallbackServerContext* context,
                                                               const v1::RegisterCudaMemoryRequest* request,
                                                               v1::RegionInfo* response) {
  return AnswerNow(RpcMethod::kRegisterCudaMemory, context, *request, response, [&]() -> absl::Status {
    if (env_.transport.regions == nullptr) return NoRegions();
    absl::StatusOr<RegisteredRegion> r = env_.transport.regions->RegisterCudaMemory(
        request->session(), request->ipc_handle(), request->size(), request->device(), request->label());
    if (r.ok()) Fill(*r, response);
    return r.status();
  });
}

grpc::ServerUnaryReactor* AttentionService::UnregisterRegion(grpc::CallbackServerContext* context,
                                                             const v1::UnregisterRegionRequest* request,
                                                             v1::UnregisterRegionResponse* response) {
  return AnswerNow(RpcMethod::kUnregisterRegion, context, *request, response, [&]() -> absl::Status {
    if (env_.transport.regions == nullptr) return NoRegions();
    return env_.transport.regions->Unregister(request->region_id(), request->key());
  });
}

grpc::ServerUnaryReactor* AttentionService::ReleaseResident(grpc::CallbackServerContext* context,
                                                            const v1::ReleaseResidentRequest* request,
                                                            v1::ReleaseResidentResponse* response) {
  return AnswerNow(RpcMethod::kReleaseResident, context, *request, response, [&]() -> absl::Status {
    if (env_.transport.resident == nullptr) {
      return absl::FailedPreconditionError("resident tensors are off on this daemon (--resident_bytes=0)");
    }
    absl::StatusOr<int64_t> freed = env_.transport.resident->Release(request->handle(), "released by ReleaseResident");
    if (freed.ok()) response->set_bytes_freed(*freed);
    return freed.status();
  });
}

}  // namespace attnd
