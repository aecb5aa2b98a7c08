#include "server/transport/backend_host_allocator.h"

#include "absl/strings/str_cat.h"

namespace attnd {

absl::StatusOr<TensorBufferPtr> BackendHostAllocator::Allocate(size_t bytes, absl::string_view what) {
  absl::StatusOr<HostBuffer> lent = backend_->AllocateHostBuffer(bytes == 0 ? 1 : bytes);
  if (!lent.ok()) {
    return absl::Status(lent.status().code(), absl::StrCat(what, ": ", lent.status().message()));
  }
  in_use_ += static_cast<int64_t>(bytes);
  // The HostBuffer's `keep` returns the memory to the backend's pool with the last owner.
  return std::make_shared<TensorBuffer>(lent->data, bytes, MemoryKind::kPinnedHost,
                                        [this, keep = std::move(lent->keep)](void*, size_t n) mutable {
                                          keep.reset();
                                          in_use_ -= static_cast<int64_t>(n);
                                        });
}

}  // namespace attnd
