// ResidentStore: tensors a Forward left in the daemon for its Backward (ForwardRequest.keep_resident).
//
// A training step sends q, k, v forward and receives out and lse; its backward would send all five
// back with grad_out. With a handle the daemon keeps them (the very buffers the forward decoded and
// wrote, no extra copy), and the backward sends grad_out alone.
//
// Every entry has a TTL, and the store a capacity (--resident_bytes) counted over every byte it
// still holds, including entries released while a backward is using them. A Put that would exceed
// the capacity first evicts the least recently used entries that no call is using; if that cannot
// make room the Put fails (RESOURCE_EXHAUSTED) and so does the forward that asked, naming
// keep_resident: a client never believes it holds a handle it does not.
// Entries leave by TTL, explicit release (ReleaseResident), after the backward that used them (unless
// it asked to keep them), or by eviction; a later lookup of such a handle is told which
// (FAILED_PRECONDITION naming the handle and the reason), an unknown one gets NOT_FOUND.
//
// Storage: the buffers come from a TensorAllocator (tensor_buffer.h); host memory today, device
// memory once a backend takes device buffers, without changes here.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/attention_problem.h"
#include "server/transport/tensor_buffer.h"

namespace attnd {

// What one forward leaves for its backward.
struct ResidentTensors {
  AttentionShape shape;
  AttentionOptions options;
  DType dtype = DType::kBF16;
  std::vector<int64_t> q_wire_shape;  // as the client sent them (dense or packed rank)
  std::vector<int64_t> kv_wire_shape;
  TensorBufferPtr q, k, v, out, lse;

  int64_t bytes() const;
};

struct ResidentHandleInfo {
  std::string handle;
  int64_t bytes = 0;
  absl::Duration ttl;
};

class ResidentStore {
 public:
  struct Options {
    int64_t capacity_bytes = int64_t{4} << 30;
    absl::Duration default_ttl = absl::Seconds(60);
    absl::Duration max_ttl = absl::Minutes(10);
    size_t remembered_ends = 4096;  // recently ended handles kept to explain a late lookup
  };

  explicit ResidentStore(Options options);
  ~ResidentStore();  // stops the expiry thread; buffers still in use are freed by their last user

  // ttl zero: the default; capped at max_ttl.
  absl::StatusOr<ResidentHandleInfo> Put(ResidentTensors tensors, absl::Duration ttl);
  // Holds the handle's tensors for one call. `field` names the request field in errors.
  absl::StatusOr<std::shared_ptr<const ResidentTensors>> Acquire(const std::string& handle, absl::string_view field);
  // Ends the handle (its memory goes once no call uses it). Returns the bytes it held.
  absl::StatusOr<int64_t> Release(const std::string& handle, absl::string_view reason);

  const Options& options() const { return options_; }
  int64_t handles() const;
  int64_t bytes() const;  // held, including released entries still in use

 private:
  struct Entry;
  using Clock = std::chrono::steady_clock;

  void EndLocked(std::map<std::string, std::shared_ptr<Entry>>::iterator it, std::string reason,
                 std::vector<std::shared_ptr<Entry>>* dropped) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLoop();
  void Freed(int64_t bytes);

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // least recently used first
  std::map<std::string, std::string> ended_ ABSL_GUARDED_BY(mu_);  // handle -> why it ended
  std::deque<std::string> ended_order_ ABSL_GUARDED_BY(mu_);
  int64_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread expiry_;
};

}  // namespace attnd
