#include "server/engine/transfer_plan.h"

#include <algorithm>

namespace attnd::engine {

size_t PageableBytes(const std::vector<TransferPiece>& pieces) {
  size_t total = 0;
  for (const TransferPiece& p : pieces) total += p.page_locked ? 0 : p.bytes;
  return total;
}

size_t StagingChunkBytes(const std::vector<TransferPiece>& pieces, size_t max_chunks, size_t min_chunk_bytes) {
  // Each piece may end in a partial chunk: keep one chunk per piece spare for those.
  const size_t spare = max_chunks > pieces.size() ? max_chunks - pieces.size() : 1;
  const size_t by_chunks = (PageableBytes(pieces) + spare - 1) / spare;
  return std::max(min_chunk_bytes, by_chunks);
}

TransferPlan PlanTransfers(const std::vector<TransferPiece>& pieces, bool staging, size_t chunk_bytes) {
  TransferPlan plan;
  chunk_bytes = std::max<size_t>(chunk_bytes, 1);
  size_t staging_offset = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const TransferPiece& p = pieces[i];
    if (p.bytes == 0) continue;
    if (p.page_locked || !staging) {
      const CopyRoute route = p.page_locked ? CopyRoute::kDirect : CopyRoute::kDriverPageable;
      plan.copies.push_back({i, 0, p.bytes, route, 0});
      (p.page_locked ? plan.direct_bytes : plan.pageable_bytes) += static_cast<int64_t>(p.bytes);
      continue;
    }
    for (size_t done = 0; done < p.bytes; done += chunk_bytes) {
      const size_t n = std::min(chunk_bytes, p.bytes - done);
      plan.copies.push_back({i, done, n, CopyRoute::kStaged, staging_offset});
      staging_offset += n;
      ++plan.staged_chunks;
    }
    plan.staged_bytes += static_cast<int64_t>(p.bytes);
  }
  return plan;
}

}  // namespace attnd::engine
