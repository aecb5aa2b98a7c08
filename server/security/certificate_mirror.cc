#include "server/security/certificate_mirror.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/security/pem_files.h"

namespace attnd {
namespace {

// A fresh private directory for the copy: memory-backed where possible.
absl::StatusOr<std::string> MakePrivateDirectory() {
  std::string base = "/tmp";
  if (const char* tmp = std::getenv("TMPDIR"); tmp != nullptr && *tmp != '\0') base = tmp;
  if (access("/dev/shm", W_OK | X_OK) == 0) base = "/dev/shm";
  std::string dir = absl::StrCat(base, "/attnd-tls-XXXXXX");
  if (mkdtemp(dir.data()) == nullptr) {  // mkdtemp makes it 0700
    return absl::FailedPreconditionError(
        absl::StrCat("TLS: cannot create a private directory in ", base, ": ", std::strerror(errno)));
  }
  return dir;
}

// Writes `contents` to `path` atomically: a 0600 temporary file beside it, then rename(2).
absl::Status WriteAtomically(const std::string& path, const std::string& contents) {
  const std::string tmp = absl::StrCat(path, ".new");
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("TLS copy ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const absl::Status s = absl::InternalError(absl::StrCat("TLS copy ", tmp, ": ", std::strerror(errno)));
      close(fd);
      unlink(tmp.c_str());
      return s;
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("TLS copy ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CertificateMirror>> CertificateMirror::Start(CertificateFiles files,
                                                                            absl::Duration interval, Report report) {
  absl::StatusOr<std::string> dir = MakePrivateDirectory();
  if (!dir.ok()) return dir.status();
  std::unique_ptr<CertificateMirror> mirror(new CertificateMirror(std::move(files), std::move(report), *dir));
  absl::StatusOr<Contents> contents = mirror->ReadChecked();
  if (!contents.ok()) return contents.status();
  if (absl::Status s = mirror->Publish(*contents); !s.ok()) return s;
  mirror->thread_ = std::make_unique<PeriodicThread>(interval, [m = mirror.get()] { m->Check(); });
  return mirror;
}

CertificateMirror::CertificateMirror(CertificateFiles files, Report report, std::string dir)
    : files_(std::move(files)),
      report_(std::move(report)),
      dir_(std::move(dir)),
      identity_file_(absl::StrCat(dir_, "/identity.pem")),
      client_ca_file_(files_.client_ca.empty() ? "" : absl::StrCat(dir_, "/client-ca.pem")) {}

CertificateMirror::~CertificateMirror() {
  thread_.reset();
  for (const std::string& f : {identity_file_, client_ca_file_}) {
    if (f.empty()) continue;
    unlink(f.c_str());
    unlink(absl::StrCat(f, ".new").c_str());
  }
  rmdir(dir_.c_str());
}

absl::StatusOr<CertificateMirror::Contents> CertificateMirror::ReadChecked() const {
  absl::StatusOr<std::string> cert = ReadPemFile(files_.cert, "CERTIFICATE", "--tls_cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile(files_.key, "PRIVATE KEY", "--tls_key");
  if (!key.ok()) return key.status();
  if (absl::Status s = CheckKeyAndCertificate(*cert, *key, "--tls_cert", "--tls_key"); !s.ok()) return s;
  Contents contents;
  contents.identity = absl::StrCat(*key, *key->rbegin() == '\n' ? "" : "\n", *cert);
  if (!files_.client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(files_.client_ca, "CERTIFICATE", "--tls_client_ca");
    if (!ca.ok()) return ca.status();
    contents.client_ca = *std::move(ca);
  }
  return contents;
}

absl::Status CertificateMirror::Publish(const Contents& contents) {
  // The CA first: a new client CA with an old identity is harmless; gRPC reads each file whole.
  if (!client_ca_file_.empty() && contents.client_ca != published_.client_ca) {
    if (absl::Status s = WriteAtomically(client_ca_file_, contents.client_ca); !s.ok()) return s;
  }
  if (contents.identity != published_.identity) {
    if (absl::Status s = WriteAtomically(identity_file_, contents.identity); !s.ok()) return s;
  }
  published_ = contents;
  return absl::OkStatus();
}

void CertificateMirror::Check() {
  absl::StatusOr<Contents> contents = ReadChecked();
  if (!contents.ok()) {
    const std::string refusal = contents.status().ToString();
    if (refusal == last_refusal_) return;  // the same bad files stay bad every interval
    last_refusal_ = refusal;
    if (report_) report_(contents.status());
    return;
  }
  last_refusal_.clear();
  if (*contents == published_) return;
  const absl::Status published = Publish(*contents);
  if (report_) report_(published);
}

}  // namespace attnd
