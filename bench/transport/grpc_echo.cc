#include "bench/transport/grpc_echo.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "echo.grpc.pb.h"

namespace attnd::bench {
namespace {

class EchoService final : public Echo::Service {
  grpc::Status Echo(grpc::ServerContext*, const EchoRequest* request, EchoResponse* response) override {
    // The reply is produced the way a handler produces any result: a fresh buffer, filled.
    response->mutable_payload()->resize(static_cast<size_t>(request->response_bytes()));
    return grpc::Status::OK;
  }
};

// The same on gRPC's callback API (attnd's server API), answered on the gRPC thread.
class CallbackEchoService final : public Echo::CallbackService {
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* context, const EchoRequest* request,
                                 EchoResponse* response) override {
    response->mutable_payload()->resize(static_cast<size_t>(request->response_bytes()));
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

absl::StatusOr<CallTimes> GrpcEchoRoundTrip(const PayloadSize& size, const TimingRule& rule,
                                            const ChannelArgList& args, bool callback_api) {
  EchoService sync_service;
  CallbackEchoService callback_service;
  grpc::Service& service = callback_api ? static_cast<grpc::Service&>(callback_service) : sync_service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  for (const auto& [key, value] : args) builder.AddChannelArgument(key, value);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return absl::UnavailableError("echo server did not start");

  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(-1);
  channel_args.SetMaxSendMessageSize(-1);
  channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  for (const auto& [key, value] : args) channel_args.SetInt(key, value);
  auto channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(),
                                           channel_args);
  std::unique_ptr<Echo::Stub> stub = Echo::NewStub(channel);

  EchoRequest request;
  request.mutable_payload()->assign(static_cast<size_t>(size.request_bytes), '\1');
  request.set_response_bytes(size.response_bytes);
  CallTimes times;
  absl::Status status = TimeCalls(rule, [&]() -> absl::Status {
    grpc::ClientContext context;
    EchoResponse response;
    grpc::Status s = stub->Echo(&context, request, &response);
    if (!s.ok()) return absl::UnavailableError(absl::StrCat("Echo: ", s.error_message()));
    if (static_cast<int64_t>(response.payload().size()) != size.response_bytes) {
      return absl::InternalError("Echo: short response");
    }
    return absl::OkStatus();
  }, &times);
  server->Shutdown();
  if (!status.ok()) return status;
  return times;
}

}  // namespace attnd::bench
