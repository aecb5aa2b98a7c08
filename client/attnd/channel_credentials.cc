#include "client/attnd/channel_credentials.h"

#include "server/security/pem_files.h"

namespace attnd {

bool WantsTls(const ClientOptions& o) {
  return o.use_tls || !o.tls_ca_file.empty() || !o.tls_cert_file.empty() || !o.tls_key_file.empty() ||
         !o.tls_server_name.empty();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(const ClientOptions& o) {
  const bool tls = WantsTls(o);
  if (o.credentials != nullptr) {
    if (tls || !o.bearer_token.empty()) {
      return absl::InvalidArgumentError(
          "ClientOptions.credentials is set: leave use_tls, tls_* and bearer_token empty (or put them in it)");
    }
    return o.credentials;
  }
  if (!tls) {
    if (!o.bearer_token.empty()) {
      return absl::InvalidArgumentError(
          "ClientOptions.bearer_token needs TLS (use_tls or tls_ca_file): gRPC sends no token over plaintext");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(o.tls_cert_file.empty() ? "ClientOptions.tls_cert_file: needed with tls_key_file"
                                                              : "ClientOptions.tls_key_file: needed with tls_cert_file");
  }
  grpc::SslCredentialsOptions ssl;
  if (!o.tls_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(o.tls_ca_file, "CERTIFICATE", "ClientOptions.tls_ca_file");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!o.tls_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPemFile(o.tls_cert_file, "CERTIFICATE", "ClientOptions.tls_cert_file");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile(o.tls_key_file, "PRIVATE KEY", "ClientOptions.tls_key_file");
    if (!key.ok()) return key.status();
    if (absl::Status s = CheckKeyAndCertificate(*cert, *key, "ClientOptions.tls_cert_file", "ClientOptions.tls_key_file");
        !s.ok()) {
      return s;
    }
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(ssl);
  if (!o.bearer_token.empty()) {
    credentials = grpc::CompositeChannelCredentials(credentials, grpc::AccessTokenCredentials(o.bearer_token));
  }
  return credentials;
}

}  // namespace attnd
