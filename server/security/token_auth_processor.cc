#include "server/security/token_auth_processor.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace attnd {
namespace {

constexpr absl::string_view kHealthPrefix = "/grpc.health.v1.Health/";

absl::string_view View(const grpc::string_ref& s) { return absl::string_view(s.data(), s.size()); }

// The value of `key` in the call's metadata, or empty.
absl::string_view Find(const grpc::AuthMetadataProcessor::InputMetadata& metadata, absl::string_view key) {
  auto it = metadata.find(grpc::string_ref(key.data(), key.size()));
  return it == metadata.end() ? absl::string_view() : View(it->second);
}

}  // namespace

TokenAuthProcessor::TokenAuthProcessor(std::string path, TokenSet tokens)
    : path_(std::move(path)), tokens_(std::make_shared<const TokenSet>(std::move(tokens))) {}

absl::StatusOr<std::shared_ptr<TokenAuthProcessor>> TokenAuthProcessor::Load(const std::string& path) {
  absl::StatusOr<TokenSet> tokens = TokenSet::Load(path);
  if (!tokens.ok()) return tokens.status();
  return std::shared_ptr<TokenAuthProcessor>(new TokenAuthProcessor(path, *std::move(tokens)));
}

absl::StatusOr<int> TokenAuthProcessor::Reload() {
  absl::StatusOr<TokenSet> tokens = TokenSet::Load(path_);
  if (!tokens.ok()) return tokens.status();
  const int count = tokens->size();
  absl::MutexLock lock(&mu_);
  tokens_ = std::make_shared<const TokenSet>(*std::move(tokens));
  return count;
}

grpc::Status TokenAuthProcessor::Refuse(grpc::StatusCode code, const char* message) const {
  if (on_refused_) on_refused_(code);
  return grpc::Status(code, message);
}

grpc::Status TokenAuthProcessor::Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                                         OutputMetadata* consumed_auth_metadata, OutputMetadata*) {
  if (absl::StartsWith(Find(auth_metadata, ":path"), kHealthPrefix)) return grpc::Status::OK;
  const absl::string_view authorization = Find(auth_metadata, "authorization");
  if (authorization.empty()) {
    return Refuse(grpc::StatusCode::UNAUTHENTICATED,
                  "attnd requires a bearer token: send the metadata 'authorization: Bearer <token>'");
  }
  // RFC 6750: the scheme is case-insensitive, one space, then the token.
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme)) {
    return Refuse(grpc::StatusCode::UNAUTHENTICATED, "the 'authorization' metadata is not 'Bearer <token>'");
  }
  std::shared_ptr<const TokenSet> tokens;
  {
    absl::MutexLock lock(&mu_);
    tokens = tokens_;
  }
  std::optional<std::string> name = tokens->Match(authorization.substr(kScheme.size()));
  if (!name.has_value()) {
    return Refuse(grpc::StatusCode::PERMISSION_DENIED, "the bearer token is not accepted by this attnd");
  }
  context->AddProperty(kTokenNameProperty, *name);
  context->SetPeerIdentityPropertyName(kTokenNameProperty);
  // The handler has no use for the token; keep it out of its view of the metadata.
  consumed_auth_metadata->insert(std::make_pair("authorization", std::string(authorization)));
  return grpc::Status::OK;
}

}  // namespace attnd
