#include "server/security/server_credentials.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <memory>

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
  const grpc_ssl_client_certificate_request_type client_certificate =
      security.mutual_tls ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                          : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  std::string client_ca;
  if (security.mutual_tls) {
    absl::StatusOr<std::string> ca = ReadPemFile(options.tls_client_ca_file, "CERTIFICATE", "--tls_client_ca");
    if (!ca.ok()) return ca.status();
    client_ca = *std::move(ca);
  }
  const int64_t reload_seconds = absl::ToInt64Seconds(options.reload_interval);
  if (options.reload_interval != absl::Seconds(reload_seconds) || reload_seconds < 0 || reload_seconds > 86400) {
    return absl::InvalidArgumentError(
        "--security_reload_interval: whole seconds from 1s to 24h, or 0 to read the files once");
  }
  if (reload_seconds == 0) {
    grpc::SslServerCredentialsOptions ssl(client_certificate);
    ssl.pem_root_certs = std::move(client_ca);
    ssl.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
    security.credentials = grpc::SslServerCredentials(ssl);
  } else {
    // gRPC's watcher reads a checked copy (certificate_mirror.h), never the operator's files.
    absl::StatusOr<std::unique_ptr<CertificateMirror>> mirror = CertificateMirror::Start(
        {options.tls_cert_file, options.tls_key_file, options.tls_client_ca_file}, options.reload_interval,
        options.on_certificate_change);
    if (!mirror.ok()) return mirror.status();
    security.certificates = *std::move(mirror);
    constexpr unsigned kCopyReadSeconds = 1;  // the copy changes only when a checked set is published
    auto files = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        security.certificates->identity_file(), security.certificates->identity_file(),
        security.certificates->client_ca_file(), kCopyReadSeconds);
    grpc::experimental::TlsServerCredentialsOptions tls(files);
    tls.watch_identity_key_cert_pairs();
    if (security.mutual_tls) tls.watch_root_certs();
    tls.set_cert_request_type(client_certificate);
    security.credentials = grpc::experimental::TlsServerCredentials(tls);
  }

  if (!options.auth_tokens_file.empty()) {
    absl::StatusOr<std::shared_ptr<TokenAuthProcessor>> tokens = TokenAuthProcessor::Load(options.auth_tokens_file);
    if (!tokens.ok()) return tokens.status();
    security.tokens = *std::move(tokens);
    security.credentials->SetAuthMetadataProcessor(security.tokens);
  }
  return security;
}

}  // namespace attnd
