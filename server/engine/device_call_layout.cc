#include "server/engine/device_call_layout.h"

#include <algorithm>
#include <initializer_list>

namespace attnd::engine {

namespace {

struct RowBytes {
  size_t q, kv, lse;  // one row of q (also out, grad_out, grad_q); of k (v, grad_k, grad_v); of lse
};
RowBytes RowBytesOf(const AttentionShape& s, DType dtype) {
  const size_t es = ElementSize(dtype);
  return {size_t(s.heads_q) * s.head_dim * es, size_t(s.heads_kv) * s.head_dim * es,
          size_t(s.heads_q) * sizeof(float)};
}

size_t LayoutBytes(std::initializer_list<size_t> pieces) {
  DeviceCallLayout l;
  for (size_t bytes : pieces) l.Add(bytes);
  return l.total();
}

}  // namespace

size_t ForwardCallBytes(const AttentionShape& s, DType dtype, int64_t rows, size_t cu_bytes, size_t workspace) {
  const RowBytes r = RowBytesOf(s, dtype);
  const size_t n = static_cast<size_t>(rows);
  return LayoutBytes({r.q * n, r.kv * n, r.kv * n, r.q * n, r.lse * n, cu_bytes, cu_bytes, workspace});
}

size_t BackwardCallBytes(const AttentionShape& s, DType dtype, int64_t rows, size_t cu_bytes, size_t workspace) {
  const RowBytes r = RowBytesOf(s, dtype);
  const size_t n = static_cast<size_t>(rows);
  return LayoutBytes({r.q * n, r.kv * n, r.kv * n, r.q * n, r.q * n, r.lse * n, r.q * n, r.kv * n, r.kv * n, cu_bytes,
                      cu_bytes, workspace});
}

size_t DeviceRequestBytes(size_t exact, size_t reserved, int64_t cap_bytes, int lanes) {
  if (reserved <= exact || cap_bytes <= 0) return exact;
  const auto budget = static_cast<uint64_t>(cap_bytes) / 4;
  const uint64_t all_lanes = static_cast<uint64_t>(reserved) * static_cast<uint64_t>(std::max(lanes, 1));
  return all_lanes <= budget ? reserved : exact;
}

}  // namespace attnd::engine
