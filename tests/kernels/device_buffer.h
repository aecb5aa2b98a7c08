// Small RAII helpers for the kernel tests: device buffers and CUDA error checks that fail the
// current test with the error's name instead of crashing.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <vector>

namespace attnd::testing {

#define ATTND_ASSERT_CUDA(expr)                                                              \
  do {                                                                                       \
    const cudaError_t attnd_err_ = (expr);                                                   \
    ASSERT_EQ(attnd_err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(attnd_err_);   \
  } while (0)

// True when a CUDA device is usable; tests GTEST_SKIP otherwise.
inline bool HaveCudaDevice() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() { if (ptr_) cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  bool ok() const { return bytes_ == 0 || ptr_ != nullptr; }

  template <typename T>
  cudaError_t Upload(const std::vector<T>& host) {
    return host.empty() ? cudaSuccess : cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  template <typename T>
  cudaError_t Download(std::vector<T>& host) const {
    host.resize(bytes_ / sizeof(T));
    return host.empty() ? cudaSuccess : cudaMemcpy(host.data(), ptr_, bytes_, cudaMemcpyDeviceToHost);
  }
  // Fills every byte with `byte` (0xFF makes NaN in bf16, fp16 and fp32).
  cudaError_t Poison(unsigned char byte = 0xFF) { return bytes_ ? cudaMemset(ptr_, byte, bytes_) : cudaSuccess; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace attnd::testing
