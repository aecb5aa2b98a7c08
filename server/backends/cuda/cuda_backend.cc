// CudaBackend: describes each call to the kernels (Params) and runs it as a DeviceCall on one GPU.
// Calls from many threads run concurrently, one per lane (stream); device memory, staging, streams
// and events are all reused from call to call, so steady-state serving makes no driver allocation.
#include "server/backends/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attnd/kernels/flash_bwd.h"
#include "attnd/kernels/flash_fwd.h"
#include "server/backend_stats.h"
#include "server/backends/cuda/cuda_call_checks.h"
#include "server/backends/cuda/cuda_status.h"
#include "server/backends/cuda/device_call.h"
#include "server/backends/cuda/device_memory_pool.h"
#include "server/backends/cuda/pinned_host_pool.h"
#include "server/backends/cuda/stream_lanes.h"
#include "server/engine/device_call_layout.h"

namespace attnd {
namespace {

kernels::ElementType ToElementType(DType t) {
  switch (t) {
    case DType::kBF16: return kernels::ElementType::kBF16;
    case DType::kFP16: return kernels::ElementType::kFP16;
    case DType::kFP32: return kernels::ElementType::kFP32;
  }
  return kernels::ElementType::kBF16;
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

// Names a call in RESOURCE_EXHAUSTED messages: enough for a client to recognize its request.
std::string Purpose(const char* direction, const AttentionShape& s, DType dtype) {
  return absl::StrCat(direction, " request (", s.batch, " sequences, ", s.total_q, " q rows, ", s.total_k,
                      " kv rows, ", s.heads_q, "/", s.heads_kv, " heads, head_dim ", s.head_dim, ", ",
                      std::string(DTypeName(dtype)), ")");
}

// The kernels' Params of the same call grown to `rows` rows of q and k (for their workspace).
template <typename Params>
Params Grown(Params p, int64_t rows) {
  p.total_q = p.total_k = rows;
  p.max_seqlen_q = p.max_seqlen_k = static_cast<int>(rows);
  return p;
}
// The rows a call reserves for: the caller's hint, for host tensors, when it is no smaller than
// the call itself and fits the kernels' int rows; 0: none.
int64_t ReserveRows(int64_t reserve_rows, const TensorPlacement& placement, const AttentionShape& s) {
  if (placement.space != MemorySpace::kHost || reserve_rows < std::max(s.total_q, s.total_k) ||
      reserve_rows > std::numeric_limits<int32_t>::max()) {
    return 0;
  }
  return reserve_rows;
}

// A device-resident call must be on this GPU, with pointers the driver knows as its memory (a
// host pointer here would make the kernels fault and take the whole context down).
absl::Status CheckResident(const TensorPlacement& placement, int device,
                           std::initializer_list<std::pair<const void*, const char*>> tensors) {
  if (placement.space != MemorySpace::kDevice) return absl::OkStatus();
  if (placement.device != device) {
    return absl::FailedPreconditionError(absl::StrCat("the call's tensors are on CUDA device ", placement.device,
                                                      " but it reached the backend of device ", device));
  }
  for (auto [ptr, field] : tensors) {
    if (ptr == nullptr) continue;
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess ||
        (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) ||
        attributes.device != device) {
      cudaGetLastError();
      return absl::InvalidArgumentError(
          absl::StrCat(field, " is said to be memory of CUDA device ", device, " but is not"));
    }
  }
  return absl::OkStatus();
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(CudaBackendOptions options, DeviceDescription device, std::unique_ptr<DeviceMemoryPool> memory,
              std::unique_ptr<StreamLanes> lanes)
      : options_(std::move(options)),
        device_(std::move(device)),
        memory_(std::move(memory)),
        lanes_(std::move(lanes)),
        context_{options_.device, memory_.get(), options_.pinned.get(), lanes_.get(), &transfers_} {}

  std::string_view name() const override { return "cuda"; }
  std::vector<DeviceDescription> Devices() const override { return {device_}; }
  std::vector<int> SupportedHeadDims() const override { return CudaHeadDims(); }

  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    (void)dtype;  // BF16 and FP16 natively, FP32 through the FP16 conversion path (flash_fwd.h)
    return CheckCudaSupported(shape);
  }

  absl::Status Forward(const ForwardArgs& args) override;
  absl::Status Backward(const BackwardArgs& args) override;

  absl::StatusOr<HostBuffer> AllocateHostBuffer(size_t bytes) override {
    absl::StatusOr<HostBuffer> pinned = options_.pinned->Lend(bytes);
    return pinned.ok() ? pinned : AllocatePlainHostBuffer(bytes);  // full: staged copies still work
  }

  void CollectStats(BackendStats& stats) const override {
    DeviceStats d;
    d.device = device_.index;
    d.name = device_.name;
    d.has_memory_pool = true;
    d.memory = memory_->Stats();
    d.streams = lanes_->count();
    d.busy_streams = lanes_->busy();
    d.launches = launches_.load(std::memory_order_relaxed);
    d.direct_copy_bytes = transfers_.direct_bytes.load(std::memory_order_relaxed);
    d.staged_copy_bytes = transfers_.staged_bytes.load(std::memory_order_relaxed);
    d.pageable_copy_bytes = transfers_.pageable_bytes.load(std::memory_order_relaxed);
    stats.devices.push_back(std::move(d));
    stats.has_pinned_host = true;
    stats.pinned_host = options_.pinned->Stats();  // one pool for every GPU: the same numbers
  }

 private:
  absl::Status Finish(absl::Status status) {
    if (status.ok()) launches_.fetch_add(1, std::memory_order_relaxed);
    return status;
  }

  const CudaBackendOptions options_;
  const DeviceDescription device_;
  const std::unique_ptr<DeviceMemoryPool> memory_;
  const std::unique_ptr<StreamLanes> lanes_;
  TransferCounters transfers_;
  const DeviceContext context_;
  std::atomic<int64_t> launches_{0};
};

absl::Status CudaBackend::Forward(const ForwardArgs& args) {
  if (absl::Status st = CheckCudaCall(args.shape, args.options); !st.ok()) return st;
  const AttentionShape& s = *args.shape;
  if (s.batch == 0 || s.total_q == 0) return absl::OkStatus();
  if ((args.q == nullptr) || (args.out == nullptr) || (args.lse == nullptr) ||
      (s.total_k > 0 && (args.k == nullptr || args.v == nullptr))) {
    return absl::InvalidArgumentError("q, k, v, out and lse buffers are required");
  }
  if (absl::Status st = CheckResident(args.placement, options_.device,
                                      {{args.q, "q"}, {args.k, "k"}, {args.v, "v"}, {args.out, "out"},
                                       {args.lse, "lse"}});
      !st.ok()) {
    return st;
  }
  const size_t es = ElementSize(args.dtype);
  const size_t q_bytes = size_t(s.q_elements()) * es, kv_bytes = size_t(s.kv_elements()) * es;
  const size_t cu_bytes = s.cu_seqlens_q.size() * sizeof(int32_t);

  kernels::FlashFwdParams p;
  DescribeProblem(p, s, args.options, args.dtype);
  DeviceCall call(context_, args.placement);
  const int q = call.Input(args.q, q_bytes), k = call.Input(args.k, kv_bytes), v = call.Input(args.v, kv_bytes);
  const int cq = call.Input(s.cu_seqlens_q.data(), cu_bytes, /*host_only=*/true);
  const int ck = call.Input(s.cu_seqlens_k.data(), cu_bytes, /*host_only=*/true);
  // The kernel writes every valid lse entry; dense layouts have none unused (all lengths equal).
  const int out = call.Output(args.out, q_bytes);
  const int lse = call.Output(args.lse, size_t(LseCount(s)) * sizeof(float));
  call.Workspace(kernels::FlashFwdWorkspaceBytes(p));
  if (const int64_t rows = ReserveRows(args.reserve_rows, args.placement, s); rows > 0) {
    call.Reserve(
        engine::ForwardCallBytes(s, args.dtype, rows, cu_bytes, kernels::FlashFwdWorkspaceBytes(Grown(p, rows))));
  }
  return Finish(call.Run(args.control, Purpose("forward", s, args.dtype), args.timings, [&](cudaStream_t stream) {
    p.q = call.device(q);
    p.k = call.device(k);
    p.v = call.device(v);
    p.out = call.device(out);
    p.lse = static_cast<float*>(call.device(lse));
    p.cu_seqlens_q = static_cast<const int32_t*>(call.device(cq));
    p.cu_seqlens_k = static_cast<const int32_t*>(call.device(ck));
    return kernels::FlashFwd(p, call.workspace(), stream);
  }));
}

// Deterministic when the request asks for it or the daemon forces it (CudaBackendOptions::deterministic).
absl::Status CudaBackend::Backward(const BackwardArgs& args) {
  if (absl::Status st = CheckCudaCall(args.shape, args.options); !st.ok()) return st;
  const AttentionShape& s = *args.shape;
  if (s.batch == 0 || (s.total_q == 0 && s.total_k == 0)) return absl::OkStatus();
  if (s.total_q > 0 && (args.q == nullptr || args.out == nullptr || args.lse == nullptr ||
                        args.grad_out == nullptr || args.grad_q == nullptr)) {
    return absl::InvalidArgumentError("q, out, lse, grad_out and grad_q buffers are required");
  }
  if (s.total_k > 0 && (args.k == nullptr || args.v == nullptr || args.grad_k == nullptr || args.grad_v == nullptr)) {
    return absl::InvalidArgumentError("k, v, grad_k and grad_v buffers are required");
  }
  if (absl::Status st = CheckResident(args.placement, options_.device,
                                      {{args.q, "q"}, {args.k, "k"}, {args.v, "v"}, {args.out, "out"},
                                       {args.lse, "lse"}, {args.grad_out, "grad_out"}, {args.grad_q, "grad_q"},
                                       {args.grad_k, "grad_k"}, {args.grad_v, "grad_v"}});
      !st.ok()) {
    return st;
  }
  const size_t es = ElementSize(args.dtype);
  const size_t q_bytes = size_t(s.q_elements()) * es, kv_bytes = size_t(s.kv_elements()) * es;
  const size_t cu_bytes = s.cu_seqlens_q.size() * sizeof(int32_t);

  kernels::FlashBwdParams p;
  DescribeProblem(p, s, args.options, args.dtype);
  p.deterministic = args.options.deterministic || options_.deterministic;
  DeviceCall call(context_, args.placement);
  const int q = call.Input(args.q, q_bytes), k = call.Input(args.k, kv_bytes), v = call.Input(args.v, kv_bytes);
  const int o = call.Input(args.out, q_bytes), dout = call.Input(args.grad_out, q_bytes);
  const int lse = call.Input(args.lse, size_t(LseCount(s)) * sizeof(float));
  const int cq = call.Input(s.cu_seqlens_q.data(), cu_bytes, /*host_only=*/true);
  const int ck = call.Input(s.cu_seqlens_k.data(), cu_bytes, /*host_only=*/true);
  const int dq = call.Output(args.grad_q, q_bytes), dk = call.Output(args.grad_k, kv_bytes);
  const int dv = call.Output(args.grad_v, kv_bytes);
  call.Workspace(kernels::FlashBwdWorkspaceBytes(p));
  if (const int64_t rows = ReserveRows(args.reserve_rows, args.placement, s); rows > 0) {
    call.Reserve(
        engine::BackwardCallBytes(s, args.dtype, rows, cu_bytes, kernels::FlashBwdWorkspaceBytes(Grown(p, rows))));
  }
  return Finish(call.Run(args.control, Purpose("backward", s, args.dtype), args.timings, [&](cudaStream_t stream) {
    p.q = call.device(q);
    p.k = call.device(k);
    p.v = call.device(v);
    p.out = call.device(o);
    p.grad_out = call.device(dout);
    p.lse = static_cast<const float*>(call.device(lse));
    p.grad_q = call.device(dq);
    p.grad_k = call.device(dk);
    p.grad_v = call.device(dv);
    p.cu_seqlens_q = static_cast<const int32_t*>(call.device(cq));
    p.cu_seqlens_k = static_cast<const int32_t*>(call.device(ck));
    return kernels::FlashBwd(p, call.workspace(), stream);
  }));
}

absl::StatusOr<DeviceDescription> Describe(int device) {
  const int n = VisibleCudaDevices();
  if (device < 0 || device >= n) {
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: device ", device, " is not visible (", n, " CUDA devices)"));
  }
  cudaDeviceProp prop{};
  ATTND_RETURN_IF_CUDA(cudaGetDeviceProperties(&prop, device), "reading device properties");
  if (prop.major < 8) {
    return absl::FailedPreconditionError(absl::StrCat("cuda backend: device ", device, " (", prop.name,
                                                      ") has compute capability ", prop.major, ".", prop.minor,
                                                      "; the kernels need 8.0 or newer"));
  }
  DeviceDescription d;
  d.index = device;
  d.name = prop.name;
  d.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  d.multiprocessors = prop.multiProcessorCount;
  d.compute_capability = absl::StrCat(prop.major, ".", prop.minor);
  return d;
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
  absl::StatusOr<DeviceDescription> device = Describe(options.device);
  if (!device.ok()) return device.status();
  if (options.streams < 1 || options.streams > 64) {
    return absl::InvalidArgumentError(absl::StrCat("streams ", options.streams, " must be in 1..64"));
  }
  if (!(options.memory_fraction > 0 && options.memory_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory_fraction ", options.memory_fraction, " must be in (0, 1]"));
  }
  CudaBackendOptions resolved = options;
  if (resolved.memory_cap_bytes <= 0) {
    resolved.memory_cap_bytes = static_cast<int64_t>(options.memory_fraction * device->total_memory_bytes);
  }
  if (resolved.pinned == nullptr) resolved.pinned = PinnedHostPool::Create(options.pinned_cap_bytes);
  absl::StatusOr<std::unique_ptr<StreamLanes>> lanes = StreamLanes::Create(options.device, options.streams);
  if (!lanes.ok()) return lanes.status();
  auto memory = std::make_unique<DeviceMemoryPool>(options.device, resolved.memory_cap_bytes);
  return std::unique_ptr<Backend>(
      new CudaBackend(std::move(resolved), *std::move(device), std::move(memory), *std::move(lanes)));
}

absl::StatusOr<std::vector<std::unique_ptr<Backend>>> CreateCudaBackends(const std::vector<int>& devices,
                                                                         const CudaBackendOptions& options) {
  CudaBackendOptions shared = options;
  if (shared.pinned == nullptr) shared.pinned = PinnedHostPool::Create(options.pinned_cap_bytes);
  std::vector<std::unique_ptr<Backend>> backends;
  for (int device : devices) {
    shared.device = device;
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(shared);
    if (!backend.ok()) return backend.status();
    backends.push_back(*std::move(backend));
  }
  return backends;
}

}  // namespace attnd
