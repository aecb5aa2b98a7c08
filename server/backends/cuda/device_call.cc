#include "server/backends/cuda/device_call.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/backends/cuda/cuda_status.h"
#include "server/backends/cuda/staged_transfers.h"
#include "server/engine/device_call_layout.h"

namespace attnd {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

absl::StatusOr<double> ElapsedSeconds(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0;
  ATTND_RETURN_IF_CUDA(cudaEventElapsedTime(&ms, from, to), "timing a stage");
  return ms * 1e-3;
}

}  // namespace

int DeviceCall::Input(const void* data, size_t bytes, bool host_only) {
  Tensor t;
  t.host_in = data;
  t.bytes = bytes;
  t.copied = host_only || !resident_;
  t.host_only = host_only;
  if (!t.copied) t.device = const_cast<void*>(data);  // the kernels take const pointers anyway
  tensors_.push_back(t);
  return static_cast<int>(tensors_.size()) - 1;
}

int DeviceCall::Output(void* data, size_t bytes) {
  Tensor t;
  t.host_out = data;
  t.bytes = bytes;
  t.copied = !resident_;
  if (!t.copied) t.device = data;
  tensors_.push_back(t);
  return static_cast<int>(tensors_.size()) - 1;
}

absl::Status DeviceCall::Run(const CallControl& control, const std::string& purpose, CallTimings* timings,
                             absl::FunctionRef<cudaError_t(cudaStream_t)> launch) {
  const Clock::time_point entered = Clock::now();
  ATTND_RETURN_IF_CUDA(cudaSetDevice(context_.device), "cudaSetDevice");
  StreamLanes::Lease lane = context_.lanes->Acquire();
  if (timings != nullptr) timings->queue_s = std::max(timings->queue_s, 0.0) + Seconds(entered, Clock::now());
  // Waiting for a stream may have outlasted the caller's interest: then compute nothing.
  if (control.cancelled != nullptr && control.cancelled->load(std::memory_order_acquire)) {
    return absl::CancelledError("call cancelled while it waited for a CUDA stream; it was not computed");
  }
  if (control.deadline <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("deadline passed while the call waited for a CUDA stream; it was not computed");
  }
  return Execute(*lane, purpose, timings, launch);
}

absl::Status DeviceCall::Execute(StreamLane& lane, const std::string& purpose, CallTimings* timings,
                                 absl::FunctionRef<cudaError_t(cudaStream_t)> launch) {
  const cudaStream_t stream = lane.stream;
  engine::DeviceCallLayout layout;
  for (Tensor& t : tensors_) {
    if (t.copied) t.offset = layout.Add(t.bytes);
  }
  const size_t workspace_at = layout.Add(workspace_bytes_);
  const size_t total = engine::DeviceRequestBytes(layout.total(), reserved_bytes_, context_.memory->cap_bytes(),
                                                  context_.lanes->count());

  DeviceMemoryPool::Allocation memory;
  if (total > 0) {
    absl::StatusOr<DeviceMemoryPool::Allocation> allocation = context_.memory->Allocate(total, stream, purpose);
    if (!allocation.ok()) return allocation.status();
    memory = *std::move(allocation);
  }
  auto* base = static_cast<std::byte*>(memory.get());
  workspace_ = workspace_bytes_ > 0 ? base + workspace_at : nullptr;

  // Declared after `memory`: destroyed first, so a failed call waits for its copies before the
  // memory (stream-ordered anyway) and the staging go back.
  StagedTransfers transfers(context_.pinned, &lane);
  size_t metadata_used = 0;
  for (Tensor& t : tensors_) {
    if (!t.copied) continue;
    t.device = base + t.offset;
    bool page_locked = host_page_locked_ && !t.host_only;  // the caller's flag covers its tensors
    const void* from = t.host_in;
    if (t.host_only && from != nullptr && metadata_used + t.bytes <= StreamLanes::kMetadataBytes) {
      void* room = static_cast<std::byte*>(lane.metadata) + metadata_used;
      std::memcpy(room, from, t.bytes);
      metadata_used += engine::DeviceCallLayout::Aligned(t.bytes);
      from = room;
      page_locked = true;
    }
    if (from != nullptr) transfers.AddInput(t.device, from, t.bytes, page_locked);
    if (t.host_out != nullptr) transfers.AddOutput(t.host_out, t.device, t.bytes, page_locked);
  }

  ATTND_RETURN_IF_CUDA(cudaEventRecord(lane.start, stream), "recording the call's start");
  if (absl::Status st = transfers.CopyInputs(); !st.ok()) return st;
  ATTND_RETURN_IF_CUDA(cudaEventRecord(lane.inputs_ready, stream), "recording the end of the inputs' copy");
  ATTND_RETURN_IF_CUDA(launch(stream), "launching the kernels");
  ATTND_RETURN_IF_CUDA(cudaEventRecord(lane.kernels_done, stream), "recording the end of the kernels");
  if (absl::Status st = transfers.QueueOutputs(); !st.ok()) return st;
  memory.Reset();  // stream-ordered: reusable by the next call as soon as these copies are queued

  ATTND_RETURN_IF_CUDA(cudaEventSynchronize(lane.kernels_done), "running the kernels");
  const Clock::time_point kernels_done = Clock::now();
  if (absl::Status st = transfers.FinishOutputs(); !st.ok()) return st;
  const Clock::time_point outputs_done = Clock::now();
  if (context_.transfers != nullptr) {
    context_.transfers->direct_bytes.fetch_add(transfers.direct_bytes(), std::memory_order_relaxed);
    context_.transfers->staged_bytes.fetch_add(transfers.staged_bytes(), std::memory_order_relaxed);
    context_.transfers->pageable_bytes.fetch_add(transfers.pageable_bytes(), std::memory_order_relaxed);
  }

  if (timings != nullptr) {
    absl::StatusOr<double> h2d = ElapsedSeconds(lane.start, lane.inputs_ready);
    absl::StatusOr<double> kernel = ElapsedSeconds(lane.inputs_ready, lane.kernels_done);
    if (h2d.ok()) timings->h2d_s = *h2d;
    if (kernel.ok()) timings->kernel_s = *kernel;
    timings->d2h_s = Seconds(kernels_done, outputs_done);
  }
  return absl::OkStatus();
}

}  // namespace attnd
