// CallBuffers: one caller's shape, options and host tensors (any dtype), with the ForwardArgs /
// BackwardArgs over them: what the engine's tests hand a backend, whether the fake one, the CPU
// backend under the batcher, or the CUDA backend on a GPU.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "server/core/attention_problem.h"
#include "server/core/float16.h"

namespace attnd::testing {

// `x` as one element of `dtype` at `p` (bf16 and fp16 rounded to nearest).
inline void StoreElement(float x, DType dtype, uint8_t* p) {
  if (dtype == DType::kFP32) {
    std::memcpy(p, &x, 4);
  } else {
    const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(x) : FloatToFp16(x);
    std::memcpy(p, &h, 2);
  }
}

struct CallBuffers {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kFP32;
  std::vector<uint8_t> q, k, v, out, grad_out, grad_q, grad_k, grad_v;
  std::vector<float> lse;
  CallControl control;
  CallTimings timings;  // where the engine reports the call's stages (Forward/Backward point here)

  ForwardArgs Forward() {
    ForwardArgs a = Common<ForwardArgs>();
    a.out = out.data();
    a.lse = lse.data();
    return a;
  }
  // With out and lse as inputs (of the forward they came from).
  BackwardArgs Backward() {
    BackwardArgs a = Common<BackwardArgs>();
    a.out = out.data();
    a.lse = lse.data();
    a.grad_out = grad_out.data();
    a.grad_q = grad_q.data();
    a.grad_k = grad_k.data();
    a.grad_v = grad_v.data();
    return a;
  }

 private:
  template <typename Args>
  Args Common() {
    Args a;
    a.shape = &shape;
    a.options = options;
    a.dtype = dtype;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.control = control;
    a.timings = &timings;
    return a;
  }
};

}  // namespace attnd::testing
