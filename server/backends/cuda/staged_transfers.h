// StagedTransfers: moves one call's host tensors to its device memory and the results back, on
// the stream of the call's lane.
//
// Host memory that is page-locked memory of the pool (a HostBuffer the backend lent, or the
// batcher's packed buffers) is copied by DMA directly. Pageable memory (e.g. protobuf's bytes)
// goes through one staging block of the PinnedHostPool, in chunks: the host copies chunk i + 1
// into staging while the DMA engine moves chunk i, and on the way back the host copies chunk i out
// while chunk i + 1 is in flight. So a large pageable tensor costs about max(memcpy, PCIe) rather
// than their sum; the host's copies are spread over a few threads (engine/parallel_copy.h). When
// the pinned pool has no room, the driver's own pageable path is used (slower, still correct).
//
// One staging block serves both directions: the D2H copies into it are queued after the H2D
// copies out of it on the same stream, and the host reads it only after its chunk's event.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "server/backends/cuda/pinned_host_pool.h"
#include "server/backends/cuda/stream_lanes.h"

namespace attnd {

class StagedTransfers {
 public:
  StagedTransfers(PinnedHostPool* pinned, StreamLane* lane) : pinned_(pinned), lane_(lane) {}
  // Waits for copies still in flight (an error path) before the staging block is reused.
  ~StagedTransfers();

  StagedTransfers(const StagedTransfers&) = delete;
  StagedTransfers& operator=(const StagedTransfers&) = delete;

  void AddInput(void* device, const void* host, size_t bytes);
  void AddOutput(void* host, const void* device, size_t bytes);

  // Queues every input copy; returns once the host has copied the pageable ones into staging.
  absl::Status CopyInputs();
  // Queues every output copy (after whatever the stream holds: the kernels).
  absl::Status QueueOutputs();
  // Returns when every result is in the caller's buffers.
  absl::Status FinishOutputs();

  int64_t staged_bytes() const { return staged_bytes_; }  // went through staging (pageable)

  static constexpr size_t kMinChunkBytes = size_t{4} << 20;

 private:
  struct Piece {
    void* dst;
    const void* src;
    size_t bytes;
    bool pinned;  // the host side is page-locked memory of the pool: DMA straight from/to it
  };
  struct PendingChunk {  // a D2H chunk in staging, to copy out once its event fired
    cudaEvent_t done;
    void* dst;
    const void* src;
    size_t bytes;
  };
  // The staging block, sized for the larger direction, on first use. False: none (driver path).
  bool EnsureStaging();
  static size_t ChunkBytes(const std::vector<Piece>& pieces);

  PinnedHostPool* const pinned_;
  StreamLane* const lane_;
  std::vector<Piece> inputs_, outputs_;
  std::vector<PendingChunk> pending_;
  PinnedHostPool::Block staging_;
  bool staging_tried_ = false;
  bool in_flight_ = false;  // copies queued that nobody has waited for yet
  int64_t staged_bytes_ = 0;
};

}  // namespace attnd
