// FlashAttention-2 forward kernel: one CTA per (batch, head, block of kBlockM query rows).
//
// The math (per query row i; s_j = q_i . k_j, c = softmax_scale, masked s_j = -inf):
//   out_i = sum_j softmax(c s)_j v_j,   lse_i = log sum_j exp(c s_j)
// computed in one pass over key tiles with the online softmax: keeping the running maximum m and
// the running sum l of exp(c (s_j - m)), a new tile with scores S updates
//   m' = max(m, max_j S_j)
//   l' = l * exp(c (m - m')) + sum_j exp(c (S_j - m'))
//   O' = O * exp(c (m - m')) + exp(c (S - m')) V
// and at the end out = O / l, lse = c m + log l. (m need only be a common reference point that
// keeps the exponentials in range: it is moved lazily, see the softmax step.) Exponentials are
// exp2 with c * log2(e) folded into one FFMA per score (fast_math.cuh). O, S, m and l stay in
// registers (FP32); P = exp(..) is rounded to the input type and fed to the second mma straight
// from the S accumulators.
//
// Tile loop (key tiles walked from the last to the first, so the tiles that need masking, the
// causal diagonal and the ragged tail, come first and the rest skip the mask; one loop body with a
// uniform branch, not two copies, which keeps register allocation within 255 without big spills):
//   prologue: cp.async Q, K[n_last], V[n_last]            (3 commit groups)
//   for n = n_last .. 0:
//     wait K[n]; barrier                                 (also: every warp is done with tile n+1)
//     cp.async K[n-1], V[n-1] into the other ring slot    (in flight for the whole iteration)
//     S = Q K[n]^T                  ldmatrix (Q, K) + mma.sync m16n8k16
//     mask (first tiles only), online softmax update of m, l (O rescaled only when m moves)
//     wait V[n]; barrier
//     O += P V[n]                   ldmatrix.trans (V) + mma.sync
//   epilogue: O / l -> shared memory (each warp reuses its own Q rows) -> 16-byte global stores;
//             lse from the quad that owns each row.
//
// Rows past seqlen_q and keys past seqlen_k are zero-filled in shared memory (cp.async zfill), the
// keys masked to -inf, the rows never stored. A row that sees no key keeps m = -inf, l = 0 and is
// written as out = 0, lse = +inf.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/cp_async.cuh"
#include "common/fast_math.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"
#include "common/numeric.cuh"
#include "common/smem_swizzle.cuh"
#include "common/warp_reduce.cuh"
#include "flash_fwd_args.cuh"
#include "fp32_scale.cuh"
#include "flash_fwd_tile.cuh"

namespace attnd::kernels::detail {

// Issues cp.async for kRows rows of a [rows, head_dim] tile at `gmem` (row stride in elements) into
// the swizzled tile at shared byte address `smem_tile`; rows >= rows_valid are zero-filled.
template <typename Tile, int kRows, typename T>
__device__ __forceinline__ void load_tile_async(uint32_t smem_tile, const T* gmem, int64_t row_stride,
                                                int rows_valid, int tid) {
  using L = typename Tile::Smem;
  constexpr int kChunks = L::kChunks;
  static_assert(kRows * kChunks % Tile::kThreads == 0, "tile must split evenly over the threads");
  constexpr int kIters = kRows * kChunks / Tile::kThreads;
  if constexpr (Tile::kThreads % kChunks == 0) {
    // Each thread copies one chunk column c of rows r0, r0 + kRowsPerPass, ...
    constexpr int kRowsPerPass = Tile::kThreads / kChunks;
    const int r0 = tid / kChunks, c = tid % kChunks;
    const T* src = gmem + r0 * row_stride + c * 8;
    const int64_t pass_stride = kRowsPerPass * row_stride;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int r = r0 + i * kRowsPerPass;
      const bool valid = r < rows_valid;
      // With kRowsPerPass % 8 == 0 every pass has the same swizzle: a constant offset per pass.
      const uint32_t dst = kRowsPerPass % 8 == 0 ? L::offset(r0, c) + i * kRowsPerPass * L::kRowBytes : L::offset(r, c);
      cp_async_16(smem_tile + dst, valid ? src + i * pass_stride : gmem, valid);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int idx = tid + i * Tile::kThreads;
      const int r = idx / kChunks, c = idx % kChunks;
      const bool valid = r < rows_valid;
      cp_async_16(smem_tile + L::offset(r, c), valid ? gmem + r * row_stride + c * 8 : gmem, valid);
    }
  }
}

template <typename T, typename OutT, typename Tile, bool kCausal>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocksPerSm)
    flash_fwd_kernel(const __grid_constant__ FwdKernelArgs args) {
  using L = typename Tile::Smem;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kHeadDim = Tile::kHeadDim;
  constexpr int kMT = Tile::kMTiles;       // 16-row tiles per warp
  constexpr int kNT = kBlockN / 8;         // 8-column tiles of S
  constexpr int kDT = kHeadDim / 8;        // 8-column tiles of O
  constexpr int kRowBytes = L::kRowBytes;
  constexpr float kInf = INFINITY;

  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t smem_q = smem_addr(smem);
  const uint32_t smem_kv = smem_q + Tile::kQBytes;  // slot s: K at +2s*tile, V at +(2s+1)*tile

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // 1-D grid over (query block, batch * head). Non-causal: the query blocks of one head are
  // neighbours, so the CTAs running together share K/V in L2. Causal: the blocks nearest the end
  // of the sequences (the most key tiles) launch first, so the short ones fill the tail.
  const int m_blocks = (args.max_seqlen_q + kBlockM - 1) / kBlockM;
  int m_block, bh;
  if constexpr (kCausal) {
    const int num_bh = gridDim.x / m_blocks;
    m_block = m_blocks - 1 - blockIdx.x / num_bh;
    bh = blockIdx.x - (blockIdx.x / num_bh) * num_bh;
  } else {
    bh = blockIdx.x / m_blocks;
    m_block = blockIdx.x - bh * m_blocks;
  }
  const int b = bh / args.heads_q;
  const int h = bh - b * args.heads_q;

  const int q_start = args.cu_seqlens_q[b];
  const int seqlen_q = args.cu_seqlens_q[b + 1] - q_start;
  if (m_block * kBlockM >= seqlen_q) return;
  const int k_start = args.cu_seqlens_k[b];
  const int seqlen_k = args.cu_seqlens_k[b + 1] - k_start;
  const int diag = seqlen_k - seqlen_q;  // causal: row i sees columns j <= i + diag
  const int rows_valid = seqlen_q - m_block * kBlockM;

  // Key tiles this block needs, and the first one (walking down) that needs no mask.
  int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
  int n_mask = seqlen_k / kBlockN;  // tiles n >= n_mask hold columns >= seqlen_k
  if constexpr (kCausal) {
    const int last_col_end = (m_block + 1) * kBlockM + diag;  // one past the last row's last column
    n_blocks = min(n_blocks, last_col_end <= 0 ? 0 : (last_col_end + kBlockN - 1) / kBlockN);
    const int first_col_end = m_block * kBlockM + diag + 1;   // the first row's
    n_mask = min(n_mask, first_col_end <= 0 ? 0 : first_col_end / kBlockN);
  }

  const int64_t q_row0 = int64_t{q_start} + int64_t{m_block} * kBlockM;
  OutT* out = static_cast<OutT*>(args.out) + q_row0 * args.out_row_stride + h * args.out_head_stride;
  auto lse_index = [&](int row) -> int64_t {  // row within this block
    const int i = m_block * kBlockM + row;
    return args.lse_packed ? int64_t{h} * args.total_q + q_start + i
                           : (int64_t{b} * args.heads_q + h) * args.max_seqlen_q + i;
  };

  if (n_blocks <= 0) {  // no row of this block sees a key: out = 0, lse = +inf
    constexpr int kVec = 16 / sizeof(OutT);
    for (int idx = tid; idx < kBlockM * (kHeadDim / kVec); idx += Tile::kThreads) {
      const int r = idx / (kHeadDim / kVec), c = idx % (kHeadDim / kVec);
      if (r < rows_valid) *reinterpret_cast<uint4*>(out + r * args.out_row_stride + c * kVec) = make_uint4(0, 0, 0, 0);
    }
    for (int r = tid; r < kBlockM && r < rows_valid; r += Tile::kThreads) args.lse[lse_index(r)] = kInf;
    return;
  }

  const int kv_head = h / args.heads_per_kv;
  const T* q = static_cast<const T*>(args.q) + q_row0 * args.q_row_stride + h * args.q_head_stride;
  const T* k = static_cast<const T*>(args.k) + int64_t{k_start} * args.k_row_stride + kv_head * args.k_head_stride;
  const T* v = static_cast<const T*>(args.v) + int64_t{k_start} * args.v_row_stride + kv_head * args.v_head_stride;
  const int64_t k_tile_stride = kBlockN * args.k_row_stride;
  const int64_t v_tile_stride = kBlockN * args.v_row_stride;

  auto k_slot = [&](int n) { return smem_kv + (n & 1) * 2 * Tile::kKVTileBytes; };
  auto v_slot = [&](int n) { return smem_kv + (n & 1) * 2 * Tile::kKVTileBytes + Tile::kKVTileBytes; };
  auto load_kv = [&](int n) {
    const int rows = seqlen_k - n * kBlockN;
    load_tile_async<Tile, kBlockN>(k_slot(n), k + n * k_tile_stride, args.k_row_stride, rows, tid);
    cp_async_commit();
    load_tile_async<Tile, kBlockN>(v_slot(n), v + n * v_tile_stride, args.v_row_stride, rows, tid);
    cp_async_commit();
  };

  // Prologue: Q, K[last], V[last] in flight as three groups.
  load_tile_async<Tile, kBlockM>(smem_q, q, args.q_row_stride, rows_valid, tid);
  cp_async_commit();
  load_kv(n_blocks - 1);

  float scale_log2 = args.scale_log2;
  float out_scale = 1.f;
  if (args.fp32_amax != nullptr) {  // undo the FP16 copies' power-of-two scales (exact)
    scale_log2 = ldexpf(scale_log2, fp16_scale_shift(args.fp32_amax[0]) + fp16_scale_shift(args.fp32_amax[1]));
    out_scale = ldexpf(1.f, fp16_scale_shift(args.fp32_amax[2]));
  }
  if (args.negate_q) {
    // Negative softmax scale: flip q's sign (exact) so that the running max stays a max. Each
    // thread flips the chunks it copied itself, so only its own cp.async group must have landed.
    cp_async_wait<2>();
    constexpr int kChunks = L::kChunks;
    for (int idx = tid; idx < kBlockM * kChunks; idx += Tile::kThreads) {
      uint4* p = reinterpret_cast<uint4*>(smem + L::offset(idx / kChunks, idx % kChunks));
      uint4 x = *p;
      *p = make_uint4(negate2(x.x), negate2(x.y), negate2(x.z), negate2(x.w));
    }
  }

  // Per-lane ldmatrix addresses (see mma.cuh / ldmatrix.cuh for the fragment layouts).
  //   Q, A operand: row (lane % 16), chunk + lane / 16.
  //   K, B operand: key (lane % 8) + 8 * (lane / 16), chunk + (lane / 8) % 2.
  //   V, B operand via .trans: key (lane % 16), chunk + lane / 16.
  const uint32_t q_lane = smem_q + L::row_base(warp * Tile::kWarpRows + (lane & 15), lane >> 4);
  const uint32_t k_lane = L::row_base((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
  const uint32_t v_lane = L::row_base(lane & 15, lane >> 4);
  const int g = lane >> 2, t = lane & 3;  // mma C layout: rows g and g + 8, columns 2t, 2t + 1

  float acc_o[kMT][kDT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    row_max[mt][0] = row_max[mt][1] = -kInf;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  auto step = [&](const int n) {
    cp_async_wait<1>();  // Q and K[n] landed (V[n] may still fly)
    __syncthreads();     // ... for every thread; and the other ring slot (tile n + 1) is free
    if (n > 0) {
      load_kv(n - 1);
    } else {
      cp_async_commit();  // empty groups keep the wait counts below uniform
      cp_async_commit();
    }

    // S = Q K^T
    float acc_s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = 0.f;
    const uint32_t k_tile = k_slot(n) + k_lane;
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t qf[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) ldmatrix_x4(qf[mt], L::at(q_lane, 2 * kk) + mt * 16 * kRowBytes);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t kf[4];
        ldmatrix_x4(kf, L::at(k_tile, 2 * kk) + np * 16 * kRowBytes);
        const uint32_t b0[2] = {kf[0], kf[1]}, b1[2] = {kf[2], kf[3]};
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_m16n8k16<T>(acc_s[mt][2 * np], qf[mt], b0);
          mma_m16n8k16<T>(acc_s[mt][2 * np + 1], qf[mt], b1);
        }
      }
    }

    if (n >= n_mask) {
      // Column j of this tile is masked for row i when j >= seqlen_k or (causal) j > i + diag.
      const int col0 = n * kBlockN + 2 * t;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          int limit = seqlen_k;
          if constexpr (kCausal) {
            const int row = m_block * kBlockM + warp * Tile::kWarpRows + mt * 16 + g + 8 * rh;
            limit = min(limit, row + diag + 1);
          }
          const int rel = limit - col0;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              if (nt * 8 + e >= rel) acc_s[mt][nt][2 * rh + e] = -kInf;
        }
    }

    // Online softmax. The reference point m of the exponentials moves only when some row's tile
    // maximum exceeds it by more than 2^kStaleLog2 (in exp2 units), decided for the whole warp:
    // then every row moves to its true maximum and O and l are rescaled. Otherwise m stays, P is
    // at most 2^8 (exact enough in FP32, BF16 and FP16), and the 4*kMT*d/8 FMULs of the rescale
    // and their dependency before the P*V mma are skipped; out = O / l and lse = m + log l hold
    // for any common reference m. Reductions are trees of independent partial results.
    constexpr float kStaleLog2 = 8.f;
    float tile_max[kMT][2];
    bool move = false;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        float part[4] = {-kInf, -kInf, -kInf, -kInf};
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
          part[nt % 4] = fmaxf(part[nt % 4], fmaxf(acc_s[mt][nt][2 * rh], acc_s[mt][nt][2 * rh + 1]));
        tile_max[mt][rh] = quad_max(fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3])));
        // -inf - -inf is NaN (false): a row that has seen no key yet keeps m = -inf.
        move |= (tile_max[mt][rh] - row_max[mt][rh]) * scale_log2 > kStaleLog2;
      }
    if (__any_sync(0xffffffffu, move)) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          const float mx = fmaxf(row_max[mt][rh], tile_max[mt][rh]);
          // 0 when m was -inf (nothing accumulated yet); 1 when the row still sees no key at all.
          const float correction = mx == -kInf ? 1.f : fast_exp2((row_max[mt][rh] - mx) * scale_log2);
          row_max[mt][rh] = mx;
          row_sum[mt][rh] *= correction;
#pragma unroll
          for (int dt = 0; dt < kDT; ++dt) {
            acc_o[mt][dt][2 * rh] *= correction;
            acc_o[mt][dt][2 * rh + 1] *= correction;
          }
        }
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const float max_scaled = row_max[mt][rh] == -kInf ? 0.f : row_max[mt][rh] * scale_log2;
        float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = fast_exp2(fmaf(acc_s[mt][nt][2 * rh + e], scale_log2, -max_scaled));
            acc_s[mt][nt][2 * rh + e] = p;
            part[nt % 4] += p;
          }
        row_sum[mt][rh] += (part[0] + part[1]) + (part[2] + part[3]);  // per-thread; quad-summed at the end
      }

    cp_async_wait<2>();  // V[n] landed (K[n-1], V[n-1] may still fly)
    __syncthreads();

    // O += P V: the S accumulators of n-tiles 2kk, 2kk+1 are the A fragment of k-slice kk.
    const uint32_t v_tile = v_slot(n) + v_lane;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pf[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        pf[mt][0] = pack2<T>(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
        pf[mt][1] = pack2<T>(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
        pf[mt][2] = pack2<T>(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
        pf[mt][3] = pack2<T>(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, L::at(v_tile + kk * 16 * kRowBytes, 2 * dp));
        const uint32_t b0[2] = {vf[0], vf[1]}, b1[2] = {vf[2], vf[3]};
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_m16n8k16<T>(acc_o[mt][2 * dp], pf[mt], b0);
          mma_m16n8k16<T>(acc_o[mt][2 * dp + 1], pf[mt], b1);
        }
      }
    }
  };

  for (int n = n_blocks - 1; n >= 0; --n) step(n);

  // Epilogue: normalise, write lse (lane t == 0 of each quad owns its rows) and O.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      const float sum = quad_sum(row_sum[mt][rh]);
      const bool any = sum > 0.f;
      const float inv = any ? out_scale / sum : 0.f;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        acc_o[mt][dt][2 * rh] *= inv;
        acc_o[mt][dt][2 * rh + 1] *= inv;
      }
      const int row = warp * Tile::kWarpRows + mt * 16 + g + 8 * rh;
      if (t == 0 && row < rows_valid)
        args.lse[lse_index(row)] = any ? (row_max[mt][rh] * scale_log2 + fast_log2(sum)) * kLn2 : kInf;
    }

  if constexpr (std::is_same_v<OutT, float>) {
    // FP32 output (the FP32 path): 8-byte stores straight from the accumulators.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const int row = warp * Tile::kWarpRows + mt * 16 + g + 8 * rh;
        if (row >= rows_valid) continue;
        float* dst = out + row * args.out_row_stride + 2 * t;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt)
          *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(acc_o[mt][dt][2 * rh], acc_o[mt][dt][2 * rh + 1]);
      }
  } else {
    // 16-bit output: stage the warp's rows in its own (no longer needed) Q rows of shared memory,
    // then write whole 16-byte chunks, consecutive lanes covering consecutive bytes of a row.
    __syncwarp();
    const uint32_t warp_rows = warp * Tile::kWarpRows * kRowBytes;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh)
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          const int row = mt * 16 + g + 8 * rh;
          *reinterpret_cast<uint32_t*>(smem + warp_rows + L::offset(row, dt) + 4 * t) =
              pack2<T>(acc_o[mt][dt][2 * rh], acc_o[mt][dt][2 * rh + 1]);
        }
    __syncwarp();
    constexpr int kChunks = L::kChunks;
#pragma unroll
    for (int i = 0; i < Tile::kWarpRows * kChunks / 32; ++i) {
      const int idx = i * 32 + lane;
      const int row = idx / kChunks, c = idx % kChunks;
      const int block_row = warp * Tile::kWarpRows + row;
      if (block_row < rows_valid)
        *reinterpret_cast<uint4*>(out + block_row * args.out_row_stride + c * 8) =
            *reinterpret_cast<const uint4*>(smem + warp_rows + L::offset(row, c));
    }
  }
}

}  // namespace attnd::kernels::detail
