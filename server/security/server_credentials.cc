#include "server/security/server_credentials.h"

#include <grpc/grpc_security_constants.h>

#include "server/security/pem_files.h"

namespace attnd {

absl::StatusOr<ServerSecurity> MakeServerSecurity(const ServerSecurityOptions& options) {
  ServerSecurity security;
  const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (!tls) {
    if (!options.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls_client_ca: mutual TLS needs --tls_cert and --tls_key too");
    }
    if (!options.auth_tokens_file.empty()) {
      return absl::InvalidArgumentError(
          "--auth_tokens_file: bearer tokens need TLS (--tls_cert, --tls_key); they must not travel in clear text");
    }
    security.credentials = grpc::InsecureServerCredentials();
    return security;
  }
  if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(options.tls_cert_file.empty() ? "--tls_cert: needed with --tls_key"
                                                                    : "--tls_key: needed with --tls_cert");
  }
  absl::StatusOr<std::string> cert = ReadPemFile(options.tls_cert_file, "CERTIFICATE", "--tls_cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile(options.tls_key_file, "PRIVATE KEY", "--tls_key");
  if (!key.ok()) return key.status();
  if (absl::Status s = CheckKeyAndCertificate(*cert, *key, "--tls_cert", "--tls_key"); !s.ok()) return s;

  security.tls = true;
  security.mutual_tls = !options.tls_client_ca_file.empty();
  grpc::SslServerCredentialsOptions ssl(security.mutual_tls ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                            : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (security.mutual_tls) {
    absl::StatusOr<std::string> ca = ReadPemFile(options.tls_client_ca_file, "CERTIFICATE", "--tls_client_ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  ssl.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
  security.credentials = grpc::SslServerCredentials(ssl);

  if (!options.auth_tokens_file.empty()) {
    absl::StatusOr<std::shared_ptr<TokenAuthProcessor>> tokens = TokenAuthProcessor::Load(options.auth_tokens_file);
    if (!tokens.ok()) return tokens.status();
    security.tokens = *std::move(tokens);
    security.credentials->SetAuthMetadataProcessor(security.tokens);
  }
  return security;
}

}  // namespace attnd
