// CertificateMirror: a checked copy of the operator's TLS files, for gRPC's file watcher.
//
// gRPC 1.51's FileWatcherCertificateProvider serves whatever the files hold: a key that does not
// belong to its certificate (a rotation half done, e.g. `cp new.crt` before `cp new.key`) makes
// every new handshake fail until the pair matches again. So attnd reads the operator's files
// itself every interval, checks them (PEM, the key is the certificate's, valid now; the client CA
// parses), and only a set that passes is published into a private directory, key and chain in ONE
// file replaced by rename(2), so gRPC (which re-reads the copy every second) never sees half of a
// change. A set that fails is reported and the last good one stays in use.
//
// The copy lives in a fresh 0700 directory on /dev/shm when writable (memory, never disk), else
// $TMPDIR or /tmp, and is removed with the mirror.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/security/periodic_thread.h"

namespace attnd {

struct CertificateFiles {
  std::string cert;       // PEM chain (--tls_cert)
  std::string key;        // PEM private key (--tls_key)
  std::string client_ca;  // PEM CA bundle (--tls_client_ca); empty without mutual TLS
};

class CertificateMirror {
 public:
  // Called on the mirror's thread after each change of the files: OK when the new set is now
  // served, otherwise why it was ignored.
  using Report = std::function<void(const absl::Status&)>;

  // Reads and checks the files (errors name the flag: NOT_FOUND, INVALID_ARGUMENT), publishes the
  // first copy, then checks every `interval`.
  static absl::StatusOr<std::unique_ptr<CertificateMirror>> Start(CertificateFiles files, absl::Duration interval,
                                                                  Report report);
  ~CertificateMirror();  // stops checking, removes the copy

  // The private key followed by the certificate chain: gRPC's key and certificate path both.
  const std::string& identity_file() const { return identity_file_; }
  // The client CA copy; empty without mutual TLS.
  const std::string& client_ca_file() const { return client_ca_file_; }

 private:
  struct Contents {
    std::string identity;  // key, then chain
    std::string client_ca;
    bool operator==(const Contents&) const = default;
  };
  CertificateMirror(CertificateFiles files, Report report, std::string dir);
  absl::StatusOr<Contents> ReadChecked() const;
  absl::Status Publish(const Contents& contents);
  void Check();

  const CertificateFiles files_;
  const Report report_;
  const std::string dir_;
  const std::string identity_file_;
  const std::string client_ca_file_;
  Contents published_;                      // only the thread touches it once started
  std::string last_refusal_;                // the refusal reported last: each is reported once
  std::unique_ptr<PeriodicThread> thread_;  // reset first in the destructor
};

}  // namespace attnd
