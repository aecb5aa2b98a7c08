#include "server/transport/region_registry.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace attnd {
namespace {

// A memfd mapped MAP_SHARED into the daemon; the pin (if any) goes before the mapping.
class MappedSharedMemory final : public RegionMemory {
 public:
  MappedSharedMemory(void* base, size_t size) : base_(base), size_(size) {}
  ~MappedSharedMemory() override {
    pin_.reset();
    munmap(base_, size_);
  }
  void set_pin(std::shared_ptr<void> pin) { pin_ = std::move(pin); }
  void* base() const override { return base_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return pin_ ? MemoryKind::kPinnedHost : MemoryKind::kHost; }

 private:
  void* base_;
  size_t size_;
  std::shared_ptr<void> pin_;
};

absl::Status NotFound(absl::string_view field, absl::string_view what) {
  return absl::NotFoundError(absl::StrCat(field, ": ", what));
}

}  // namespace

std::string RandomToken() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

absl::string_view RegionKindName(RegionKind kind) {
  return kind == RegionKind::kCudaIpc ? "cuda_ipc" : "shared_memory";
}

struct RegionRegistry::Session {
  PeerIdentity peer;
  std::map<std::string, int> parked;  // fd token -> descriptor
  std::vector<std::string> regions;   // ids of its registered regions
};

// A registered region. Destroyed (memory released) when it is unregistered or its session closes
// and no call holds a lease on it any more.
struct RegionRegistry::Region {
  Region(RegionRegistry* registry, std::string id, std::string key, std::string session, std::string label,
         RegionKind kind, std::unique_ptr<RegionMemory> memory)
      : registry(registry), id(std::move(id)), key(std::move(key)), session(std::move(session)),
        label(std::move(label)), kind(kind), memory(std::move(memory)) {
    registry->Mapped(static_cast<int64_t>(this->memory->size()), +1);
  }
  ~Region() {
    const int64_t bytes = static_cast<int64_t>(memory->size());
    memory.reset();
    registry->Mapped(bytes, -1);
  }
  RegionRegistry* registry;
  const std::string id, key, session, label;
  const RegionKind kind;
  std::unique_ptr<RegionMemory> memory;
  std::atomic<int> calls{0};  // leases held now (one per tensor span of a running call)
};

RegionRegistry::RegionRegistry(Limits limits, HostMemoryPinner* pinner, DeviceMemoryImporter* importer)
    : limits_(limits), pinner_(pinner), importer_(importer) {}

RegionRegistry::~RegionRegistry() {
  absl::MutexLock lock(&mu_);
  for (auto& [token, session] : sessions_) {
    for (auto& [fd_token, fd] : session->parked) close(fd);
  }
  regions_.clear();
}

void RegionRegistry::Mapped(int64_t bytes, int delta) {
  absl::MutexLock lock(&stats_mu_);
  live_regions_ += delta;
  mapped_bytes_ += delta * bytes;
}

absl::StatusOr<std::string> RegionRegistry::OpenSession(const PeerIdentity& peer) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int>(sessions_.size()) >= limits_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat("region socket: ", sessions_.size(),
                                                     " sessions are open, the most the daemon keeps; retry later"));
  }
  std::string token = RandomToken();
  auto session = std::make_unique<Session>();
  session->peer = peer;
  sessions_.emplace(token, std::move(session));
  return token;
}

void RegionRegistry::CloseSession(const std::string& token) {
  std::vector<std::shared_ptr<Region>> released;  // destroyed outside the lock
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(token);
    if (it == sessions_.end()) return;
    for (auto& [fd_token, fd] : it->second->parked) close(fd);
    for (const std::string& id : it->second->regions) {
      auto r = regions_.find(id);
      if (r == regions_.end()) continue;
      released.push_back(std::move(r->second));
      regions_.erase(r);
    }
    sessions_.erase(it);
  }
}

absl::StatusOr<std::string> RegionRegistry::ParkFd(const std::string& session_token, int fd) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session_token);
  if (it == sessions_.end()) {
    close(fd);
    return NotFound("session", "unknown or closed");
  }
  Session& session = *it->second;
  if (static_cast<int>(session.parked.size()) >= limits_.max_parked_fds_per_session) {
    close(fd);
    return absl::ResourceExhaustedError(absl::StrCat("region socket: ", session.parked.size(),
                                                     " descriptors wait for RegisterSharedMemory already"));
  }
  std::string token = RandomToken();
  session.parked.emplace(token, fd);
  return token;
}

absl::StatusOr<RegisteredRegion> RegionRegistry::Add(const std::string& session_token,
                                                     std::unique_ptr<RegionMemory> memory, RegionKind kind,
                                                     const std::string& label) {
  auto it = sessions_.find(session_token);
  if (it == sessions_.end()) return NotFound("session", "closed while the region was being registered");
  RegisteredRegion out;
  out.region_id = absl::StrCat(kind == RegionKind::kCudaIpc ? "cuda-" : "shm-", next_id_++);
  out.key = RandomToken();
  out.size = memory->size();
  out.kind = kind;
  regions_.emplace(out.region_id, std::make_shared<Region>(this, out.region_id, out.key, session_token, label, kind,
                                                           std::move(memory)));
  it->second->regions.push_back(out.region_id);
  return out;
}

absl::StatusOr<RegisteredRegion> RegionRegistry::RegisterSharedMemory(const std::string& session_token,
                                                                      const std::string& fd_token, uint64_t size,
                                                                      const std::string& label) {
  int fd = -1;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_token);
    if (it == sessions_.end()) return NotFound("session", "unknown or closed (open one on the region socket)");
    Session& session = *it->second;
    if (static_cast<int>(session.regions.size()) >= limits_.max_regions_per_session) {
      return absl::ResourceExhaustedError(absl::StrCat("session: ", session.regions.size(),
                                                       " regions registered, the most one session may hold"));
    }
    auto parked = session.parked.find(fd_token);
    if (parked == session.parked.end()) {
      return NotFound("fd_token", "unknown (each descriptor passed on the region socket registers once)");
    }
    fd = parked->second;
    session.parked.erase(parked);
  }
  // The descriptor is ours now: it is closed on every path (the mapping keeps the memory).
  struct CloseFd {
    int fd;
    ~CloseFd() { close(fd); }
  } close_fd{fd};
  if (size == 0) return absl::InvalidArgumentError("size: must be at least 1 byte");
  struct stat st{};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError("fd_token: the descriptor is not a memory file (create it with memfd_create)");
  }
  if (size > static_cast<uint64_t>(st.st_size)) {
    return absl::InvalidArgumentError(absl::StrCat("size: ", size, " bytes exceed the file's ", st.st_size));
  }
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return absl::FailedPreconditionError(
        "fd_token: the memory file is not sealed against shrinking; create it with memfd_create(..., "
        "MFD_ALLOW_SEALING) and seal it with fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) (a region that shrank under "
        "the daemon would fault it)");
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(absl::StrCat("fd_token: the daemon may not map the memory read-write (",
                                                      std::strerror(err), "); pass a descriptor opened O_RDWR, "
                                                      "not sealed against writes"));
    }
    return absl::ResourceExhaustedError(absl::StrCat("size: cannot map ", size, " bytes: ", std::strerror(err)));
  }
  auto memory = std::make_unique<MappedSharedMemory>(base, size);
  if (pinner_ != nullptr) {
    // Pinned memory is copied to the GPU by DMA; unpinned it still works, through staging.
    absl::StatusOr<std::shared_ptr<void>> pin = pinner_->Pin(base, size);
    if (pin.ok()) memory->set_pin(*std::move(pin));
  }
  absl::MutexLock lock(&mu_);
  return Add(session_token, std::move(memory), RegionKind::kSharedMemory, label);
}

absl::StatusOr<RegisteredRegion> RegionRegistry::RegisterCudaMemory(const std::string& session_token,
                                                                    absl::string_view ipc_handle, uint64_t size,
                                                                    int device, const std::string& label) {
  if (importer_ == nullptr) {
    return absl::UnimplementedError("RegisterCudaMemory: this daemon has no CUDA backend that takes device memory");
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_token);
    if (it == sessions_.end()) return NotFound("session", "unknown or closed (open one on the region socket)");
    if (static_cast<int>(it->second->regions.size()) >= limits_.max_regions_per_session) {
      return absl::ResourceExhaustedError(absl::StrCat("session: ", it->second->regions.size(),
                                                       " regions registered, the most one session may hold"));
    }
  }
  if (size == 0) return absl::InvalidArgumentError("size: must be at least 1 byte");
  absl::StatusOr<std::unique_ptr<RegionMemory>> memory = importer_->Import(ipc_handle, size, device);
  if (!memory.ok()) return memory.status();
  absl::MutexLock lock(&mu_);
  return Add(session_token, *std::move(memory), RegionKind::kCudaIpc, label);
}

absl::Status RegionRegistry::Unregister(const std::string& region_id, const std::string& key) {
  std::shared_ptr<Region> released;
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(region_id);
  if (it == regions_.end()) {
    return NotFound("region_id", absl::StrCat("no region '", region_id, "' (never registered, already "
                                              "unregistered, or its session closed)"));
  }
  Region& region = *it->second;
  if (key != region.key) return absl::PermissionDeniedError(absl::StrCat("key: wrong key for region ", region_id));
  if (const int leases = region.calls.load(); leases > 0) {
    return absl::FailedPreconditionError(absl::StrCat("region_id: region ", region_id, " is in use by running calls (",
                                                      leases, " tensor span(s)); unregister it once they finish"));
  }
  if (auto s = sessions_.find(region.session); s != sessions_.end()) {
    std::erase(s->second->regions, region_id);
  }
  released = std::move(it->second);
  regions_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<ResolvedSpan> RegionRegistry::Resolve(const std::string& region_id, const std::string& key,
                                                     uint64_t offset, uint64_t size, absl::string_view field) {
  std::shared_ptr<Region> region;
  {
    absl::MutexLock lock(&mu_);
    auto it = regions_.find(region_id);
    if (it == regions_.end()) {
      return NotFound(absl::StrCat(field, ".region_id"),
                      absl::StrCat("no region '", region_id,
                                   "' (never registered, unregistered, or its client's session closed)"));
    }
    region = it->second;
    if (key != region->key) {
      return absl::PermissionDeniedError(absl::StrCat(field, ".key: wrong key for region ", region_id));
    }
    region->calls.fetch_add(1);
  }
  // The lease: one call's hold, released when the call drops it.
  std::shared_ptr<const void> lease(region.get(), [region](const void*) { region->calls.fetch_sub(1); });
  const uint64_t region_size = region->memory->size();
  if (offset > region_size || size > region_size - offset) {
    return absl::OutOfRangeError(absl::StrCat(field, ": bytes [", offset, ", ", offset + size, ") lie outside region ",
                                              region_id, " of ", region_size, " bytes"));
  }
  ResolvedSpan span;
  span.data = static_cast<uint8_t*>(region->memory->base()) + offset;
  span.size = size;
  span.kind = region->memory->kind();
  span.device = region->memory->device();
  span.region_id = region_id;
  span.offset = offset;
  span.lease = std::move(lease);
  return span;
}

int64_t RegionRegistry::sessions() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

int64_t RegionRegistry::regions() const {
  absl::MutexLock lock(&stats_mu_);
  return live_regions_;
}

int64_t RegionRegistry::mapped_bytes() const {
  absl::MutexLock lock(&stats_mu_);
  return mapped_bytes_;
}

int64_t RegionRegistry::parked_fds() const {
  absl::MutexLock lock(&mu_);
  int64_t n = 0;
  for (const auto& [token, session] : sessions_) n += static_cast<int64_t>(session->parked.size());
  return n;
}

}  // namespace attnd
