// RegionMemory: the memory behind one registered region, and the two hooks that give a region its
// device-side life. Both hooks are optional; a CUDA build provides them (cuda_region_hooks.h):
//   HostMemoryPinner     registers a shared-memory mapping with the GPU driver (cudaHostRegister),
//                        so host <-> device copies of tensors in it run by DMA, no staging copy.
//   DeviceMemoryImporter opens a CUDA IPC handle of a client's device allocation.
// The gRPC front end and the registry know nothing of CUDA: only these interfaces.
#pragma once

#include <cstddef>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/transport/tensor_buffer.h"

namespace attnd {

// Released (unmapped, closed, unpinned) on destruction.
class RegionMemory {
 public:
  virtual ~RegionMemory() = default;
  virtual void* base() const = 0;
  virtual size_t size() const = 0;
  virtual MemoryKind kind() const = 0;  // kHost / kPinnedHost for shared memory, kDevice for CUDA IPC
  virtual int device() const { return -1; }
};

class HostMemoryPinner {
 public:
  virtual ~HostMemoryPinner() = default;
  // Pins [data, data + size) for DMA until the returned guard is destroyed.
  virtual absl::StatusOr<std::shared_ptr<void>> Pin(void* data, size_t size) = 0;
};

class DeviceMemoryImporter {
 public:
  virtual ~DeviceMemoryImporter() = default;
  // Opens a CUDA IPC memory handle (64 bytes) of an allocation of at least `size` bytes on
  // `device`. INVALID_ARGUMENT for a malformed handle or a size beyond the allocation,
  // FAILED_PRECONDITION when the handle cannot be opened (another GPU, the exporter is gone).
  virtual absl::StatusOr<std::unique_ptr<RegionMemory>> Import(absl::string_view ipc_handle, size_t size,
                                                               int device) = 0;
};

}  // namespace attnd
