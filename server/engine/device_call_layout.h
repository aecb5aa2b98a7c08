// DeviceCallLayout: the one device allocation of a GPU call (backends/cuda DeviceCall): every
// tensor copied to the device and the kernels' workspace, each at a 256-byte aligned offset; and
// how many bytes the call asks its device memory pool for. Host arithmetic only (CI tests it).
//
// Why a call may ask for more than it needs: packed batches vary in size from launch to launch,
// and a pool that serves each from a block of its own size class keeps meeting a new largest
// batch, i.e. a driver allocation (cudaMalloc) every so often for as long as the daemon runs
// (measured on the H100: 2-5 per 2 s step with the batcher). The batcher says how many rows its
// calls may reach (ForwardArgs::reserve_rows = max_batch_tokens); a call then asks for the
// layout it would have with that many rows, the same size for every call of a kind, so each lane
// keeps reusing one block whatever the batch composition. Bounded: the lanes' reservations
// together stay within a quarter of the pool's cap, else a call asks for its own size (and a
// cached reservation is released like any cached block when a larger call needs the room).
#pragma once

#include <cstddef>
#include <cstdint>

#include "server/core/attention_problem.h"

namespace attnd::engine {

class DeviceCallLayout {
 public:
  static constexpr size_t kAlignment = 256;
  static size_t Aligned(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

  // Places a piece of `bytes` after the others; returns its offset.
  size_t Add(size_t bytes) {
    const size_t at = total_;
    total_ += Aligned(bytes);
    return at;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

// The device bytes of a forward (backward) call of `shape` in `dtype` grown to `rows` rows of q and
// of k: its tensors as the CUDA backend places them (forward: q, k, v, out, lse; backward: q, k, v,
// out, grad_out, lse, grad_q, grad_k, grad_v), two cu_seqlens arrays of `cu_bytes` each, and
// `workspace`. With rows = the call's own rows, exactly its layout; with the batcher's
// reserve_rows, what it reserves.
size_t ForwardCallBytes(const AttentionShape& shape, DType dtype, int64_t rows, size_t cu_bytes, size_t workspace);
size_t BackwardCallBytes(const AttentionShape& shape, DType dtype, int64_t rows, size_t cu_bytes, size_t workspace);

// The bytes a call asks its pool for: `exact` (its own layout), or `reserved` (its layout at the
// caller's reserve_rows; 0: none) when that is larger and `lanes` reservations fit in a
// quarter of `cap_bytes`.
size_t DeviceRequestBytes(size_t exact, size_t reserved, int64_t cap_bytes, int lanes);

}  // namespace attnd::engine
