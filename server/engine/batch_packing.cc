#include "server/engine/batch_packing.h"

#include "server/engine/parallel_copy.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

namespace attnd::engine {
namespace {

bool IsPackableShape(const AttentionShape* shape) {
  if (shape == nullptr) return false;
  const AttentionShape& s = *shape;
  if (s.batch < 0 || s.heads_q <= 0 || s.heads_kv <= 0 || s.head_dim <= 0) return false;
  if (s.total_q < 0 || s.total_k < 0 || s.total_q > std::numeric_limits<int32_t>::max() ||
      s.total_k > std::numeric_limits<int32_t>::max()) {
    return false;
  }
  const size_t offsets = static_cast<size_t>(s.batch) + 1;
  if (s.cu_seqlens_q.size() != offsets || s.cu_seqlens_k.size() != offsets) return false;
  if (s.cu_seqlens_q[0] != 0 || s.cu_seqlens_k[0] != 0) return false;
  if (s.cu_seqlens_q[s.batch] != s.total_q || s.cu_seqlens_k[s.batch] != s.total_k) return false;
  for (int b = 0; b < s.batch; ++b) {
    const int lq = s.seqlen_q(b), lk = s.seqlen_k(b);
    if (lq < 0 || lk < 0 || lq > s.max_seqlen_q || lk > s.max_seqlen_k) return false;
    if (!s.packed && lq != s.max_seqlen_q) return false;  // dense lse rows are max_seqlen_q long
  }
  return true;
}

bool Present(const void* p, int64_t elements) { return p != nullptr || elements == 0; }

// Concatenates the callers' sequences into `packed` and records where each caller's rows start.
template <typename Args>
void PackShape(const std::vector<const Args*>& calls, AttentionShape& packed, std::vector<int64_t>& q_offsets,
               std::vector<int64_t>& k_offsets) {
  const AttentionShape& first = *calls.front()->shape;
  packed.batch = 0;
  packed.heads_q = first.heads_q;
  packed.heads_kv = first.heads_kv;
  packed.head_dim = first.head_dim;
  packed.max_seqlen_q = packed.max_seqlen_k = 0;
  packed.packed = true;
  packed.cu_seqlens_q.assign(1, 0);
  packed.cu_seqlens_k.assign(1, 0);
  q_offsets.clear();
  k_offsets.clear();
  int64_t q_rows = 0, k_rows = 0;
  for (const Args* call : calls) {
    const AttentionShape& s = *call->shape;
    q_offsets.push_back(q_rows);
    k_offsets.push_back(k_rows);
    for (int b = 0; b < s.batch; ++b) {
      packed.cu_seqlens_q.push_back(static_cast<int32_t>(q_rows + s.cu_seqlens_q[b + 1]));
      packed.cu_seqlens_k.push_back(static_cast<int32_t>(k_rows + s.cu_seqlens_k[b + 1]));
      packed.max_seqlen_q = std::max(packed.max_seqlen_q, s.seqlen_q(b));
      packed.max_seqlen_k = std::max(packed.max_seqlen_k, s.seqlen_k(b));
    }
    packed.batch += s.batch;
    q_rows += s.total_q;
    k_rows += s.total_k;
  }
  packed.total_q = q_rows;
  packed.total_k = k_rows;
}

// Copies each caller's rows of one [rows, heads, head_dim] tensor into the packed tensor (gather)
// or back (scatter). `tensor` picks the caller's buffer; rows are contiguous in both layouts.
// The copies go to `copies` and run together (ParallelCopy): a batch's tensors are megabytes.
template <typename Args, typename Tensor>
void GatherRows(const std::vector<const Args*>& calls, const std::vector<int64_t>& offsets, bool q_rows,
                size_t row_bytes, Tensor tensor, void* packed, std::vector<ParallelCopy::Range>& copies) {
  for (size_t c = 0; c < calls.size(); ++c) {
    const AttentionShape& s = *calls[c]->shape;
    const int64_t rows = q_rows ? s.total_q : s.total_k;
    if (rows == 0) continue;
    copies.push_back({static_cast<std::byte*>(packed) + offsets[c] * row_bytes, tensor(*calls[c]), rows * row_bytes});
  }
}

template <typename Args, typename Tensor>
void ScatterRows(const std::vector<const Args*>& calls, const std::vector<int64_t>& offsets, bool q_rows,
                 size_t row_bytes, const void* packed, Tensor tensor, std::vector<ParallelCopy::Range>& copies) {
  for (size_t c = 0; c < calls.size(); ++c) {
    const AttentionShape& s = *calls[c]->shape;
    const int64_t rows = q_rows ? s.total_q : s.total_k;
    if (rows == 0) continue;
    copies.push_back({tensor(*calls[c]), static_cast<const std::byte*>(packed) + offsets[c] * row_bytes,
                      rows * row_bytes});
  }
}

// Packed lse index of (sequence b of the caller, head h, query 0) is h * total + offset + cu[b];
// the caller's is its own LseIndex (dense or packed). Each (b, h) is one contiguous run.
void CopyLse(const AttentionShape& caller, int64_t q_offset, int64_t packed_total_q, const float* from,
             float* to, bool to_packed) {
  for (int h = 0; h < caller.heads_q; ++h) {
    for (int b = 0; b < caller.batch; ++b) {
      const int len = caller.seqlen_q(b);
      if (len == 0) continue;
      const int64_t packed_index = int64_t{h} * packed_total_q + q_offset + caller.cu_seqlens_q[b];
      const int64_t caller_index = caller.LseIndex(b, h, 0);
      if (to_packed) {
        std::memcpy(to + packed_index, from + caller_index, len * sizeof(float));
      } else {
        std::memcpy(to + caller_index, from + packed_index, len * sizeof(float));
      }
    }
  }
}

}  // namespace

bool IsPackable(const ForwardArgs& a) {
  if (a.placement.space != MemorySpace::kHost || !IsPackableShape(a.shape)) return false;
  const AttentionShape& s = *a.shape;
  return Present(a.q, s.q_elements()) && Present(a.k, s.kv_elements()) && Present(a.v, s.kv_elements()) &&
         Present(a.out, s.q_elements()) && Present(a.lse, s.lse_elements());
}

bool IsPackable(const BackwardArgs& a) {
  if (a.placement.space != MemorySpace::kHost || !IsPackableShape(a.shape)) return false;
  const AttentionShape& s = *a.shape;
  return Present(a.q, s.q_elements()) && Present(a.k, s.kv_elements()) && Present(a.v, s.kv_elements()) &&
         Present(a.out, s.q_elements()) && Present(a.lse, s.lse_elements()) &&
         Present(a.grad_out, s.q_elements()) && Present(a.grad_q, s.q_elements()) &&
         Present(a.grad_k, s.kv_elements()) && Present(a.grad_v, s.kv_elements());
}

void* ScratchBuffer::Reserve(size_t bytes, size_t full_bytes) {
  if (buffer_.data != nullptr && bytes <= buffer_.size) return buffer_.data;
  const size_t grown =
      std::max(bytes, full_bytes <= kMaxEagerBytes ? full_bytes : buffer_.size + buffer_.size / 2);
  buffer_ = HostBuffer{};  // give the old one back first: the pool may reuse its block
  absl::StatusOr<HostBuffer> fresh =
      host_memory_ != nullptr ? host_memory_->AllocateHostBuffer(grown) : AllocatePlainHostBuffer(grown);
  if (!fresh.ok()) fresh = AllocatePlainHostBuffer(grown);
  if (!fresh.ok()) throw std::bad_alloc();
  buffer_ = *std::move(fresh);
  return buffer_.data;
}

const ForwardArgs& ForwardPacker::Pack(const std::vector<const ForwardArgs*>& calls) {
  PackShape(calls, shape_, q_offsets_, k_offsets_);
  const ForwardArgs& first = *calls.front();
  const size_t esize = ElementSize(first.dtype);
  const size_t q_row = size_t(shape_.heads_q) * shape_.head_dim * esize;
  const size_t kv_row = size_t(shape_.heads_kv) * shape_.head_dim * esize;
  args_ = ForwardArgs{};
  args_.shape = &shape_;
  args_.options = first.options;
  args_.dtype = first.dtype;
  void* q = q_.Reserve(shape_.total_q * q_row, max_rows_ * q_row);
  void* k = k_.Reserve(shape_.total_k * kv_row, max_rows_ * kv_row);
  void* v = v_.Reserve(shape_.total_k * kv_row, max_rows_ * kv_row);
  std::vector<ParallelCopy::Range> copies;
  GatherRows(calls, q_offsets_, true, q_row, [](const ForwardArgs& a) { return a.q; }, q, copies);
  GatherRows(calls, k_offsets_, false, kv_row, [](const ForwardArgs& a) { return a.k; }, k, copies);
  GatherRows(calls, k_offsets_, false, kv_row, [](const ForwardArgs& a) { return a.v; }, v, copies);
  ParallelCopy::Shared().Copy(copies);
  args_.q = q;
  args_.k = k;
  args_.v = v;
  args_.out = out_.Reserve(shape_.total_q * q_row, max_rows_ * q_row);
  const size_t lse_row = shape_.heads_q * sizeof(float);
  args_.lse = static_cast<float*>(lse_.Reserve(shape_.lse_elements() * sizeof(float), max_rows_ * lse_row));
  return args_;
}

void ForwardPacker::Scatter(const std::vector<const ForwardArgs*>& calls) const {
  const size_t q_row = size_t(shape_.heads_q) * shape_.head_dim * ElementSize(args_.dtype);
  std::vector<ParallelCopy::Range> copies;
  ScatterRows(calls, q_offsets_, true, q_row, args_.out, [](const ForwardArgs& a) { return a.out; }, copies);
  ParallelCopy::Shared().Copy(copies);
  for (size_t c = 0; c < calls.size(); ++c) {
    CopyLse(*calls[c]->shape, q_offsets_[c], shape_.total_q, args_.lse, calls[c]->lse, /*to_packed=*/false);
  }
}

const BackwardArgs& BackwardPacker::Pack(const std::vector<const BackwardArgs*>& calls) {
  PackShape(calls, shape_, q_offsets_, k_offsets_);
  const BackwardArgs& first = *calls.front();
  const size_t esize = ElementSize(first.dtype);
  const size_t q_row = size_t(shape_.heads_q) * shape_.head_dim * esize;
  const size_t kv_row = size_t(shape_.heads_kv) * shape_.head_dim * esize;
  args_ = BackwardArgs{};
  args_.shape = &shape_;
  args_.options = first.options;
  args_.dtype = first.dtype;
  void* q = q_.Reserve(shape_.total_q * q_row, max_rows_ * q_row);
  void* k = k_.Reserve(shape_.total_k * kv_row, max_rows_ * kv_row);
  void* v = v_.Reserve(shape_.total_k * kv_row, max_rows_ * kv_row);
  void* out = out_.Reserve(shape_.total_q * q_row, max_rows_ * q_row);
  void* grad_out = grad_out_.Reserve(shape_.total_q * q_row, max_rows_ * q_row);
  const size_t lse_row = shape_.heads_q * sizeof(float);
  auto* lse = static_cast<float*>(lse_.Reserve(shape_.lse_elements() * sizeof(float), max_rows_ * lse_row));
  std::vector<ParallelCopy::Range> copies;
  GatherRows(calls, q_offsets_, true, q_row, [](const BackwardArgs& a) { return a.q; }, q, copies);
  GatherRows(calls, k_offsets_, false, kv_row, [](const BackwardArgs& a) { return a.k; }, k, copies);
  GatherRows(calls, k_offsets_, false, kv_row, [](const BackwardArgs& a) { return a.v; }, v, copies);
  GatherRows(calls, q_offsets_, true, q_row, [](const BackwardArgs& a) { return a.out; }, out, copies);
  GatherRows(calls, q_offsets_, true, q_row, [](const BackwardArgs& a) { return a.grad_out; }, grad_out, copies);
  ParallelCopy::Shared().Copy(copies);
  for (size_t c = 0; c < calls.size(); ++c) {
    CopyLse(*calls[c]->shape, q_offsets_[c], shape_.total_q, calls[c]->lse, lse, /*to_packed=*/true);
  }
  args_.q = q;
  args_.k = k;
  args_.v = v;
  args_.out = out;
  args_.lse = lse;
  args_.grad_out = grad_out;
  args_.grad_q = grad_q_.Reserve(shape_.total_q * q_row, max_rows_ * q_row);
  args_.grad_k = grad_k_.Reserve(shape_.total_k * kv_row, max_rows_ * kv_row);
  args_.grad_v = grad_v_.Reserve(shape_.total_k * kv_row, max_rows_ * kv_row);
  return args_;
}

void BackwardPacker::Scatter(const std::vector<const BackwardArgs*>& calls) const {
  const size_t esize = ElementSize(args_.dtype);
  const size_t q_row = size_t(shape_.heads_q) * shape_.head_dim * esize;
  const size_t kv_row = size_t(shape_.heads_kv) * shape_.head_dim * esize;
  std::vector<ParallelCopy::Range> copies;
  ScatterRows(calls, q_offsets_, true, q_row, args_.grad_q, [](const BackwardArgs& a) { return a.grad_q; }, copies);
  ScatterRows(calls, k_offsets_, false, kv_row, args_.grad_k, [](const BackwardArgs& a) { return a.grad_k; }, copies);
  ScatterRows(calls, k_offsets_, false, kv_row, args_.grad_v, [](const BackwardArgs& a) { return a.grad_v; }, copies);
  ParallelCopy::Shared().Copy(copies);
}

}  // namespace attnd::engine
