// TLS material for tests, made at run time by make_test_certs.sh (openssl) in a fresh temporary
// directory, once per test program.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace attnd::testing {

class TestCertificates {
 public:
  // The file `name` ("ca.pem", "server.key", ...) of the set.
  std::string Path(const std::string& name) const { return absl::StrCat(dir_, "/", name); }
  const std::string& dir() const { return dir_; }

  // Makes the set on first use; fails the calling test (and returns null) if openssl fails.
  static const TestCertificates* Get() {
    static const TestCertificates* certs = Make();
    return certs;
  }

 private:
  static const TestCertificates* Make() {
    const char* tmp = std::getenv("TMPDIR");
    std::string dir = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/attnd-certs-XXXXXX");
    if (mkdtemp(dir.data()) == nullptr) return nullptr;
    const std::string command = absl::StrCat("bash ", ATTND_MAKE_TEST_CERTS, " ", dir);
    if (std::system(command.c_str()) != 0) return nullptr;
    auto* certs = new TestCertificates;
    certs->dir_ = dir;
    return certs;
  }
  std::string dir_;
};

// Writes `contents` to `path` (a test's token file).
inline void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::trunc);
  out << contents;
}

}  // namespace attnd::testing
