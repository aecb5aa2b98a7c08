// TensorBuffer and TensorAllocator: where decoded tensor bytes land and where results are written.
//
// The front end asks a TensorAllocator for every buffer that holds tensor bytes on the host: the
// destination of a received tensor (its bytes are gathered there straight from the gRPC slices,
// one copy), the outputs a backend writes (sent from there, no copy), and resident tensors. The
// default HostTensorAllocator keeps freed buffers for reuse, so steady-state requests touch no
// fresh pages (page faults, not copies, dominate a large unary call on a fresh heap). A backend
// may provide its own allocator (pinned staging memory that its copy engine reads directly).
//
// Buffers are shared: a response's slices and the resident store may hold the same output.
// Reused memory is never exposed: every byte of a buffer's `size` is written (gathered or
// computed) before it is read or sent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace attnd {

enum class MemoryKind { kHost, kPinnedHost, kDevice };

class TensorBuffer {
 public:
  // `release` runs once, when the last owner drops the buffer.
  TensorBuffer(void* data, size_t size, MemoryKind kind, std::function<void(void*, size_t)> release)
      : data_(data), size_(size), kind_(kind), release_(std::move(release)) {}
  ~TensorBuffer() {
    if (release_) release_(data_, size_);
  }
  TensorBuffer(const TensorBuffer&) = delete;
  TensorBuffer& operator=(const TensorBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }  // the bytes asked for (the block may be larger)
  MemoryKind kind() const { return kind_; }

 private:
  void* data_;
  size_t size_;
  MemoryKind kind_;
  std::function<void(void*, size_t)> release_;
};

using TensorBufferPtr = std::shared_ptr<TensorBuffer>;

class TensorAllocator {
 public:
  virtual ~TensorAllocator() = default;
  // A buffer of `bytes` (> 0), 64-byte aligned at least. RESOURCE_EXHAUSTED naming `what` (e.g.
  // "q", "out") when the memory cannot be had.
  virtual absl::StatusOr<TensorBufferPtr> Allocate(size_t bytes, absl::string_view what) = 0;
  virtual absl::string_view name() const = 0;
  virtual int64_t bytes_in_use() const = 0;  // handed out and not yet released
};

}  // namespace attnd
