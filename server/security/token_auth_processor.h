// TokenAuthProcessor: bearer-token authentication of every call, as gRPC's AuthMetadataProcessor
// (gRPC runs it before the call reaches a handler, on TLS connections only).
//
//   no "authorization: Bearer <token>" header   -> UNAUTHENTICATED
//   a token that is not in the tokens file      -> PERMISSION_DENIED
//   a known token                               -> the call proceeds; its token's name becomes
//                                                  the peer identity (AuthContext), for logs
//
// grpc.health.v1.Health is exempt so that probes need no token (they still need TLS, and a client
// certificate under mutual TLS; --health_listen serves probes that can do neither). The tokens
// can be reloaded while serving (SIGHUP in the daemon): calls already authenticated are not
// affected, later ones see the new set; a file that fails to load leaves the old set in place.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/security/auth_metadata_processor.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/security/token_file.h"

namespace attnd {

// The AuthContext property that carries the name of the caller's token.
inline constexpr char kTokenNameProperty[] = "attnd.token_name";

class TokenAuthProcessor final : public grpc::AuthMetadataProcessor {
 public:
  static absl::StatusOr<std::shared_ptr<TokenAuthProcessor>> Load(const std::string& path);

  // Reads the file again; returns the number of tokens now accepted. On error the old set stays.
  absl::StatusOr<int> Reload();

  // Called with UNAUTHENTICATED or PERMISSION_DENIED for every refused call (metrics). Set it
  // before the server starts; it runs on gRPC's threads and must be quick.
  void OnRefused(std::function<void(grpc::StatusCode)> on_refused) { on_refused_ = std::move(on_refused); }

  // Checking a token is a hash and a few comparisons: run it inline on gRPC's thread.
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata, OutputMetadata* response_metadata) override;

 private:
  TokenAuthProcessor(std::string path, TokenSet tokens);

  grpc::Status Refuse(grpc::StatusCode code, const char* message) const;

  const std::string path_;
  std::function<void(grpc::StatusCode)> on_refused_;
  absl::Mutex mu_;
  std::shared_ptr<const TokenSet> tokens_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd
