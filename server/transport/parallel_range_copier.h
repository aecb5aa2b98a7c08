// CopyRangesInParallel: a RangeCopier (range_copier.h) over the engine's ParallelCopy helper threads
// (server/engine/parallel_copy.h; copies under 1 MiB stay on the caller). It is the one bridge
// from the transport to the engine, in a library of its own (attnd_parallel_range_copier): the
// codec and the transport state (attnd_wire, attnd_transport) link no engine code. The daemon's
// AttentionServer and the client library hand it to the transport.
#pragma once

#include <vector>

#include "server/transport/range_copier.h"

namespace attnd {

void CopyRangesInParallel(const std::vector<CopyRange>& ranges);

}  // namespace attnd
