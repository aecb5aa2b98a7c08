#include "server/backends/cuda/stream_lanes.h"

#include "server/backends/cuda/cuda_status.h"

namespace attnd {

absl::StatusOr<std::unique_ptr<StreamLanes>> StreamLanes::Create(int device, int count) {
  if (count < 1) return absl::InvalidArgumentError("streams must be at least 1");
  std::unique_ptr<StreamLanes> lanes(new StreamLanes());
  lanes->device_ = device;
  ATTND_RETURN_IF_CUDA(cudaSetDevice(device), "cudaSetDevice");
  for (int i = 0; i < count; ++i) {
    auto lane = std::make_unique<StreamLane>();
    // Kept in lanes_ before any creation can fail, so the destructor frees what exists.
    StreamLane& l = *lanes->lanes_.emplace_back(std::move(lane));
    ATTND_RETURN_IF_CUDA(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking), "creating a stream");
    for (cudaEvent_t* e : {&l.start, &l.inputs_ready, &l.kernels_done}) {
      ATTND_RETURN_IF_CUDA(cudaEventCreate(e), "creating a timing event");
    }
    l.chunk_done.assign(kChunkEvents, nullptr);
    for (cudaEvent_t& e : l.chunk_done) {
      ATTND_RETURN_IF_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "creating a copy event");
    }
    ATTND_RETURN_IF_CUDA(cudaHostAlloc(&l.metadata, kMetadataBytes, cudaHostAllocPortable),
                         "pinning a lane's room for cu_seqlens");
  }
  absl::MutexLock lock(&lanes->mu_);
  for (auto& lane : lanes->lanes_) lanes->free_.push_back(lane.get());
  return lanes;
}

StreamLanes::~StreamLanes() {
  cudaSetDevice(device_);
  for (auto& l : lanes_) {
    if (l->stream != nullptr) cudaStreamSynchronize(l->stream);
    for (cudaEvent_t e : {l->start, l->inputs_ready, l->kernels_done}) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    for (cudaEvent_t e : l->chunk_done) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    if (l->stream != nullptr) cudaStreamDestroy(l->stream);
    if (l->metadata != nullptr) cudaFreeHost(l->metadata);
  }
}

StreamLanes::Lease StreamLanes::Acquire() {
  StreamLane* lane;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](std::vector<StreamLane*>* f) { return !f->empty(); }, &free_));
    lane = free_.back();
    free_.pop_back();
  }
  return Lease(this, lane);
}

void StreamLanes::Return(StreamLane* lane) {
  absl::MutexLock lock(&mu_);
  free_.push_back(lane);
}

int StreamLanes::busy() const {
  absl::MutexLock lock(&mu_);
  return count() - static_cast<int>(free_.size());
}

}  // namespace attnd
