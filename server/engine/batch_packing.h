// Packing: turns several compatible calls (same BatchKey) into ONE packed-varlen call of the inner
// backend, and copies each caller's results back. Each caller's sequences become consecutive
// sequences of the packed batch, so cu_seqlens of the batch are the callers' own cu_seqlens shifted
// by the rows before them; the batch's logsumexp is packed ([heads_q, total_q]) and is re-laid out
// into each caller's own layout (dense [batch, heads_q, seqlen_q] or packed) on the way back.
//
// The packers own their staging buffers and keep them between batches (one packer per executor
// thread), so steady-state batching allocates no host memory; a batch never exceeds
// max_batch_tokens, which bounds them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "server/backend.h"
#include "server/core/attention_problem.h"

namespace attnd::engine {

// Whether a call is self-consistent enough to be copied into a packed batch: host buffers (a
// device-resident call is never copied through the host), cu_seqlens well formed and matching the
// totals, a dense shape's sequences all max_seqlen_q long (its lse layout depends on it), no
// missing buffer. Calls that fail are never packed with others: they run alone
// and the inner backend reports what is wrong with them (neighbours are never put at risk).
bool IsPackable(const ForwardArgs& args);
bool IsPackable(const BackwardArgs& args);

// Grow-only host buffer whose contents are not initialized (no memset per batch). Its memory
// comes from the inner backend (Backend::AllocateHostBuffer): page-locked for CUDA, so the packed
// batch goes to the GPU by DMA with no second staging copy. The first time it is too small it
// grows straight to the size of a full batch (`full_bytes`: max_batch_tokens rows), so it is
// allocated once, not once per new largest batch (each a driver call when pinned: measured 30-60
// per load step on the H100 before); beyond kMaxEagerBytes it grows by half again instead.
class ScratchBuffer {
 public:
  static constexpr size_t kMaxEagerBytes = size_t{256} << 20;

  explicit ScratchBuffer(Backend* host_memory = nullptr) : host_memory_(host_memory) {}
  // Throws std::bad_alloc when no host memory can be had (the batcher turns it into a status).
  void* Reserve(size_t bytes, size_t full_bytes = 0);
  size_t capacity() const { return buffer_.size; }

 private:
  Backend* host_memory_;
  HostBuffer buffer_;
};

class ForwardPacker {
 public:
  // `host_memory`: the backend whose host buffers the packed tensors live in (null: plain memory).
  // `max_rows`: the most rows of a batch (max_batch_tokens), what the buffers grow to at once.
  explicit ForwardPacker(Backend* host_memory = nullptr, int64_t max_rows = 0)
      : max_rows_(static_cast<size_t>(max_rows)), q_(host_memory), k_(host_memory), v_(host_memory),
        out_(host_memory), lse_(host_memory) {}
  // Builds the packed call of `calls` (>= 1, all with one BatchKey, all packable): gathers q, k, v
  // into this packer's buffers. The returned args (and the shape they point to) stay valid until
  // the next Pack.
  const ForwardArgs& Pack(const std::vector<const ForwardArgs*>& calls);
  // After the packed call succeeded: each caller's out rows and lse, in the caller's layout.
  void Scatter(const std::vector<const ForwardArgs*>& calls) const;

 private:
  AttentionShape shape_;
  std::vector<int64_t> q_offsets_, k_offsets_;
  size_t max_rows_;
  ScratchBuffer q_, k_, v_, out_, lse_;
  ForwardArgs args_;
};

class BackwardPacker {
 public:
  explicit BackwardPacker(Backend* host_memory = nullptr, int64_t max_rows = 0)
      : max_rows_(static_cast<size_t>(max_rows)), q_(host_memory), k_(host_memory), v_(host_memory),
        out_(host_memory), lse_(host_memory), grad_out_(host_memory), grad_q_(host_memory), grad_k_(host_memory),
        grad_v_(host_memory) {}
  // As ForwardPacker::Pack, for q, k, v, out, lse (re-laid out to packed) and grad_out.
  const BackwardArgs& Pack(const std::vector<const BackwardArgs*>& calls);
  // After the packed call succeeded: each caller's rows of grad_q, grad_k, grad_v.
  void Scatter(const std::vector<const BackwardArgs*>& calls) const;

 private:
  AttentionShape shape_;
  std::vector<int64_t> q_offsets_, k_offsets_;
  size_t max_rows_;
  ScratchBuffer q_, k_, v_, out_, lse_, grad_out_, grad_q_, grad_k_, grad_v_;
  BackwardArgs args_;
};

}  // namespace attnd::engine
