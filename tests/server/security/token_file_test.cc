// The bearer-token file: what parses, what is refused (naming the line), and matching.
#include "server/security/token_file.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace attnd {
namespace {

TEST(TokenSet, ParsesNamesAndTokensSkippingCommentsAndBlankLines) {
  absl::StatusOr<TokenSet> set = TokenSet::Parse(
      "# attnd tokens\n\n  trainer-a   dHJhaW5lci1hLXRva2VuLTAx  \nnote.book@lab\tbm90ZWJvb2stdG9rZW4tMDI=\n");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->size(), 2);
  EXPECT_EQ(set->Match("dHJhaW5lci1hLXRva2VuLTAx"), "trainer-a");
  EXPECT_EQ(set->Match("bm90ZWJvb2stdG9rZW4tMDI="), "note.book@lab");
}

TEST(TokenSet, MatchesOnlyTheWholeToken) {
  absl::StatusOr<TokenSet> set = TokenSet::Parse("a dHJhaW5lci1hLXRva2VuLTAx\n");
  ASSERT_TRUE(set.ok());
  EXPECT_FALSE(set->Match("").has_value());
  EXPECT_FALSE(set->Match("dHJhaW5lci1hLXRva2VuLTA").has_value());    // a prefix
  EXPECT_FALSE(set->Match("dHJhaW5lci1hLXRva2VuLTAxx").has_value());  // longer
  EXPECT_FALSE(set->Match("DHJhaW5lci1hLXRva2VuLTAx").has_value());   // case matters
}

TEST(TokenSet, BadFilesAreRefusedNamingTheLine) {
  struct Case {
    const char* contents;
    const char* says;
  };
  const Case cases[] = {
      {"", "no token"},
      {"# only a comment\n", "no token"},
      {"trainer-a\n", "line 1"},
      {"a dHJhaW5lci1hLXRva2VuLTAx extra\n", "line 1"},
      {"a short\n", "line 1: the token of 'a' must be 16"},
      {"a dHJhaW5lci1hLXRva2VuLTAx\nb has,a,comma,in,it,x\n", "line 2"},
      {"a dHJhaW5lci1hLXRva2VuLTAx\na bm90ZWJvb2stdG9rZW4tMDI=\n", "name 'a' appears twice"},
      {"a dHJhaW5lci1hLXRva2VuLTAx\nb dHJhaW5lci1hLXRva2VuLTAx\n", "another name's too"},
      {"na/me dHJhaW5lci1hLXRva2VuLTAx\n", "name 'na/me'"},
      {"a ==dHJhaW5lci1hLXRva2VuLTAx\n", "line 1"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<TokenSet> set = TokenSet::Parse(c.contents);
    ASSERT_FALSE(set.ok()) << c.contents;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(set.status().message(), c.says)) << set.status() << " for " << c.contents;
  }
}

TEST(TokenSet, AMissingFileIsNotFound) {
  absl::StatusOr<TokenSet> set = TokenSet::Load("/nonexistent/attnd/tokens");
  EXPECT_EQ(set.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(set.status().message(), "/nonexistent/attnd/tokens"));
}

}  // namespace
}  // namespace attnd
