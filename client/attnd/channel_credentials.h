// The channel credentials ClientOptions ask for: the caller's own, plaintext, TLS or mutual TLS,
// with a bearer token on every call when one is given.
#pragma once

#include <memory>

#include <grpcpp/security/credentials.h>

#include "absl/status/statusor.h"
#include "client/attnd/client.h"

namespace attnd {

// INVALID_ARGUMENT naming the option for inconsistent options (a token without TLS, a key
// without a certificate, credentials and TLS files both); NOT_FOUND / INVALID_ARGUMENT for a PEM
// file that cannot be read or parsed.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(const ClientOptions& options);

// Whether `options` ask for TLS (use_tls or any tls_* file).
bool WantsTls(const ClientOptions& options);

}  // namespace attnd
