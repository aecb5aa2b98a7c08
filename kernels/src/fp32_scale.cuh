// The FP32 path's FP16 copies: each of q, k, v is multiplied by the power of two 2^-s that brings
// its largest magnitude into [2^14, 2^15). The copy cannot overflow FP16 (max 65504), small
// tensors are lifted away from FP16's subnormals, and every element keeps FP16's 11 significant
// bits; being a power of two, the scaling and its undoing (folded into the softmax scale and the
// output) are exact. The conversion kernel and the attention kernel derive s from the same max|x|.
#pragma once

#include <cmath>

namespace attnd::kernels::detail {

// s such that amax * 2^-s lies in [2^14, 2^15) (s = -15 for an all-zero tensor).
__device__ __forceinline__ int fp16_scale_shift(float amax) {
  if (!(amax <= 3.0e38f)) return 0;  // inf/NaN input: nothing sensible to do, let it propagate
  int e;
  frexpf(amax, &e);  // amax = m * 2^e, 0.5 <= m < 1
  return e - 15;
}

}  // namespace attnd::kernels::detail
