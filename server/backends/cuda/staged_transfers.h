// StagedTransfers: moves one call's host tensors to its device memory and the results back, on
// the stream of the call's lane, as engine/transfer_plan.h plans it per direction.
//
// Page-locked host memory is copied by DMA directly: the pool's own (a HostBuffer the backend
// lent, the batcher's packed buffers: recognized by address), memory the caller says is
// page-locked (TensorPlacement::host_page_locked: e.g. a shared-memory region the transport
// registered with cudaHostRegister), and the lane's room for cu_seqlens. Pageable memory (e.g. plain heap buffers) goes through one
// staging block of the PinnedHostPool, in chunks: the host copies chunk i + 1 into staging while
// the DMA engine moves chunk i, and on the way back the host copies chunk i out while chunk i + 1
// is in flight; the host's copies are spread over a few threads (engine/parallel_copy.h). When the
// pinned pool has no room, the driver's own pageable path is used (slower, still correct).
//
// One staging block serves both directions: the D2H copies into it are queued after the H2D
// copies out of it on the same stream, and the host reads it only after its chunk's event.
#pragma once

#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "server/backends/cuda/pinned_host_pool.h"
#include "server/backends/cuda/stream_lanes.h"
#include "server/engine/transfer_plan.h"

namespace attnd {

class StagedTransfers {
 public:
  StagedTransfers(PinnedHostPool* pinned, StreamLane* lane) : pinned_(pinned), lane_(lane) {}
  // Waits for copies still in flight (an error path) before the staging block is reused.
  ~StagedTransfers();

  StagedTransfers(const StagedTransfers&) = delete;
  StagedTransfers& operator=(const StagedTransfers&) = delete;

  // `page_locked`: the caller knows the host memory is page-locked (TensorPlacement::
  // host_page_locked); else it counts as such only when it lies in the pinned pool.
  void AddInput(void* device, const void* host, size_t bytes, bool page_locked = false);
  void AddOutput(void* host, const void* device, size_t bytes, bool page_locked = false);

  // Queues every input copy; returns once the host has copied the pageable ones into staging.
  absl::Status CopyInputs();
  // Queues every output copy (after whatever the stream holds: the kernels).
  absl::Status QueueOutputs();
  // Returns when every result is in the caller's buffers.
  absl::Status FinishOutputs();

  // Bytes of both directions so far, by route (engine::TransferPlan).
  int64_t direct_bytes() const { return direct_bytes_; }
  int64_t staged_bytes() const { return staged_bytes_; }
  int64_t pageable_bytes() const { return pageable_bytes_; }

  static constexpr size_t kMinChunkBytes = size_t{4} << 20;

 private:
  struct Piece {
    void* dst;
    const void* src;
    engine::TransferPiece what;
  };
  struct PendingChunk {  // a D2H chunk in staging, to copy out once its event fired
    cudaEvent_t done;
    void* dst;
    const void* src;
    size_t bytes;
  };
  bool InPool(const void* host, size_t bytes) const;
  // The staging block, sized for the larger direction, on first use. False: none (driver path).
  bool EnsureStaging();
  engine::TransferPlan Plan(const std::vector<Piece>& pieces);

  PinnedHostPool* const pinned_;
  StreamLane* const lane_;
  std::vector<Piece> inputs_, outputs_;
  std::vector<PendingChunk> pending_;
  PinnedHostPool::Block staging_;
  bool staging_tried_ = false;
  bool in_flight_ = false;  // copies queued that nobody has waited for yet
  int64_t direct_bytes_ = 0, staged_bytes_ = 0, pageable_bytes_ = 0;
};

}  // namespace attnd
