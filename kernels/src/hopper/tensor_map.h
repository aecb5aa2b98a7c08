// Host side of the tensor copy engine: TMA descriptors (CUtensorMap) for the packed attention
// tensors, built with the driver's cuTensorMapEncodeTiled. The function is looked up through the
// runtime (cudaGetDriverEntryPointByVersion), so nothing links against libcuda.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace attnd::kernels::detail::hopper {

// A packed tensor [rows, heads, head_dim] of 16-bit elements, strides in elements.
struct PackedTensor {
  const void* base;
  bool bf16;  // else fp16
  int64_t rows;
  int heads;
  int head_dim;
  int64_t row_stride;
  int64_t head_stride;
};

// A map whose box is box_rows rows x 64 elements of one head: coordinates (column, head, row),
// the box landing in shared memory as box_rows rows of 128 bytes in the 128-byte swizzle. Rows
// past the tensor's end arrive as zeros. A head dim of 128 takes two boxes (columns 0 and 64).
// Errors: cudaErrorInvalidValue for shapes TMA cannot describe, cudaErrorNotSupported when the
// driver has no cuTensorMapEncodeTiled.
cudaError_t EncodeRowBoxMap(const PackedTensor& t, int box_rows, CUtensorMap* map);

}  // namespace attnd::kernels::detail::hopper
