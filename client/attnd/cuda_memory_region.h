// CudaMemoryRegion: GPU memory of this process that a co-located attnd reads and writes in place,
// shared by CUDA IPC: cudaMalloc'd here, exported with cudaIpcGetMemHandle and registered with
// the daemon (RegisterCudaMemory) in a RegionSession, which is its lease like any region's.
// Needs a CUDA build (ATTND_HAVE_CUDA); elsewhere Create() answers UNIMPLEMENTED.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "attnd/v1/attention.pb.h"
#include "client/attnd/client.h"
#include "client/attnd/region_session.h"

namespace attnd {

class CudaMemoryRegion {
 public:
  static absl::StatusOr<std::unique_ptr<CudaMemoryRegion>> Create(Client& client, RegionSession& session,
                                                                  size_t size, int device, const std::string& label);
  ~CudaMemoryRegion();  // frees the device memory (the daemon closed its mapping when the region was released)

  void* device_data() const { return data_; }
  size_t size() const { return size_; }
  const v1::RegionInfo& info() const { return info_; }
  v1::RegionSpan Span(uint64_t offset, uint64_t size) const { return SpanOf(info_, offset, size); }
  // Host <-> region copies (synchronous).
  absl::Status Write(uint64_t offset, const void* host, size_t bytes);
  absl::Status Read(uint64_t offset, void* host, size_t bytes) const;

 private:
  CudaMemoryRegion(void* data, size_t size, int device, v1::RegionInfo info)
      : data_(data), size_(size), device_(device), info_(std::move(info)) {}
  void* data_;
  size_t size_;
  int device_;
  v1::RegionInfo info_;
};

}  // namespace attnd
