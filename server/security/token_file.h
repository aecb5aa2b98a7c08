// The bearer tokens attnd accepts (--auth_tokens_file), one per line:
//
//   # name   token
//   trainer-a  Zm9vYmFyYmF6cXV4cXV1eGNvcmdl
//   notebook   d2hhdGV2ZXIgeW91IGxpa2UgaGVyZQ
//
// The name says who called in logs (the access log's `client=`), never the token. A token is
// 16..1024 characters of RFC 6750's b64token alphabet (letters, digits, - . _ ~ + / and trailing
// =), so that it can travel in an HTTP/2 header unchanged. Blank lines and lines starting with #
// are skipped; names and tokens must be unique; a file with no token is an error (to turn
// authentication off, leave the flag empty).
//
// Only SHA-256 digests of the tokens are kept. Match() hashes the token a call presents and
// compares it with every digest in constant time, so its running time does not depend on how
// much of which token a caller guessed right.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnd {

class TokenSet {
 public:
  // Errors name the line: INVALID_ARGUMENT "line 3: ...".
  static absl::StatusOr<TokenSet> Parse(absl::string_view contents);
  // NOT_FOUND when the file cannot be read; parse errors are prefixed with the path.
  static absl::StatusOr<TokenSet> Load(const std::string& path);

  // The name of the token equal to `presented`, if any.
  std::optional<std::string> Match(absl::string_view presented) const;
  int size() const { return static_cast<int>(entries_.size()); }

 private:
  using Digest = std::array<uint8_t, 32>;
  static Digest Sha256(absl::string_view bytes);
  struct Entry {
    std::string name;
    Digest digest;
  };
  std::vector<Entry> entries_;
};

}  // namespace attnd
