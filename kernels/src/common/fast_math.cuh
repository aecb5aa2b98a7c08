// Fast transcendental functions for the softmax: one MUFU instruction each, FTZ.
// ex2.approx has a maximum relative error of 2^-22 on its full range, far below the bf16/fp16
// rounding of P that follows it. exp(x) is never called: callers fold log2(e) into the softmax
// scale, so that exp(scale*s - m) = exp2(s*scale*log2e - m*scale*log2e) is one FFMA + one MUFU.
#pragma once

namespace attnd::kernels::detail {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_rcp(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace attnd::kernels::detail
