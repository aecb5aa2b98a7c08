#include "server/transport/parallel_range_copier.h"

#include "server/engine/parallel_copy.h"

namespace attnd {

void CopyRangesInParallel(const std::vector<CopyRange>& ranges) {
  std::vector<engine::ParallelCopy::Range> parts;
  parts.reserve(ranges.size());
  for (const CopyRange& r : ranges) parts.push_back({r.dst, r.src, r.bytes});
  engine::ParallelCopy::Shared().Copy(parts);
}

}  // namespace attnd
