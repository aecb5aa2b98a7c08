// CudaBackend: runs attnd_kernels on one GPU. Each call is self-contained (simple allocation per
// request; the engine issue replaces it with pooled memory, pinned staging and stream reuse): its own stream, one
// device allocation for all of its tensors, host -> device copies, the kernel, device -> host
// copies, a stream synchronisation. Calls from many threads run concurrently on their streams.
//
// Arguments are re-checked here (cheaply) because the kernels trust them: a cu_seqlens entry
// that lies about a length would make the kernel read or write outside the buffers.
#include "server/backends/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attnd/kernels/flash_bwd.h"
#include "attnd/kernels/flash_fwd.h"

namespace attnd {
namespace {

constexpr int kHeadDims[] = {32, 64, 96, 128, 256};

// A CUDA error as a status naming what failed. Out of memory is the caller's to retry later.
absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = absl::StrCat("cuda backend: ", what, ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  if (err == cudaErrorInvalidValue) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

#define ATTND_RETURN_IF_CUDA(expr, what)                                \
  do {                                                                  \
    if (absl::Status st_ = CudaStatus((expr), (what)); !st_.ok()) return st_; \
  } while (0)

absl::Status CheckHeadDim(int head_dim) {
  for (int d : kHeadDims)
    if (d == head_dim) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("head_dim ", head_dim, " is not supported by the cuda backend (32, 64, 96, 128, 256)"));
}

absl::Status CheckShape(const AttentionShape& s) {
  if (s.batch < 0) return absl::InvalidArgumentError(absl::StrCat("batch ", s.batch, " is negative"));
  if (s.heads_q <= 0 || s.heads_kv <= 0 || s.heads_q % s.heads_kv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("heads_q (", s.heads_q,
                                                   ") must be a positive multiple of heads_kv (", s.heads_kv, ")"));
  }
  if (absl::Status st = CheckHeadDim(s.head_dim); !st.ok()) return st;
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

kernels::ElementType ToElementType(DType t) {
  switch (t) {
    case DType::kBF16: return kernels::ElementType::kBF16;
    case DType::kFP16: return kernels::ElementType::kFP16;
    case DType::kFP32: return kernels::ElementType::kFP32;
  }
  return kernels::ElementType::kBF16;
}

// Elements of the logsumexp buffer in the layout AttentionShape::LseIndex describes.
int64_t LseCount(const AttentionShape& s) {
  return s.packed ? s.lse_elements() : int64_t{s.batch} * s.heads_q * s.max_seqlen_q;
}

// What every call checks before it touches the device: the shape (CheckShape) and a resolved scale.
absl::Status CheckCall(const AttentionShape* shape, const AttentionOptions& options) {
  if (shape == nullptr) return absl::InvalidArgumentError("shape is missing");
  if (absl::Status st = CheckShape(*shape); !st.ok()) return st;
  if (!(std::isfinite(options.softmax_scale) && options.softmax_scale != 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("softmax_scale ", options.softmax_scale, " must be finite and resolved (non-zero)"));
  }
  return absl::OkStatus();
}

// The sizes and options the forward and backward Params share (same field names in both).
template <typename Params>
void DescribeProblem(Params& p, const AttentionShape& s, const AttentionOptions& options, DType dtype) {
  p.dtype = ToElementType(dtype);
  p.batch = s.batch;
  p.heads_q = s.heads_q;
  p.heads_kv = s.heads_kv;
  p.head_dim = s.head_dim;
  p.max_seqlen_q = s.max_seqlen_q;
  p.max_seqlen_k = s.max_seqlen_k;
  p.total_q = s.total_q;
  p.total_k = s.total_k;
  p.lse_packed = s.packed;
  p.causal = options.causal;
  p.softmax_scale = options.softmax_scale;
  kernels::SetContiguousStrides(p);
}

// One device allocation carved into 256-byte-aligned pieces; freed (after the stream is done)
// when the request ends, whatever the path out.
class RequestMemory {
 public:
  ~RequestMemory() {
    if (base_) cudaFree(base_);
  }
  // Reserves `bytes`; returns its offset. Call Allocate() after the last Reserve().
  size_t Reserve(size_t bytes) {
    const size_t at = size_;
    size_ += (bytes + 255) / 256 * 256;
    return at;
  }
  cudaError_t Allocate() { return size_ ? cudaMalloc(&base_, size_) : cudaSuccess; }
  void* at(size_t offset) const { return static_cast<uint8_t*>(base_) + offset; }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

class Stream {
 public:
  ~Stream() {
    if (stream_) cudaStreamDestroy(stream_);
  }
  cudaError_t Create() { return cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(CudaBackendOptions options, DeviceDescription device)
      : options_(options), device_(std::move(device)) {}

  std::string_view name() const override { return "cuda"; }
  std::vector<DeviceDescription> Devices() const override { return {device_}; }
  std::vector<int> SupportedHeadDims() const override { return {std::begin(kHeadDims), std::end(kHeadDims)}; }

  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    (void)dtype;  // BF16 and FP16 natively, FP32 through the FP16 conversion path (flash_fwd.h)
    if (absl::Status st = CheckHeadDim(shape.head_dim); !st.ok()) return st;
    if (shape.heads_q <= 0 || shape.heads_kv <= 0 || shape.heads_q % shape.heads_kv != 0) {
      return absl::InvalidArgumentError(absl::StrCat("heads_q (", shape.heads_q,
                                                     ") must be a positive multiple of heads_kv (", shape.heads_kv,
                                                     ")"));
    }
    return absl::OkStatus();
  }

  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;

 private:
  CudaBackendOptions options_;
  DeviceDescription device_;
};

absl::Status CudaBackend::Forward(const ForwardArgs& args) {
  if (absl::Status st = CheckCall(args.shape, args.options); !st.ok()) return st;
  const AttentionShape& s = *args.shape;
  if (s.batch == 0 || s.total_q == 0) return absl::OkStatus();
  if ((args.q == nullptr) || (args.out == nullptr) || (args.lse == nullptr) ||
      (s.total_k > 0 && (args.k == nullptr || args.v == nullptr))) {
    return absl::InvalidArgumentError("q, k, v, out and lse buffers are required");
  }

  ATTND_RETURN_IF_CUDA(cudaSetDevice(options_.device), "cudaSetDevice");
  const size_t es = ElementSize(args.dtype);
  const size_t q_bytes = size_t(s.q_elements()) * es, kv_bytes = size_t(s.kv_elements()) * es;
  const size_t lse_bytes = size_t(LseCount(s)) * sizeof(float);
  const size_t cu_bytes = s.cu_seqlens_q.size() * sizeof(int32_t);

  kernels::FlashFwdParams p;
  DescribeProblem(p, s, args.options, args.dtype);

  RequestMemory mem;
  const size_t q_at = mem.Reserve(q_bytes), k_at = mem.Reserve(kv_bytes), v_at = mem.Reserve(kv_bytes);
  const size_t out_at = mem.Reserve(q_bytes), lse_at = mem.Reserve(lse_bytes);
  const size_t cq_at = mem.Reserve(cu_bytes), ck_at = mem.Reserve(cu_bytes);
  const size_t ws_at = mem.Reserve(kernels::FlashFwdWorkspaceBytes(p));
  if (absl::Status st = CudaStatus(mem.Allocate(), "allocating device memory for the request"); !st.ok()) {
    cudaGetLastError();  // out-of-memory is not sticky: clear it for the next request
    return st;
  }
  p.q = mem.at(q_at);
  p.k = mem.at(k_at);
  p.v = mem.at(v_at);
  p.out = mem.at(out_at);
  p.lse = static_cast<float*>(mem.at(lse_at));
  p.cu_seqlens_q = static_cast<const int32_t*>(mem.at(cq_at));
  p.cu_seqlens_k = static_cast<const int32_t*>(mem.at(ck_at));

  Stream stream;
  ATTND_RETURN_IF_CUDA(stream.Create(), "creating a stream");
  const cudaStream_t st = stream.get();
  ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(mem.at(q_at), args.q, q_bytes, cudaMemcpyHostToDevice, st), "copying q");
  if (kv_bytes) {
    ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(mem.at(k_at), args.k, kv_bytes, cudaMemcpyHostToDevice, st), "copying k");
    ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(mem.at(v_at), args.v, kv_bytes, cudaMemcpyHostToDevice, st), "copying v");
  }
  ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(mem.at(cq_at), s.cu_seqlens_q.data(), cu_bytes, cudaMemcpyHostToDevice, st),
                       "copying cu_seqlens_q");
  ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(mem.at(ck_at), s.cu_seqlens_k.data(), cu_bytes, cudaMemcpyHostToDevice, st),
                       "copying cu_seqlens_k");
  // The kernel writes every valid lse entry; dense layouts have none unused (all lengths equal).
  ATTND_RETURN_IF_CUDA(kernels::FlashFwd(p, mem.at(ws_at), st), "launching the forward kernel");
  ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(args.out, mem.at(out_at), q_bytes, cudaMemcpyDeviceToHost, st), "copying out");
  ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(args.lse, mem.at(lse_at), lse_bytes, cudaMemcpyDeviceToHost, st),
                       "copying lse");
  ATTND_RETURN_IF_CUDA(cudaStreamSynchronize(st), "running the forward pass");
  return absl::OkStatus();
}

// Deterministic when the request asks for it or the daemon forces it (CudaBackendOptions::deterministic).
absl::Status CudaBackend::Backward(const BackwardArgs& args) {
  if (absl::Status st = CheckCall(args.shape, args.options); !st.ok()) return st;
  const AttentionShape& s = *args.shape;
  if (s.batch == 0 || (s.total_q == 0 && s.total_k == 0)) return absl::OkStatus();
  if (s.total_q > 0 && (args.q == nullptr || args.out == nullptr || args.lse == nullptr ||
                        args.grad_out == nullptr || args.grad_q == nullptr)) {
    return absl::InvalidArgumentError("q, out, lse, grad_out and grad_q buffers are required");
  }
  if (s.total_k > 0 && (args.k == nullptr || args.v == nullptr || args.grad_k == nullptr || args.grad_v == nullptr)) {
    return absl::InvalidArgumentError("k, v, grad_k and grad_v buffers are required");
  }

  ATTND_RETURN_IF_CUDA(cudaSetDevice(options_.device), "cudaSetDevice");
  const size_t es = ElementSize(args.dtype);
  const size_t q_bytes = size_t(s.q_elements()) * es, kv_bytes = size_t(s.kv_elements()) * es;
  const size_t lse_bytes = size_t(LseCount(s)) * sizeof(float);
  const size_t cu_bytes = s.cu_seqlens_q.size() * sizeof(int32_t);

  kernels::FlashBwdParams p;
  DescribeProblem(p, s, args.options, args.dtype);
  p.deterministic = args.options.deterministic || options_.deterministic;

  RequestMemory mem;
  const size_t q_at = mem.Reserve(q_bytes), k_at = mem.Reserve(kv_bytes), v_at = mem.Reserve(kv_bytes);
  const size_t out_at = mem.Reserve(q_bytes), do_at = mem.Reserve(q_bytes), lse_at = mem.Reserve(lse_bytes);
  const size_t dq_at = mem.Reserve(q_bytes), dk_at = mem.Reserve(kv_bytes), dv_at = mem.Reserve(kv_bytes);
  const size_t cq_at = mem.Reserve(cu_bytes), ck_at = mem.Reserve(cu_bytes);
  const size_t ws_at = mem.Reserve(kernels::FlashBwdWorkspaceBytes(p));
  if (absl::Status st = CudaStatus(mem.Allocate(), "allocating device memory for the request"); !st.ok()) {
    cudaGetLastError();  // out-of-memory is not sticky: clear it for the next request
    return st;
  }
  p.q = mem.at(q_at);
  p.k = mem.at(k_at);
  p.v = mem.at(v_at);
  p.out = mem.at(out_at);
  p.grad_out = mem.at(do_at);
  p.lse = static_cast<const float*>(mem.at(lse_at));
  p.grad_q = mem.at(dq_at);
  p.grad_k = mem.at(dk_at);
  p.grad_v = mem.at(dv_at);
  p.cu_seqlens_q = static_cast<const int32_t*>(mem.at(cq_at));
  p.cu_seqlens_k = static_cast<const int32_t*>(mem.at(ck_at));

  Stream stream;
  ATTND_RETURN_IF_CUDA(stream.Create(), "creating a stream");
  const cudaStream_t st = stream.get();
  auto h2d = [&](size_t at, const void* src, size_t bytes) {
    return bytes == 0 ? cudaSuccess : cudaMemcpyAsync(mem.at(at), src, bytes, cudaMemcpyHostToDevice, st);
  };
  ATTND_RETURN_IF_CUDA(h2d(q_at, args.q, q_bytes), "copying q");
  ATTND_RETURN_IF_CUDA(h2d(k_at, args.k, kv_bytes), "copying k");
  ATTND_RETURN_IF_CUDA(h2d(v_at, args.v, kv_bytes), "copying v");
  ATTND_RETURN_IF_CUDA(h2d(out_at, args.out, q_bytes), "copying out");
  ATTND_RETURN_IF_CUDA(h2d(do_at, args.grad_out, q_bytes), "copying grad_out");
  ATTND_RETURN_IF_CUDA(h2d(lse_at, args.lse, lse_bytes), "copying lse");
  ATTND_RETURN_IF_CUDA(h2d(cq_at, s.cu_seqlens_q.data(), cu_bytes), "copying cu_seqlens_q");
  ATTND_RETURN_IF_CUDA(h2d(ck_at, s.cu_seqlens_k.data(), cu_bytes), "copying cu_seqlens_k");
  ATTND_RETURN_IF_CUDA(kernels::FlashBwd(p, mem.at(ws_at), st), "launching the backward kernels");
  if (q_bytes) {
    ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(args.grad_q, mem.at(dq_at), q_bytes, cudaMemcpyDeviceToHost, st),
                         "copying grad_q");
  }
  if (kv_bytes) {
    ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(args.grad_k, mem.at(dk_at), kv_bytes, cudaMemcpyDeviceToHost, st),
                         "copying grad_k");
    ATTND_RETURN_IF_CUDA(cudaMemcpyAsync(args.grad_v, mem.at(dv_at), kv_bytes, cudaMemcpyDeviceToHost, st),
                         "copying grad_v");
  }
  ATTND_RETURN_IF_CUDA(cudaStreamSynchronize(st), "running the backward pass");
  return absl::OkStatus();
}

}  // namespace

int VisibleCudaDevices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error for the caller, just none
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  const int n = VisibleCudaDevices();
  if (options.device < 0 || options.device >= n) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: device ", options.device, " is not visible (", n, " CUDA devices)"));
  }
  cudaDeviceProp prop{};
  if (absl::Status st = CudaStatus(cudaGetDeviceProperties(&prop, options.device), "reading device properties");
      !st.ok()) {
    return st;
  }
  if (prop.major < 8) {
    return absl::FailedPreconditionError(absl::StrCat("cuda backend: device ", options.device, " (", prop.name,
                                                      ") has compute capability ", prop.major, ".", prop.minor,
                                                      "; the kernels need 8.0 or newer"));
  }
  DeviceDescription d;
  d.index = options.device;
  d.name = prop.name;
  d.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  d.multiprocessors = prop.multiProcessorCount;
  d.compute_capability = absl::StrCat(prop.major, ".", prop.minor);
  return std::unique_ptr<Backend>(new CudaBackend(options, std::move(d)));
}

}  // namespace attnd
