// TransferPlan: which copies of a GPU call go by DMA straight from the caller's memory, which
// through pinned staging (and in what chunks), and which take the driver's pageable path.
#include "server/engine/transfer_plan.h"

#include <random>

#include "gtest/gtest.h"

namespace attnd::engine {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(TransferPlan, PageLockedMemoryIsCopiedDirectlyAndNeverStaged) {
  // A registered shared-memory region (q, k, v) and pool buffers (out, lse): nothing to stage.
  const std::vector<TransferPiece> pieces = {{16 * kMiB, true}, {16 * kMiB, true}, {16 * kMiB, true}, {4096, true}};
  EXPECT_EQ(PageableBytes(pieces), 0u);
  const TransferPlan plan = PlanTransfers(pieces, /*staging=*/false, 4 * kMiB);
  ASSERT_EQ(plan.copies.size(), pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_EQ(plan.copies[i].route, CopyRoute::kDirect);
    EXPECT_EQ(plan.copies[i].piece, i);
    EXPECT_EQ(plan.copies[i].bytes, pieces[i].bytes);  // one DMA per tensor, however large
  }
  EXPECT_EQ(plan.direct_bytes, int64_t(48 * kMiB + 4096));
  EXPECT_EQ(plan.staged_bytes, 0);
  EXPECT_EQ(plan.pageable_bytes, 0);
}

TEST(TransferPlan, PageableMemoryFillsStagingChunkByChunkInOrder) {
  const std::vector<TransferPiece> pieces = {{10 * kMiB + 5, false}, {3 * kMiB, true}, {4 * kMiB, false}, {0, false}};
  const size_t chunk = 4 * kMiB;
  const TransferPlan plan = PlanTransfers(pieces, /*staging=*/true, chunk);
  EXPECT_EQ(PageableBytes(pieces), 14 * kMiB + 5);
  EXPECT_EQ(plan.staged_bytes, int64_t(14 * kMiB + 5));
  EXPECT_EQ(plan.direct_bytes, int64_t(3 * kMiB));
  EXPECT_EQ(plan.staged_chunks, 4);  // 4 + 4 + 2 MiB + 5 bytes, then 4 MiB
  size_t staging_end = 0;
  std::vector<size_t> covered(pieces.size(), 0);
  for (const TransferCopy& c : plan.copies) {
    EXPECT_GT(c.bytes, 0u);
    EXPECT_EQ(c.offset, covered[c.piece]) << "a piece's chunks follow one another";
    covered[c.piece] += c.bytes;
    if (c.route == CopyRoute::kStaged) {
      EXPECT_LE(c.bytes, chunk);
      EXPECT_EQ(c.staging_offset, staging_end) << "staged chunks lie one after another";
      staging_end += c.bytes;
    } else {
      EXPECT_EQ(c.route, CopyRoute::kDirect);
      EXPECT_TRUE(pieces[c.piece].page_locked);
    }
  }
  EXPECT_EQ(staging_end, PageableBytes(pieces)) << "staging holds exactly the pageable bytes";
  for (size_t i = 0; i < pieces.size(); ++i) EXPECT_EQ(covered[i], pieces[i].bytes);
}

TEST(TransferPlan, WithoutStagingPageableMemoryTakesTheDriverPath) {
  const std::vector<TransferPiece> pieces = {{kMiB, false}, {kMiB, true}};
  const TransferPlan plan = PlanTransfers(pieces, /*staging=*/false, 4 * kMiB);
  ASSERT_EQ(plan.copies.size(), 2u);
  EXPECT_EQ(plan.copies[0].route, CopyRoute::kDriverPageable);
  EXPECT_EQ(plan.copies[1].route, CopyRoute::kDirect);
  EXPECT_EQ(plan.pageable_bytes, int64_t(kMiB));
  EXPECT_EQ(plan.staged_bytes, 0);
}

// Each staged D2H chunk takes one of a lane's events: whatever the sizes, the chunks of up to nine
// tensors (a backward call) never outnumber them, and never fall below the minimum chunk.
TEST(TransferPlan, StagedChunksNeverOutnumberTheLaneEvents) {
  std::mt19937_64 rng(5);
  constexpr size_t kEvents = 32, kMinChunk = 4 * kMiB;
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<TransferPiece> pieces(1 + rng() % 9);
    for (TransferPiece& p : pieces) p = {static_cast<size_t>(rng() % (600 * kMiB)), rng() % 3 == 0};
    const size_t chunk = StagingChunkBytes(pieces, kEvents, kMinChunk);
    EXPECT_GE(chunk, kMinChunk);
    EXPECT_LE(PlanTransfers(pieces, true, chunk).staged_chunks, int(kEvents)) << "trial " << trial;
  }
}

}  // namespace
}  // namespace attnd::engine
