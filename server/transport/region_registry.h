// RegionRegistry: the shared-memory and CUDA IPC regions that co-located clients registered, the
// sessions they belong to, and the leases calls hold on them.
//
// Ownership and clean-up. Every region belongs to a session: one connection of a client to the
// daemon's region socket (region_socket.h). When the connection closes, because the client
// unregistered and left, exited or was killed, the session closes and each of its regions is
// released. A region is never unmapped under a running call: Resolve() hands each call a lease,
// and the memory goes (munmap, cudaIpcCloseMemHandle, cudaHostUnregister) when the region is
// released and its last lease ends. regions() and mapped_bytes() count what is still mapped, so
// they return to zero once every client is gone and every call has finished.
//
// Permissions. Registering shared memory needs a file descriptor the client passed over the
// socket (it proves the client may map that memory; the daemon never opens a path on a client's
// word), and the memfd must be sealed against shrinking (F_SEAL_SHRINK: a region that shrank under
// the daemon would fault it with SIGBUS). Every use of a region names its id and its key, 128
// random bits the registration returns: a client cannot reach a region whose key it was not given.
//
// Statuses name the request field (`field` arguments): NOT_FOUND for an unknown session, fd token
// or region; PERMISSION_DENIED for a wrong key or memory the daemon may not map; OUT_OF_RANGE for
// a span past the region's end; FAILED_PRECONDITION for a region still in use, an unsealed memfd;
// RESOURCE_EXHAUSTED beyond the per-session limits.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/transport/region_memory.h"

namespace attnd {

struct PeerIdentity {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

enum class RegionKind { kSharedMemory, kCudaIpc };
absl::string_view RegionKindName(RegionKind kind);  // "shared_memory", "cuda_ipc"

struct RegisteredRegion {
  std::string region_id;
  std::string key;
  uint64_t size = 0;
  RegionKind kind = RegionKind::kSharedMemory;
};

// Bytes of a region a call reads or writes; valid while `lease` lives.
struct ResolvedSpan {
  void* data = nullptr;
  uint64_t size = 0;
  MemoryKind kind = MemoryKind::kHost;
  int device = -1;
  std::string region_id;
  uint64_t offset = 0;
  std::shared_ptr<const void> lease;
};

class RegionRegistry {
 public:
  struct Limits {
    int max_sessions = 1024;
    int max_regions_per_session = 256;
    int max_parked_fds_per_session = 16;  // descriptors passed and not yet registered
  };

  // `pinner` and `importer` may be null (no CUDA): regions stay pageable host memory, and
  // RegisterCudaMemory answers UNIMPLEMENTED. Both must outlive the registry.
  RegionRegistry(Limits limits, HostMemoryPinner* pinner, DeviceMemoryImporter* importer);
  ~RegionRegistry();

  // Sessions: opened and closed by the region socket.
  absl::StatusOr<std::string> OpenSession(const PeerIdentity& peer);
  void CloseSession(const std::string& session);
  // Keeps `fd` (taking ownership; closed on failure) for a later RegisterSharedMemory; its token.
  absl::StatusOr<std::string> ParkFd(const std::string& session, int fd);

  absl::StatusOr<RegisteredRegion> RegisterSharedMemory(const std::string& session, const std::string& fd_token,
                                                        uint64_t size, const std::string& label);
  absl::StatusOr<RegisteredRegion> RegisterCudaMemory(const std::string& session, absl::string_view ipc_handle,
                                                      uint64_t size, int device, const std::string& label);
  bool cuda_ipc_supported() const { return importer_ != nullptr; }
  // FAILED_PRECONDITION while calls use the region (they finish first; then unregister again).
  absl::Status Unregister(const std::string& region_id, const std::string& key);

  // The span [offset, offset + size) of a region, leased to one call. `field` names the request
  // field in errors ("q.region").
  absl::StatusOr<ResolvedSpan> Resolve(const std::string& region_id, const std::string& key, uint64_t offset,
                                       uint64_t size, absl::string_view field);

  int64_t sessions() const;
  int64_t regions() const;       // mapped, registered or released-while-in-use
  int64_t mapped_bytes() const;  // of those regions
  int64_t parked_fds() const;

 private:
  struct Region;
  struct Session;
  friend struct Region;

  absl::StatusOr<RegisteredRegion> Add(const std::string& session, std::unique_ptr<RegionMemory> memory,
                                       RegionKind kind, const std::string& label) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Mapped(int64_t bytes, int delta);  // a Region came or went

  const Limits limits_;
  HostMemoryPinner* const pinner_;
  DeviceMemoryImporter* const importer_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Region>> regions_ ABSL_GUARDED_BY(mu_);  // registered ones
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  mutable absl::Mutex stats_mu_;
  int64_t live_regions_ ABSL_GUARDED_BY(stats_mu_) = 0;
  int64_t mapped_bytes_ ABSL_GUARDED_BY(stats_mu_) = 0;
};

// 128 random bits as 32 hex digits, from the kernel's generator.
std::string RandomToken();

}  // namespace attnd
