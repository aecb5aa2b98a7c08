// Which work tiles a CTA of the persistent Hopper forward kernel runs, decided by its producer
// thread (the consumers read each tile's number from shared memory, fwd_producer.cuh).
//
// Dynamic (a zeroed counter in device memory): every CTA starts with tile blockIdx.x and then
// claims the next unclaimed one with one atomicAdd when it finishes issuing a tile's loads, so the
// tiles, numbered heavy-first inside groups of heads (fwd_work_tile.cuh), are run greedily in
// that order: the CTAs that drew short tiles take more of them, longest-job-first balances the
// end, and the CTAs running together work on neighbouring tiles (shared K/V in L2).
// Static (no counter): zigzag rounds, tile r * grid + blockIdx.x in even rounds and
// r * grid + grid - 1 - blockIdx.x in odd ones; balanced to within ~10-30% on causal problems
// (a group of heads seldom fills whole rounds), kept for callers that give no workspace.
#pragma once

namespace attnd::kernels::detail::hopper {

class FwdTileScheduler {
 public:
  __device__ FwdTileScheduler(int num_tiles, int* counter) : num_tiles_(num_tiles), counter_(counter) {}

  __device__ int first() const { return blockIdx.x; }

  // The tile after `tile` for this CTA; >= num_tiles when there is none.
  __device__ int next(int tile) {
    if (counter_ != nullptr) return atomicAdd(counter_, 1) + gridDim.x;
    (void)tile;
    ++pass_;
    return pass_ * gridDim.x + ((pass_ & 1) ? gridDim.x - 1 - blockIdx.x : blockIdx.x);
  }

  __device__ bool done(int tile) const { return tile >= num_tiles_; }

 private:
  int num_tiles_;
  int* counter_;
  int pass_ = 0;
};

}  // namespace attnd::kernels::detail::hopper
