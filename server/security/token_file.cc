#include "server/security/token_file.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attnd {
namespace {

constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 1024;
constexpr size_t kMaxNameLength = 64;

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '@'; }

// RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
bool IsB64Token(absl::string_view t) {
  size_t i = 0;
  while (i < t.size() && (absl::ascii_isalnum(t[i]) || absl::string_view("-._~+/").find(t[i]) != absl::string_view::npos)) {
    ++i;
  }
  if (i == 0) return false;
  while (i < t.size() && t[i] == '=') ++i;
  return i == t.size();
}

}  // namespace

TokenSet::Digest TokenSet::Sha256(absl::string_view bytes) {
  Digest d{};
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), d.data(), &length, EVP_sha256(), nullptr);
  return d;
}

absl::StatusOr<TokenSet> TokenSet::Parse(absl::string_view contents) {
  TokenSet set;
  std::set<std::string> names;
  std::set<Digest> digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": ", what));
    };
    if (fields.size() != 2) return error("expected \"<name> <token>\"");
    const absl::string_view name = fields[0], token = fields[1];
    if (name.size() > kMaxNameLength || !std::all_of(name.begin(), name.end(), IsNameChar)) {
      return error(absl::StrCat("name '", name, "' must be 1..", kMaxNameLength, " of [A-Za-z0-9._@-]"));
    }
    if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength || !IsB64Token(token)) {
      return error(absl::StrCat("the token of '", name, "' must be ", kMinTokenLength, "..", kMaxTokenLength,
                                " characters of [A-Za-z0-9-._~+/] with optional trailing '='"));
    }
    if (!names.insert(std::string(name)).second) return error(absl::StrCat("name '", name, "' appears twice"));
    Digest digest = Sha256(token);
    if (!digests.insert(digest).second) return error(absl::StrCat("the token of '", name, "' is another name's too"));
    set.entries_.push_back(Entry{std::string(name), digest});
  }
  if (set.entries_.empty()) {
    return absl::InvalidArgumentError("no token (\"<name> <token>\" lines); to turn authentication off, set no tokens file");
  }
  return set;
}

absl::StatusOr<TokenSet> TokenSet::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("auth tokens file '", path, "' cannot be read"));
  std::stringstream contents;
  contents << in.rdbuf();
  absl::StatusOr<TokenSet> set = Parse(contents.str());
  if (!set.ok()) {
    return absl::Status(set.status().code(), absl::StrCat("auth tokens file '", path, "': ", set.status().message()));
  }
  return set;
}

std::optional<std::string> TokenSet::Match(absl::string_view presented) const {
  const Digest digest = Sha256(presented);
  const Entry* found = nullptr;
  for (const Entry& e : entries_) {  // no early exit: every digest is compared
    const bool equal = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    if (equal) found = &e;
  }
  if (found == nullptr) return std::nullopt;
  return found->name;
}

}  // namespace attnd
