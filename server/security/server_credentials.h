// The credentials a gRPC listener of attnd uses: plaintext, TLS, or mutual TLS, with bearer
// tokens on top when asked for. Files are read and checked here, so a bad flag stops the daemon at
// start with a message naming it.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/security/certificate_mirror.h"
#include "server/security/token_auth_processor.h"

namespace attnd {

struct ServerSecurityOptions {
  // TLS: the server's certificate chain and private key (PEM). Both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Mutual TLS: the CA (PEM) whose certificates clients must present; a client without a valid
  // one fails the handshake. Needs tls_cert_file.
  std::string tls_client_ca_file;
  // Bearer tokens (token_file.h). Needs TLS: gRPC runs token checks only on secure connections,
  // and tokens must never cross the network in clear text.
  std::string auth_tokens_file;
  // How often the certificate, key, client CA and token files are checked for changes: a rotated
  // certificate (a Kubernetes Secret updated by cert-manager, say) serves new handshakes without a
  // restart while open connections keep theirs, and a changed token file is reloaded as on SIGHUP
  // (a bad one keeps the tokens in use). Whole seconds; zero: read once at start (SIGHUP still
  // reloads the tokens).
  absl::Duration reload_interval = absl::ZeroDuration();
  // Told, on the watcher's thread, when changed TLS files are served (OK) or ignored (why).
  CertificateMirror::Report on_certificate_change;
};

struct ServerSecurity {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::shared_ptr<TokenAuthProcessor> tokens;  // null without auth_tokens_file
  // The checked copy gRPC watches (null unless TLS with a reload interval): keep it alive as long
  // as the listener.
  std::shared_ptr<CertificateMirror> certificates;
  bool tls = false;
  bool mutual_tls = false;
};

// INVALID_ARGUMENT for inconsistent options (naming the --flag), NOT_FOUND for unreadable files.
absl::StatusOr<ServerSecurity> MakeServerSecurity(const ServerSecurityOptions& options);

}  // namespace attnd
