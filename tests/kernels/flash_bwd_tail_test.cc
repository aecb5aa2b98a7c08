// The backward plan's split of the last partial wave (kernels/src/flash_bwd_tail.cuh): how many
// CTAs each of its units gets. Host arithmetic only, no GPU.
#include <gtest/gtest.h>

#include "flash_bwd_tail.cuh"

namespace attnd::kernels::bwd {
namespace {

constexpr int kSms = 132;  // H100 SXM

// d = 64 benchmark shapes: 4096 units = 31 full waves + 4; 128 query tiles per unit at N = 16k.
TEST(ChooseTailPieces, SplitsASmallLastWaveAsFinelyAsAllowed) {
  EXPECT_EQ(ChooseTailPieces(4, 128, kSms), 32);  // capped at 32 pieces per unit
  EXPECT_EQ(ChooseTailPieces(4, 4, kSms), 4);     // N = 512: one piece per query tile
}

// d = 128 benchmark shapes: 2048 units = 15 full waves + 68, 256 query tiles per unit at 16k.
TEST(ChooseTailPieces, CapsTheTotalNumberOfPieces) {
  const int pieces = ChooseTailPieces(68, 256, kSms);
  EXPECT_EQ(pieces, 3);  // 68 x 3 = 204 <= 2 x 132; 4 would need 272
  EXPECT_LE(68 * pieces, 2 * kSms);
}

// Fewer units than SMs: split until the SMs are busy.
TEST(ChooseTailPieces, FillsTheSmsWhenThereAreFewUnits) {
  EXPECT_EQ(ChooseTailPieces(16, 8, kSms), 8);   // 128 CTAs of one query tile each
  EXPECT_EQ(ChooseTailPieces(2, 2, kSms), 2);
}

TEST(ChooseTailPieces, LeavesUnitsWholeWhenSplittingCannotHelp) {
  EXPECT_EQ(ChooseTailPieces(0, 128, kSms), 1);    // no partial wave
  EXPECT_EQ(ChooseTailPieces(131, 100, kSms), 1);  // the last wave is nearly full
  EXPECT_EQ(ChooseTailPieces(4, 1, kSms), 1);      // one query tile: nothing to split
  EXPECT_EQ(ChooseTailPieces(4, 128, 0), 1);
}

// Never more pieces than query tiles, never past the per-unit cap.
TEST(ChooseTailPieces, StaysWithinTheUnitsTiles) {
  for (int64_t tail = 1; tail < kSms; ++tail)
    for (int64_t items : {2, 3, 7, 64, 1000}) {
      const int pieces = ChooseTailPieces(tail, items, kSms);
      EXPECT_GE(pieces, 1);
      EXPECT_LE(pieces, std::min<int64_t>(items, 32));
      if (pieces > 1) EXPECT_LE(tail * pieces, 2 * kSms) << tail << " " << items;
    }
}

}  // namespace
}  // namespace attnd::kernels::bwd
