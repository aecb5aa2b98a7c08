// PEM files for TLS: read with errors that name the flag or option, checked before gRPC sees them
// (gRPC only says "cannot build the server" or fails every handshake later).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnd {

// The contents of a PEM file holding at least one `kind` block ("CERTIFICATE", "PRIVATE KEY"
// also matches "EC PRIVATE KEY" and "RSA PRIVATE KEY"). `what` names the file in errors, e.g.
// "--tls_cert". NOT_FOUND when the file cannot be read, INVALID_ARGUMENT when it holds no such
// block or OpenSSL cannot parse it.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view kind, absl::string_view what);

// INVALID_ARGUMENT when `key_pem` is not the private key of the first certificate of `cert_pem`,
// or that certificate has expired or is not valid yet.
absl::Status CheckKeyAndCertificate(const std::string& cert_pem, const std::string& key_pem,
                                    absl::string_view cert_what, absl::string_view key_what);

}  // namespace attnd
