// DeviceCallLayout and DeviceRequestBytes: a GPU call's one allocation, and when it asks for a full
// batch's worth (the batcher's reserve_rows) instead of its own size.
#include "server/engine/device_call_layout.h"

#include "gtest/gtest.h"

namespace attnd::engine {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

TEST(DeviceCallLayout, EveryPieceStartsOn256Bytes) {
  DeviceCallLayout l;
  EXPECT_EQ(l.Add(1), 0u);
  EXPECT_EQ(l.Add(300), 256u);
  EXPECT_EQ(l.Add(0), 768u);  // an empty piece (no workspace) takes no room
  EXPECT_EQ(l.Add(256), 768u);
  EXPECT_EQ(l.total(), 1024u);
}

TEST(DeviceRequestBytes, AFullBatchIsReservedWhileTheLanesReservationsFitAQuarterOfTheCap) {
  // 2 lanes x 1 GiB fit a quarter of 8 GiB: every call asks for the reservation.
  EXPECT_EQ(DeviceRequestBytes(1000, size_t(kGiB), 8 * kGiB, 2), size_t(kGiB));
  // ... but not of 7 GiB: then a call asks for its own size.
  EXPECT_EQ(DeviceRequestBytes(1000, size_t(kGiB), 7 * kGiB, 2), 1000u);
  EXPECT_EQ(DeviceRequestBytes(1000, size_t(kGiB), 8 * kGiB, 3), 1000u);
}

TEST(DeviceRequestBytes, ACallLargerThanItsReservationOrWithoutOneAsksForItself) {
  EXPECT_EQ(DeviceRequestBytes(5000, 4000, 8 * kGiB, 2), 5000u);
  EXPECT_EQ(DeviceRequestBytes(5000, 0, 8 * kGiB, 2), 5000u);
  EXPECT_EQ(DeviceRequestBytes(5000, 6000, 0, 2), 5000u);  // no cap known: no reservation
  EXPECT_EQ(DeviceRequestBytes(0, 0, 8 * kGiB, 2), 0u);
}

// With the call's own rows, exactly its layout; grown to the batcher's reserve_rows, never less
// (the reservation must fit every call that fits the batch).
TEST(DeviceCallLayout, ACallGrownToItsReserveRowsNeverNeedsLessThanItself) {
  const AttentionShape s = DenseShape(2, 100, 100, 16, 4, 128);
  const size_t cu = 3 * sizeof(int32_t);
  auto a = DeviceCallLayout::Aligned;
  const size_t q = 200 * 16 * 128 * 2, kv = 200 * 4 * 128 * 2, lse = 200 * 16 * 4;
  EXPECT_EQ(ForwardCallBytes(s, DType::kBF16, 200, cu, 0), 2 * a(q) + 2 * a(kv) + a(lse) + 2 * a(cu));
  EXPECT_EQ(BackwardCallBytes(s, DType::kBF16, 200, cu, 4096),
            4 * a(q) + 4 * a(kv) + a(lse) + 2 * a(cu) + 4096);
  size_t last = 0;
  for (int64_t rows : {200, 201, 1000, 16384}) {
    const size_t grown = ForwardCallBytes(s, DType::kBF16, rows, cu, 0);
    EXPECT_GT(grown, last);
    last = grown;
  }
}

}  // namespace
}  // namespace attnd::engine
