#include "server/backends/cuda/staged_transfers.h"

#include <algorithm>

#include "server/backends/cuda/cuda_status.h"
#include "server/engine/parallel_copy.h"

namespace attnd {
namespace {

std::byte* At(void* base, size_t offset) { return static_cast<std::byte*>(base) + offset; }
const std::byte* At(const void* base, size_t offset) { return static_cast<const std::byte*>(base) + offset; }

template <typename Pieces>
std::vector<engine::TransferPiece> What(const Pieces& pieces) {
  std::vector<engine::TransferPiece> what;
  what.reserve(pieces.size());
  for (const auto& p : pieces) what.push_back(p.what);
  return what;
}

}  // namespace

StagedTransfers::~StagedTransfers() {
  if (in_flight_) cudaStreamSynchronize(lane_->stream);
}

bool StagedTransfers::InPool(const void* host, size_t bytes) const {
  return pinned_ != nullptr && pinned_->Contains(host, bytes);
}

void StagedTransfers::AddInput(void* device, const void* host, size_t bytes, bool page_locked) {
  if (bytes == 0) return;
  inputs_.push_back({device, host, {bytes, page_locked || InPool(host, bytes)}});
}

void StagedTransfers::AddOutput(void* host, const void* device, size_t bytes, bool page_locked) {
  if (bytes == 0) return;
  outputs_.push_back({host, device, {bytes, page_locked || InPool(host, bytes)}});
}

bool StagedTransfers::EnsureStaging() {
  if (staging_tried_) return staging_.get() != nullptr;
  staging_tried_ = true;
  const size_t bytes = std::max(engine::PageableBytes(What(inputs_)), engine::PageableBytes(What(outputs_)));
  if (bytes == 0 || pinned_ == nullptr) return false;
  absl::StatusOr<PinnedHostPool::Block> block = pinned_->Allocate(bytes, "staging of a call's tensors");
  if (!block.ok()) return false;  // the pool is full: the driver stages pageable copies itself
  staging_ = *std::move(block);
  return true;
}

engine::TransferPlan StagedTransfers::Plan(const std::vector<Piece>& pieces) {
  const std::vector<engine::TransferPiece> what = What(pieces);
  const bool staged = EnsureStaging();
  engine::TransferPlan plan =
      engine::PlanTransfers(what, staged, engine::StagingChunkBytes(what, StreamLanes::kChunkEvents, kMinChunkBytes));
  direct_bytes_ += plan.direct_bytes;
  staged_bytes_ += plan.staged_bytes;
  pageable_bytes_ += plan.pageable_bytes;
  return plan;
}

absl::Status StagedTransfers::CopyInputs() {
  const cudaStream_t stream = lane_->stream;
  const engine::TransferPlan plan = Plan(inputs_);
  for (const engine::TransferCopy& c : plan.copies) {
    const Piece& p = inputs_[c.piece];
    in_flight_ = true;
    const void* from = At(p.src, c.offset);
    if (c.route == engine::CopyRoute::kStaged) {
      engine::ParallelCopy::Shared().Copy(At(staging_.get(), c.staging_offset), from, c.bytes);
      from = At(staging_.get(), c.staging_offset);
    }
    ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(At(p.dst, c.offset), from, c.bytes, cudaMemcpyHostToDevice, stream),
                         "copying an input");
  }
  return absl::OkStatus();
}

absl::Status StagedTransfers::QueueOutputs() {
  const cudaStream_t stream = lane_->stream;
  const engine::TransferPlan plan = Plan(outputs_);
  pending_.clear();
  for (const engine::TransferCopy& c : plan.copies) {
    const Piece& p = outputs_[c.piece];
    in_flight_ = true;
    if (c.route != engine::CopyRoute::kStaged) {
      ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(At(p.dst, c.offset), At(p.src, c.offset), c.bytes, cudaMemcpyDeviceToHost,
                                           stream),
                           "copying an output");
      continue;
    }
    void* staged = At(staging_.get(), c.staging_offset);
    ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(staged, At(p.src, c.offset), c.bytes, cudaMemcpyDeviceToHost, stream),
                         "copying an output");
    const cudaEvent_t event = lane_->chunk_done[pending_.size()];
    ATTND_RETURN_IF_CUDA(cudaEventRecord(event, stream), "marking an output chunk");
    pending_.push_back({event, At(p.dst, c.offset), staged, c.bytes});
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
