// TransferPlan: how one direction of a call's host <-> device copies runs, decided on the host
// (no CUDA here, so CI checks it): StagedTransfers (backends/cuda) carries a plan out on a stream.
//
//   - A page-locked host buffer (the backend's pinned pool, or memory registered with the driver
//     such as a shared-memory region under cudaHostRegister) is copied by DMA directly: the copy
//     engine reads or writes it at PCIe speed, asynchronously, with no host copy at all.
//   - A pageable buffer goes through the call's staging block (page-locked) in chunks: the host
//     copies chunk i + 1 into staging while the DMA engine moves chunk i (and the reverse on the
//     way back), so a large tensor costs about max(memcpy, PCIe) rather than their sum.
//   - A pageable buffer with no staging block to be had (the pinned pool is full) takes the
//     driver's own path: still correct, synchronous and slower.
// Staged chunks lie one after another in the staging block, so the block must hold the
// direction's pageable bytes (PageableBytes); one block serves both directions of a call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace attnd::engine {

struct TransferPiece {
  size_t bytes = 0;
  bool page_locked = false;  // the host side may be read/written by DMA directly
};

enum class CopyRoute { kDirect, kStaged, kDriverPageable };

// One copy on the stream: bytes [offset, offset + bytes) of piece `piece`; staged copies go
// through staging at `staging_offset`.
struct TransferCopy {
  size_t piece = 0;
  size_t offset = 0;
  size_t bytes = 0;
  CopyRoute route = CopyRoute::kDirect;
  size_t staging_offset = 0;
};

struct TransferPlan {
  std::vector<TransferCopy> copies;  // in piece order, each piece's chunks in address order
  int64_t direct_bytes = 0;          // DMA straight from/to page-locked host memory
  int64_t staged_bytes = 0;          // through the staging block (a host copy each way)
  int64_t pageable_bytes = 0;        // the driver's pageable path (no staging block)
  int staged_chunks = 0;
};

// Bytes of the pieces that are not page-locked: what staging must hold for them.
size_t PageableBytes(const std::vector<TransferPiece>& pieces);

// Size of a staging chunk: at least `min_chunk_bytes` (smaller chunks leave the DMA engine idle
// between them), and large enough that the staged chunks of `pieces` number at most
// `max_chunks` (each D2H chunk needs one of the lane's events). Holds for pieces.size() <
// max_chunks.
size_t StagingChunkBytes(const std::vector<TransferPiece>& pieces, size_t max_chunks, size_t min_chunk_bytes);

// The copies for `pieces`; `staging`: whether a staging block of PageableBytes(pieces) is there.
TransferPlan PlanTransfers(const std::vector<TransferPiece>& pieces, bool staging, size_t chunk_bytes);

}  // namespace attnd::engine
