#include "server/backends/cuda/device_memory_pool.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/backends/cuda/cuda_status.h"

namespace attnd {

// cudaMalloc with one event per block, recorded when the block is freed (stream order).
class DeviceMemoryPool::CudaSource final : public engine::BlockSource {
 public:
  explicit CudaSource(int device) : device_(device) {}

  absl::Status Allocate(engine::CachedBlock& block) override {
    ATTND_RETURN_IF_CUDA(cudaSetDevice(device_), "cudaSetDevice");
    void* ptr = nullptr;
    ATTND_RETURN_IF_CUDA(cudaMalloc(&ptr, block.bytes), "cudaMalloc");
    cudaEvent_t event = nullptr;
    if (absl::Status st = CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
        !st.ok()) {
      cudaFree(ptr);
      return st;
    }
    block.ptr = ptr;
    block.source_data = event;
    return absl::OkStatus();
  }

  void Release(engine::CachedBlock& block) override {
    cudaSetDevice(device_);
    auto event = static_cast<cudaEvent_t>(block.source_data);
    if (event != nullptr) {
      cudaEventSynchronize(event);  // the last work that used the block is done
      cudaEventDestroy(event);
    }
    cudaFree(block.ptr);
  }

 private:
  const int device_;
};

DeviceMemoryPool::DeviceMemoryPool(int device, int64_t cap_bytes)
    : device_(device),
      source_(std::make_unique<CudaSource>(device)),
      cache_(source_.get(), cap_bytes, kMinBlockBytes, absl::StrCat("GPU ", device, " memory")) {}

DeviceMemoryPool::~DeviceMemoryPool() = default;

absl::StatusOr<DeviceMemoryPool::Allocation> DeviceMemoryPool::Allocate(size_t bytes, cudaStream_t stream,
                                                                        absl::string_view purpose) {
  const auto user = reinterpret_cast<uintptr_t>(stream);
  absl::StatusOr<engine::CachedBlock*> block = cache_.Allocate(bytes, user, purpose);
  if (!block.ok()) return block.status();
  // Last used on another stream: this one waits (on the device) for that work to finish.
  if ((*block)->last_user != 0 && (*block)->last_user != user) {
    if (absl::Status st = CudaStatus(
            cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>((*block)->source_data), 0),
            "ordering a reused device block after its last user");
        !st.ok()) {
      cache_.Free(*block, (*block)->last_user);
      return st;
    }
  }
  Allocation a;
  a.pool_ = this;
  a.block_ = *block;
  a.stream_ = stream;
  return a;
}

void DeviceMemoryPool::Free(engine::CachedBlock* block, cudaStream_t stream) {
  uintptr_t user = reinterpret_cast<uintptr_t>(stream);
  if (cudaEventRecord(static_cast<cudaEvent_t>(block->source_data), stream) != cudaSuccess) {
    // No event: make the block safe for anyone by waiting here, and leave the event as it was
    // (recorded earlier, hence complete, or never recorded).
    cudaGetLastError();
    cudaStreamSynchronize(stream);
    user = 0;
  }
  cache_.Free(block, user);
}

DeviceMemoryPool::Allocation& DeviceMemoryPool::Allocation::operator=(Allocation&& o) noexcept {
  if (this != &o) {
    Reset();
    pool_ = std::exchange(o.pool_, nullptr);
    block_ = std::exchange(o.block_, nullptr);
    stream_ = std::exchange(o.stream_, nullptr);
  }
  return *this;
}

void DeviceMemoryPool::Allocation::Reset() {
  if (block_ != nullptr) pool_->Free(block_, stream_);
  block_ = nullptr;
  pool_ = nullptr;
}

}  // namespace attnd
