#include "server/transport/resident_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "server/transport/region_registry.h"

namespace attnd {

int64_t ResidentTensors::bytes() const {
  int64_t n = 0;
  for (const TensorBufferPtr* b : {&q, &k, &v, &out, &lse}) {
    if (*b) n += static_cast<int64_t>((*b)->size());
  }
  return n;
}

// An entry: the tensors and their accounting. The store's bytes go down when the last holder (the
// store's map, or a call still using a released entry) lets go.
struct ResidentStore::Entry {
  Entry(ResidentStore* store, ResidentTensors t, Clock::time_point expires)
      : store(store), tensors(std::move(t)), bytes(tensors.bytes()), expires(expires) {}
  ~Entry() { store->Freed(bytes); }
  ResidentStore* store;
  ResidentTensors tensors;
  const int64_t bytes;
  Clock::time_point expires;
  std::list<std::string>::iterator lru;
};

ResidentStore::ResidentStore(Options options) : options_(options) {
  expiry_ = std::thread([this] { ExpireLoop(); });
}

ResidentStore::~ResidentStore() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  expiry_.join();
  std::map<std::string, std::shared_ptr<Entry>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries.swap(entries_);
  }
}

void ResidentStore::Freed(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  held_bytes_ -= bytes;
}

void ResidentStore::EndLocked(std::map<std::string, std::shared_ptr<Entry>>::iterator it, std::string reason,
                              std::vector<std::shared_ptr<Entry>>* dropped) {
  lru_.erase(it->second->lru);
  ended_[it->first] = std::move(reason);
  ended_order_.push_back(it->first);
  while (ended_order_.size() > options_.remembered_ends) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
  dropped->push_back(std::move(it->second));  // freed outside the lock (~Entry takes it)
  entries_.erase(it);
}

absl::StatusOr<ResidentHandleInfo> ResidentStore::Put(ResidentTensors tensors, absl::Duration ttl) {
  if (ttl <= absl::ZeroDuration()) ttl = options_.default_ttl;
  ttl = std::min(ttl, options_.max_ttl);
  const int64_t bytes = tensors.bytes();
  std::vector<std::shared_ptr<Entry>> dropped;
  absl::MutexLock lock(&mu_);
  if (bytes > options_.capacity_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("keep_resident: the call's ", bytes, " bytes exceed the resident "
                                                     "capacity of ", options_.capacity_bytes,
                                                     " bytes (--resident_bytes)"));
  }
  // Evict least recently used entries that no call holds until the new one fits. Evicted entries
  // are freed when `dropped` goes, after the lock: count them as gone already.
  int64_t evicted = 0;
  for (auto name = lru_.begin(); held_bytes_ - evicted + bytes > options_.capacity_bytes && name != lru_.end();) {
    auto it = entries_.find(*name++);
    if (it->second.use_count() > 1) continue;  // a backward is using it
    evicted += it->second->bytes;
    EndLocked(it, absl::StrCat("evicted under memory pressure (--resident_bytes = ", options_.capacity_bytes,
                               " bytes)"), &dropped);
  }
  if (held_bytes_ - evicted + bytes > options_.capacity_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "keep_resident: ", bytes, " bytes do not fit: ", held_bytes_ - evicted, " of ", options_.capacity_bytes,
        " resident bytes are held by calls in progress; retry later"));
  }
  ResidentHandleInfo info;
  info.handle = RandomToken();
  info.bytes = bytes;
  info.ttl = ttl;
  auto entry = std::make_shared<Entry>(this, std::move(tensors), Clock::now() + absl::ToChronoNanoseconds(ttl));
  held_bytes_ += bytes;
  entry->lru = lru_.insert(lru_.end(), info.handle);
  entries_.emplace(info.handle, std::move(entry));
  return info;
}

absl::StatusOr<std::shared_ptr<const ResidentTensors>> ResidentStore::Acquire(const std::string& handle,
                                                                              absl::string_view field) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end() || it->second->expires <= Clock::now()) {
    if (auto ended = ended_.find(handle); ended != ended_.end()) {
      return absl::FailedPreconditionError(absl::StrCat(field, ": handle ", handle, " ", ended->second,
                                                        "; send the full request (q, k, v, out, lse)"));
    }
    if (it != entries_.end()) {
      return absl::FailedPreconditionError(absl::StrCat(field, ": handle ", handle, " expired; send the full "
                                                        "request (q, k, v, out, lse)"));
    }
    return absl::NotFoundError(absl::StrCat(field, ": no resident handle '", handle, "'"));
  }
  lru_.splice(lru_.end(), lru_, it->second->lru);  // most recently used now
  std::shared_ptr<Entry> entry = it->second;
  return std::shared_ptr<const ResidentTensors>(entry, &entry->tensors);
}

absl::StatusOr<int64_t> ResidentStore::Release(const std::string& handle, absl::string_view reason) {
  std::vector<std::shared_ptr<Entry>> dropped;
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) {
    if (auto ended = ended_.find(handle); ended != ended_.end()) {
      return absl::FailedPreconditionError(absl::StrCat("handle: ", handle, " already ", ended->second));
    }
    return absl::NotFoundError(absl::StrCat("handle: no resident handle '", handle, "'"));
  }
  const int64_t bytes = it->second->bytes;
  EndLocked(it, std::string(reason), &dropped);
  return bytes;
}

void ResidentStore::ExpireLoop() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    std::vector<std::shared_ptr<Entry>> dropped;
    const Clock::time_point now = Clock::now();
    Clock::time_point next = now + std::chrono::seconds(1);
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto current = it++;
      if (current->second->expires <= now) {
        EndLocked(current, "expired (its TTL passed)", &dropped);
      } else {
        next = std::min(next, current->second->expires);
      }
    }
    if (!dropped.empty()) {
      mu_.Unlock();
      dropped.clear();  // ~Entry takes mu_
      mu_.Lock();
      continue;
    }
    mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::FromChrono(next - now));
  }
}

int64_t ResidentStore::handles() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(entries_.size());
}

int64_t ResidentStore::bytes() const {
  absl::MutexLock lock(&mu_);
  return held_bytes_;
}

}  // namespace attnd
