// --devices parsing: all, or a list of distinct CUDA ordinals; anything else is named.
#include "server/engine/engine_flags.h"

#include <gtest/gtest.h>

namespace attnd {
namespace {

TEST(ParseDeviceList, AllMeansEveryVisibleDevice) {
  absl::StatusOr<std::vector<int>> d = ParseDeviceList("all");
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->empty());
}

TEST(ParseDeviceList, AListOfOrdinalsKeepsItsOrder) {
  absl::StatusOr<std::vector<int>> d = ParseDeviceList("2, 0,5");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, (std::vector<int>{2, 0, 5}));
}

TEST(ParseDeviceList, BadEntriesAndRepeatsAreNamed) {
  for (const char* bad : {"x", "0,,1", "-1", "1,1", ""}) {
    absl::StatusOr<std::vector<int>> d = ParseDeviceList(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(d.status().message().find("--devices"), std::string_view::npos) << d.status();
  }
}

}  // namespace
}  // namespace attnd
