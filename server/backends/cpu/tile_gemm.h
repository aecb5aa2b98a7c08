// The one matrix product every attention step is made of: C (+)= A * B on small float tiles.
//
//   C[i][n] (+)= sum_k A(i, k) * B[k][n]     i < M, n < N, k < K
//
// A is addressed through two strides, A(i, k) = A[i * a_row + k * a_col], so P^T and dS^T are
// read in place without a transpose. B and C are row-major and N is a multiple of the block width
// W (tiles are zero-padded to it), so the inner loop has no tail.
//
// The micro-kernel keeps an R x W block of C in registers and streams K: each step loads one
// W-wide row of B and broadcasts R scalars of A against it. The block is written with the
// compiler's generic vectors of V floats (GCC/Clang vector extensions), which it lowers to the
// instruction set of the function being compiled (SSE, AVX2, AVX-512), and a * b + c contracts to
// FMA where the target has it. Plain loops left the block in memory: the auto-vectorizer does not
// keep a 2-D accumulator in registers. Every C element is summed in the same order (k = 0, 1, ...)
// wherever its block sits, so a tile's result never depends on how the work was split.
#pragma once

#include <cstddef>

#include "server/backends/cpu/cpu_isa.h"

namespace attnd::cpu {

// V floats; unaligned and may alias float, so it can be loaded from any tile address.
template <int V>
struct FloatVector;
template <>
struct FloatVector<4> {
  typedef float type __attribute__((vector_size(16), aligned(4), may_alias));
};
template <>
struct FloatVector<8> {
  typedef float type __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct FloatVector<16> {
  typedef float type __attribute__((vector_size(64), aligned(4), may_alias));
};

template <int R, int V, int NV, bool kAccumulate>
ATTND_ALWAYS_INLINE void GemmMicroKernel(int K, const float* __restrict A, int a_row, int a_col,
                                         const float* __restrict B, int ldb, float* __restrict C,
                                         int ldc) {
  using Vec = typename FloatVector<V>::type;
  Vec acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) {
      acc[r][n] = kAccumulate ? *reinterpret_cast<const Vec*>(C + std::ptrdiff_t{r} * ldc + n * V) : Vec{};
    }
  }
  const float* __restrict a = A;
  const float* __restrict b = B;
  for (int k = 0; k < K; ++k, a += a_col, b += ldb) {
    Vec bv[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) bv[n] = *reinterpret_cast<const Vec*>(b + n * V);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float ar = a[std::ptrdiff_t{r} * a_row];
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) acc[r][n] += ar * bv[n];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) *reinterpret_cast<Vec*>(C + std::ptrdiff_t{r} * ldc + n * V) = acc[r][n];
  }
}

// C (+)= A * B with R x W register blocks of two vectors per row (W / 2 floats each); rows left
// over take 1-row blocks. N must be a multiple of W.
template <int R, int W, bool kAccumulate>
ATTND_ALWAYS_INLINE void Gemm(int M, int N, int K, const float* A, int a_row, int a_col,
                              const float* B, int ldb, float* C, int ldc) {
  constexpr int kNV = 2, kV = W / kNV;
  int i = 0;
  for (; i + R <= M; i += R) {
    for (int n = 0; n < N; n += W) {
      GemmMicroKernel<R, kV, kNV, kAccumulate>(K, A + std::ptrdiff_t{i} * a_row, a_row, a_col, B + n,
                                               ldb, C + std::ptrdiff_t{i} * ldc + n, ldc);
    }
  }
  for (; i < M; ++i) {
    for (int n = 0; n < N; n += W) {
      GemmMicroKernel<1, kV, kNV, kAccumulate>(K, A + std::ptrdiff_t{i} * a_row, a_row, a_col, B + n,
                                               ldb, C + std::ptrdiff_t{i} * ldc + n, ldc);
    }
  }
}

}  // namespace attnd::cpu
