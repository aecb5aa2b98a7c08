#include "server/backends/cuda/cuda_call_checks.h"

#include <cmath>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

constexpr int kHeadDims[] = {32, 64, 96, 128, 256};

absl::Status CheckHeadDim(int head_dim) {
  for (int d : kHeadDims)
    if (d == head_dim) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("head_dim ", head_dim, " is not supported by the cuda backend (32, 64, 96, 128, 256)"));
}

absl::Status CheckHeads(const AttentionShape& s) {
  if (s.heads_q <= 0 || s.heads_kv <= 0 || s.heads_q % s.heads_kv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads_q (", s.heads_q, ") must be a positive multiple of heads_kv (", s.heads_kv, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckShape(const AttentionShape& s) {
  if (s.batch < 0) return absl::InvalidArgumentError(absl::StrCat("batch ", s.batch, " is negative"));
  if (absl::Status st = CheckCudaSupported(s); !st.ok()) return st;
  const size_t offsets = static_cast<size_t>(s.batch) + 1;
  if (s.cu_seqlens_q.size() != offsets || s.cu_seqlens_k.size() != offsets) {
    return absl::InvalidArgumentError(
        absl::StrCat("cu_seqlens_q/cu_seqlens_k must hold batch + 1 = ", offsets, " offsets"));
  }
  for (int which = 0; which < 2; ++which) {
    const std::vector<int32_t>& cu = which == 0 ? s.cu_seqlens_q : s.cu_seqlens_k;
    const char* field = which == 0 ? "cu_seqlens_q" : "cu_seqlens_k";
    const int64_t total = which == 0 ? s.total_q : s.total_k;
    const int max_len = which == 0 ? s.max_seqlen_q : s.max_seqlen_k;
    if (cu[0] != 0 || cu[s.batch] != total) {
      return absl::InvalidArgumentError(absl::StrCat(field, " must run from 0 to ", total));
    }
    for (int b = 0; b < s.batch; ++b) {
      const int64_t len = int64_t{cu[b + 1]} - cu[b];
      if (len < 0 || len > max_len) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, "[", b + 1, "] - ", field, "[", b, "] = ", len, " is outside 0..", max_len));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int> CudaHeadDims() { return {std::begin(kHeadDims), std::end(kHeadDims)}; }

absl::Status CheckCudaSupported(const AttentionShape& shape) {
  if (absl::Status st = CheckHeadDim(shape.head_dim); !st.ok()) return st;
  return CheckHeads(shape);
}

absl::Status CheckCudaCall(const AttentionShape* shape, const AttentionOptions& options) {
  if (shape == nullptr) return absl::InvalidArgumentError("shape is missing");
  if (absl::Status st = CheckShape(*shape); !st.ok()) return st;
  if (!(std::isfinite(options.softmax_scale) && options.softmax_scale != 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("softmax_scale ", options.softmax_scale, " must be finite and resolved (non-zero)"));
  }
  return absl::OkStatus();
}

int64_t LseCount(const AttentionShape& s) {
  return s.packed ? s.lse_elements() : int64_t{s.batch} * s.heads_q * s.max_seqlen_q;
}

}  // namespace attnd
