// The shape of one attention call as every backend sees it, independent of the wire format.
//
// Internally every request is in the packed layout: q [total_q, heads_q, head_dim] and k/v
// [total_k, heads_kv, head_dim], sequence b spanning rows cu_seqlens_q[b] .. cu_seqlens_q[b+1].
// A dense request [batch, seqlen, heads, dim] is the same bytes with cu_seqlens = {0, S, 2S, ...},
// so dense and varlen share one code path. Only the logsumexp layout differs on the wire
// (dense [batch, heads_q, seqlen_q], packed [heads_q, total_q]); LseIndex hides that.
// Pure C++: no CUDA, no gRPC, no Abseil.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace attnd {

enum class DType { kBF16, kFP16, kFP32 };

inline size_t ElementSize(DType t) { return t == DType::kFP32 ? 4 : 2; }

inline std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kBF16: return "bf16";
    case DType::kFP16: return "fp16";
    case DType::kFP32: return "fp32";
  }
  return "?";
}

struct AttentionShape {
  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;
  int head_dim = 0;
  int max_seqlen_q = 0;  // longest sequence in the batch
  int max_seqlen_k = 0;
  int64_t total_q = 0;   // rows of q (sum of sequence lengths)
  int64_t total_k = 0;
  std::vector<int32_t> cu_seqlens_q;  // batch + 1 offsets, always filled (dense too)
  std::vector<int32_t> cu_seqlens_k;
  bool packed = false;   // the request used the packed layout (decides the lse layout)

  int seqlen_q(int b) const { return cu_seqlens_q[b + 1] - cu_seqlens_q[b]; }
  int seqlen_k(int b) const { return cu_seqlens_k[b + 1] - cu_seqlens_k[b]; }
  int64_t q_elements() const { return total_q * heads_q * head_dim; }
  int64_t kv_elements() const { return total_k * heads_kv * head_dim; }
  int64_t lse_elements() const { return total_q * heads_q; }

  // Element index of the logsumexp of query i (0-based within sequence b) in head h.
  int64_t LseIndex(int b, int h, int64_t i) const {
    if (packed) return int64_t{h} * total_q + cu_seqlens_q[b] + i;
    return (int64_t{b} * heads_q + h) * max_seqlen_q + i;
  }
};

// Builds the shape of a dense request (every sequence the same length).
inline AttentionShape DenseShape(int batch, int seqlen_q, int seqlen_k, int heads_q, int heads_kv,
                                 int head_dim) {
  AttentionShape s;
  s.batch = batch;
  s.heads_q = heads_q;
  s.heads_kv = heads_kv;
  s.head_dim = head_dim;
  s.max_seqlen_q = seqlen_q;
  s.max_seqlen_k = seqlen_k;
  s.total_q = int64_t{batch} * seqlen_q;
  s.total_k = int64_t{batch} * seqlen_k;
  for (int b = 0; b <= batch; ++b) {
    s.cu_seqlens_q.push_back(b * seqlen_q);
    s.cu_seqlens_k.push_back(b * seqlen_k);
  }
  return s;
}

// Builds the shape of a packed variable-length request from its per-sequence lengths.
inline AttentionShape PackedShape(const std::vector<int>& seqlens_q, const std::vector<int>& seqlens_k,
                                  int heads_q, int heads_kv, int head_dim) {
  AttentionShape s;
  s.batch = static_cast<int>(seqlens_q.size());
  s.heads_q = heads_q;
  s.heads_kv = heads_kv;
  s.head_dim = head_dim;
  s.packed = true;
  s.cu_seqlens_q.push_back(0);
  s.cu_seqlens_k.push_back(0);
  for (size_t b = 0; b < seqlens_q.size(); ++b) {
    s.cu_seqlens_q.push_back(s.cu_seqlens_q.back() + seqlens_q[b]);
    s.cu_seqlens_k.push_back(s.cu_seqlens_k.back() + seqlens_k[b]);
    if (seqlens_q[b] > s.max_seqlen_q) s.max_seqlen_q = seqlens_q[b];
    if (seqlens_k[b] > s.max_seqlen_k) s.max_seqlen_k = seqlens_k[b];
  }
  s.total_q = s.cu_seqlens_q.back();
  s.total_k = s.cu_seqlens_k.back();
  return s;
}

struct AttentionOptions {
  bool causal = false;        // bottom-right aligned: query i sees key j iff j <= i + seqlen_k - seqlen_q
  float softmax_scale = 0.f;  // already resolved (never 0 here)
  bool deterministic = false; // backward: no floating-point atomics, identical bits run to run
};

// When a call stops being worth computing. Set by the front end; a queue in front of the backend
// (server/engine's batcher) drops a call whose deadline passed or whose flag was raised while it
// waited, without computing it. The defaults (no deadline, no flag) mean "always compute"; a
// backend that computes at once may ignore both.
struct CallControl {
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
  const std::atomic<bool>* cancelled = nullptr;  // read only, never written; must outlive the call
};

// Where a call's tensor buffers live. Host (the default): plain or page-locked host memory, that
// a GPU backend copies to its device and back. Device: every tensor pointer of the call (inputs
// and outputs; cu_seqlens stay in the AttentionShape, on the host) is memory of CUDA device
// `device` already, e.g. a tensor imported through CUDA IPC or kept resident between calls; a GPU
// backend of that device then copies nothing and a backend of any other device (or the CPU
// backend) refuses the call with FAILED_PRECONDITION.
enum class MemorySpace { kHost, kDevice };
struct TensorPlacement {
  MemorySpace space = MemorySpace::kHost;
  int device = -1;  // the CUDA device ordinal when space == kDevice
  // kHost only: every host buffer of the call is page-locked (registered with the GPU driver, e.g.
  // a shared-memory region under cudaHostRegister, or lent by the backend's pinned pool), so a GPU
  // backend may DMA from and to all of them directly. The front end knows which memory it
  // registered; a driver query per buffer per call is what this flag saves. False: the backend
  // decides per buffer (its own pool's memory it recognizes; other memory is staged). A wrong
  // mark costs speed, never correctness: cudaMemcpyAsync takes pageable memory too, synchronously.
  bool host_page_locked = false;
};

// Where one call's time went below the front end, filled by the engine when the caller passes
// one (ForwardArgs::timings). Seconds; a stage the call never reached (or that does not exist on
// its backend, e.g. H2D on the CPU) stays negative. Calls packed into one launch share that
// launch's h2d/kernel/d2h and each keeps its own queue time.
struct CallTimings {
  double queue_s = -1;        // waiting in the batch queue and for a free CUDA stream
  double h2d_s = -1;          // inputs to the device (pinned staging included)
  double kernel_s = -1;       // the attention kernels (CUDA events)
  double d2h_s = -1;          // outputs back into the caller's buffers
  int batch_requests = 0;     // requests in the launch that computed this call (1: alone)
};

// Buffers of one forward call (host memory unless `placement` says otherwise). q/k/v/out are in
// `dtype`; lse is always FP32.
struct ForwardArgs {
  const AttentionShape* shape = nullptr;
  AttentionOptions options;
  DType dtype = DType::kBF16;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  CallControl control;
  TensorPlacement placement;        // host unless a transport says the buffers are device memory
  CallTimings* timings = nullptr;   // optional: filled by the engine (see CallTimings)
  // Rows of q (and, separately, of k) that calls like this one may reach: the batcher's
  // max_batch_tokens for the calls it runs. A backend that takes memory per call may size it for
  // that many rows, so that calls of every size up to it reuse the same blocks instead of asking
  // the driver for larger ones as batch sizes vary. 0: size for this call alone.
  int64_t reserve_rows = 0;
};

// Buffers of one backward call (host memory unless `placement` says otherwise). Gradients come
// back in `dtype`, shaped like their inputs.
struct BackwardArgs {
  const AttentionShape* shape = nullptr;
  AttentionOptions options;
  DType dtype = DType::kBF16;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const float* lse = nullptr;
  const void* grad_out = nullptr;
  void* grad_q = nullptr;
  void* grad_k = nullptr;
  void* grad_v = nullptr;
  CallControl control;
  TensorPlacement placement;
  CallTimings* timings = nullptr;
  int64_t reserve_rows = 0;  // as ForwardArgs::reserve_rows
};

}  // namespace attnd
