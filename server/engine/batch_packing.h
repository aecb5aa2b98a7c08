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

#include "server/core/attention_problem.h"

namespace attnd::engine {

// Whether a call is self-consistent enough to be copied into a packed batch: cu_seqlens well
// formed and matching the totals, a dense shape's sequences all max_seqlen_q long (its lse layout
// depends on it), no missing buffer. Calls that fail are never packed with others: they run alone
// and the inner backend reports what is wrong with them (neighbours are never put at risk).
bool IsPackable(const ForwardArgs& args);
bool IsPackable(const BackwardArgs& args);

// Grow-only host buffer whose contents are not initialized (no memset per batch).
class ScratchBuffer {
 public:
  void* Reserve(size_t bytes);

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t capacity_ = 0;
};

class ForwardPacker {
 public:
  // Builds the packed call of `calls` (>= 1, all with one BatchKey, all packable): gathers q, k, v
  // into this packer's buffers. The returned args (and the shape they point to) stay valid until
  // the next Pack.
  const ForwardArgs& Pack(const std::vector<const ForwardArgs*>& calls);
  // After the packed call succeeded: each caller's out rows and lse, in the caller's layout.
  void Scatter(const std::vector<const ForwardArgs*>& calls) const;

 private:
  AttentionShape shape_;
  std::vector<int64_t> q_offsets_, k_offsets_;
  ScratchBuffer q_, k_, v_, out_, lse_;
  ForwardArgs args_;
};

class BackwardPacker {
 public:
  // As ForwardPacker::Pack, for q, k, v, out, lse (re-laid out to packed) and grad_out.
  const BackwardArgs& Pack(const std::vector<const BackwardArgs*>& calls);
  // After the packed call succeeded: each caller's rows of grad_q, grad_k, grad_v.
  void Scatter(const std::vector<const BackwardArgs*>& calls) const;

 private:
  AttentionShape shape_;
  std::vector<int64_t> q_offsets_, k_offsets_;
  ScratchBuffer q_, k_, v_, out_, lse_, grad_out_, grad_q_, grad_k_, grad_v_;
  BackwardArgs args_;
};

}  // namespace attnd::engine
