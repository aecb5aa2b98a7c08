// StreamLanes: the CUDA streams of one GPU (--streams), each with the events a call needs, lent to
// one call at a time. A call runs its H2D copies, kernels and D2H copies in order on its lane's
// stream; calls on different lanes overlap, so the copy engines move one batch while the SMs
// compute another. The events mark the stage boundaries (timed on the device) and the D2H chunks
// the host drains while later chunks are still in flight. A call that finds every lane busy waits
// (counted as queue time): this bounds the device memory and staging in flight per GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace attnd {

struct StreamLane {
  cudaStream_t stream = nullptr;
  // Timed: recorded before the first H2D copy, after the last one, after the kernels.
  cudaEvent_t start = nullptr, inputs_ready = nullptr, kernels_done = nullptr;
  // Untimed: one per D2H chunk, so the host can copy chunk i out while chunk i + 1 is in flight.
  std::vector<cudaEvent_t> chunk_done;
  // Page-locked room for a call's small host arrays (cu_seqlens), so they go by DMA like the
  // tensors and a call whose tensors are all page-locked needs no staging block at all. The
  // call holding the lane owns it; the previous call's copies out of it are done (its stream was
  // synchronized before the lane came back).
  void* metadata = nullptr;
};

class StreamLanes {
 public:
  static constexpr int kChunkEvents = 32;
  static constexpr size_t kMetadataBytes = size_t{64} << 10;  // cu_seqlens of 8191 sequences, q and k

  static absl::StatusOr<std::unique_ptr<StreamLanes>> Create(int device, int count);
  ~StreamLanes();

  // A lane for one call; returned to the set when destroyed.
  class Lease {
   public:
    Lease(StreamLanes* lanes, StreamLane* lane) : lanes_(lanes), lane_(lane) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { lanes_->Return(lane_); }
    StreamLane& operator*() const { return *lane_; }
    StreamLane* operator->() const { return lane_; }

   private:
    StreamLanes* lanes_;
    StreamLane* lane_;
  };

  // Blocks until a lane is free (the most recently returned one: its memory is warm in the pool).
  Lease Acquire();

  int count() const { return static_cast<int>(lanes_.size()); }
  int busy() const;

 private:
  StreamLanes() = default;
  void Return(StreamLane* lane);

  int device_ = 0;
  std::vector<std::unique_ptr<StreamLane>> lanes_;
  mutable absl::Mutex mu_;
  std::vector<StreamLane*> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd
