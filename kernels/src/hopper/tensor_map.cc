#include "hopper/tensor_map.h"

#include <cudaTypedefs.h>

namespace attnd::kernels::detail::hopper {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 EncodeTiledFunction() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // leave no sticky error behind
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

cudaError_t EncodeRowBoxMap(const PackedTensor& t, int box_rows, CUtensorMap* map) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = EncodeTiledFunction();
  if (encode == nullptr) return cudaErrorNotSupported;
  if (t.head_dim % 64 != 0 || box_rows <= 0 || box_rows > 256) return cudaErrorInvalidValue;
  constexpr int64_t kElem = 2;
  // An empty tensor still needs a non-empty extent; no box of it is ever loaded.
  const cuuint64_t dims[3] = {cuuint64_t(t.head_dim), cuuint64_t(t.heads), cuuint64_t(t.rows > 0 ? t.rows : 1)};
  const cuuint64_t strides[2] = {cuuint64_t(t.head_stride * kElem), cuuint64_t(t.row_stride * kElem)};
  const cuuint32_t box[3] = {64, 1, cuuint32_t(box_rows)};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult r =
      encode(map, t.bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
             const_cast<void*>(t.base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace attnd::kernels::detail::hopper
