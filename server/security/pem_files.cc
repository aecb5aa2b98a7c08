#include "server/security/pem_files.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;

Bio MemoryBio(const std::string& pem) { return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()))); }

std::unique_ptr<X509, X509Free> FirstCertificate(const std::string& pem) {
  Bio bio = MemoryBio(pem);
  return std::unique_ptr<X509, X509Free>(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::unique_ptr<EVP_PKEY, PkeyFree> PrivateKey(const std::string& pem) {
  Bio bio = MemoryBio(pem);
  return std::unique_ptr<EVP_PKEY, PkeyFree>(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
}

}  // namespace

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view kind, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(what, ": cannot read '", path, "'"));
  std::stringstream contents;
  contents << in.rdbuf();
  std::string pem = contents.str();
  if (!absl::StrContains(pem, "-----BEGIN ") || !absl::StrContains(pem, absl::StrCat(kind, "-----"))) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": '", path, "' holds no PEM ", kind, " block (\"-----BEGIN ... ", kind, "-----\")"));
  }
  const bool parses = kind == "CERTIFICATE" ? FirstCertificate(pem) != nullptr : PrivateKey(pem) != nullptr;
  if (!parses) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", path, "' is not a valid PEM ", kind,
                                                   kind == "PRIVATE KEY" ? " (encrypted keys are not supported)" : ""));
  }
  return pem;
}

absl::Status CheckKeyAndCertificate(const std::string& cert_pem, const std::string& key_pem,
                                    absl::string_view cert_what, absl::string_view key_what) {
  auto cert = FirstCertificate(cert_pem);
  auto key = PrivateKey(key_pem);
  if (cert == nullptr || key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(cert == nullptr ? cert_what : key_what, ": cannot be parsed"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_what, ": is not the private key of the certificate in ", cert_what));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(cert_what, ": the certificate has expired"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(cert_what, ": the certificate is not valid yet"));
  }
  return absl::OkStatus();
}

}  // namespace attnd
