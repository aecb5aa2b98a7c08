#include "server/backends/cuda/staged_transfers.h"

#include <algorithm>

#include "server/backends/cuda/cuda_status.h"
#include "server/engine/parallel_copy.h"

namespace attnd {
namespace {

size_t PageableBytes(const auto& pieces) {
  size_t total = 0;
  for (const auto& p : pieces) total += p.pinned ? 0 : p.bytes;
  return total;
}

std::byte* At(void* base, size_t offset) { return static_cast<std::byte*>(base) + offset; }
const std::byte* At(const void* base, size_t offset) { return static_cast<const std::byte*>(base) + offset; }

}  // namespace

StagedTransfers::~StagedTransfers() {
  if (in_flight_) cudaStreamSynchronize(lane_->stream);
}

void StagedTransfers::AddInput(void* device, const void* host, size_t bytes) {
  if (bytes == 0) return;
  inputs_.push_back({device, host, bytes, pinned_ != nullptr && pinned_->Contains(host, bytes)});
}

void StagedTransfers::AddOutput(void* host, const void* device, size_t bytes) {
  if (bytes == 0) return;
  outputs_.push_back({host, device, bytes, pinned_ != nullptr && pinned_->Contains(host, bytes)});
}

bool StagedTransfers::EnsureStaging() {
  if (staging_tried_) return staging_.get() != nullptr;
  staging_tried_ = true;
  const size_t bytes = std::max(PageableBytes(inputs_), PageableBytes(outputs_));
  if (bytes == 0 || pinned_ == nullptr) return false;
  absl::StatusOr<PinnedHostPool::Block> block = pinned_->Allocate(bytes, "staging of a call's tensors");
  if (!block.ok()) return false;  // the pool is full: the driver stages pageable copies itself
  staging_ = *std::move(block);
  return true;
}

// Chunks large enough to keep the DMA engine busy, few enough for the lane's events.
size_t StagedTransfers::ChunkBytes(const std::vector<Piece>& pieces) {
  const size_t spare_events = StreamLanes::kChunkEvents - pieces.size();
  const size_t by_events = (PageableBytes(pieces) + spare_events - 1) / spare_events;
  return std::max(kMinChunkBytes, by_events);
}

absl::Status StagedTransfers::CopyInputs() {
  const cudaStream_t stream = lane_->stream;
  const bool staged = EnsureStaging();
  const size_t chunk = ChunkBytes(inputs_);
  size_t offset = 0;  // in staging
  for (const Piece& p : inputs_) {
    in_flight_ = true;
    if (p.pinned || !staged) {
      ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(p.dst, p.src, p.bytes, cudaMemcpyHostToDevice, stream), "copying an input");
      continue;
    }
    for (size_t done = 0; done < p.bytes; done += chunk) {
      const size_t n = std::min(chunk, p.bytes - done);
      engine::ParallelCopy::Shared().Copy(At(staging_.get(), offset), At(p.src, done), n);
      ATTND_RETURN_IF_CUDA(
          cudaMemcpyAsync(At(p.dst, done), At(staging_.get(), offset), n, cudaMemcpyHostToDevice, stream),
          "copying an input");
      offset += n;
    }
    staged_bytes_ += static_cast<int64_t>(p.bytes);
  }
  return absl::OkStatus();
}

absl::Status StagedTransfers::QueueOutputs() {
  const cudaStream_t stream = lane_->stream;
  const bool staged = EnsureStaging();
  const size_t chunk = ChunkBytes(outputs_);
  std::vector<PendingChunk>& pending = pending_;
  pending.clear();
  size_t offset = 0;
  for (const Piece& p : outputs_) {
    in_flight_ = true;
    if (p.pinned || !staged) {
      ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(p.dst, p.src, p.bytes, cudaMemcpyDeviceToHost, stream),
                           "copying an output");
      continue;
    }
    for (size_t done = 0; done < p.bytes; done += chunk) {
      const size_t n = std::min(chunk, p.bytes - done);
      ATTND_RETURN_IF_CUDA(
          cudaMemcpyAsync(At(staging_.get(), offset), At(p.src, done), n, cudaMemcpyDeviceToHost, stream),
          "copying an output");
      const cudaEvent_t event = lane_->chunk_done[pending.size()];
      ATTND_RETURN_IF_CUDA(cudaEventRecord(event, stream), "marking an output chunk");
      pending.push_back({event, At(p.dst, done), At(staging_.get(), offset), n});
      offset += n;
    }
    staged_bytes_ += static_cast<int64_t>(p.bytes);
  }
  return absl::OkStatus();
}

absl::Status StagedTransfers::FinishOutputs() {
  // Drain chunk by chunk while later ones are still in flight, then wait for the stream: a direct
  // copy may follow the last chunk (cheap when the stream is already idle).
  for (const PendingChunk& c : pending_) {
    ATTND_RETURN_IF_CUDA(cudaEventSynchronize(c.done), "waiting for an output chunk");
    engine::ParallelCopy::Shared().Copy(c.dst, c.src, c.bytes);
  }
  ATTND_RETURN_IF_CUDA(cudaStreamSynchronize(lane_->stream), "waiting for the outputs");
  in_flight_ = false;
  return absl::OkStatus();
}

}  // namespace attnd
