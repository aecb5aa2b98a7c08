// The checks the CUDA backend makes before it touches the device. Arguments are re-checked here
// (cheaply) because the kernels trust them: a cu_seqlens entry that lies about a length would make
// a kernel read or write outside the buffers.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "server/core/attention_problem.h"

namespace attnd {

// Head dims the kernels have instantiations for.
std::vector<int> CudaHeadDims();

// INVALID_ARGUMENT naming the field when the kernels cannot run this head_dim / head counts.
absl::Status CheckCudaSupported(const AttentionShape& shape);

// What every call checks: the shape (cu_seqlens well formed and matching the totals) and a
// resolved softmax scale.
absl::Status CheckCudaCall(const AttentionShape* shape, const AttentionOptions& options);

// Elements of the logsumexp buffer in the layout AttentionShape::LseIndex describes.
int64_t LseCount(const AttentionShape& s);

}  // namespace attnd
