// The soak's load: `concurrency` callers, each in a loop picking a kind of call by weight (good,
// malformed, cancelled mid-flight, short deadline), until told to stop. Every outcome is tallied by
// kind and status and checked against what that kind may end with; what breaks a promise is kept
// as a message. Also what the SIGTERM rounds use, where UNAVAILABLE becomes acceptable.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/attnd/client.h"
#include "tests/reliability/soak/soak_workload.h"

namespace attnd::soak {

enum class CallKind { kGood, kMalformed, kCancelled, kShortDeadline };
inline constexpr CallKind kCallKinds[] = {CallKind::kGood, CallKind::kMalformed, CallKind::kCancelled,
                                          CallKind::kShortDeadline};
const char* CallKindName(CallKind kind);

struct LoadOptions {
  int concurrency = 64;
  // Relative weights of the kinds, in kCallKinds order.
  int weights[4] = {70, 10, 10, 10};
  // The daemon may be going away (SIGTERM rounds): UNAVAILABLE is then an acceptable end of any
  // call, and a caller that gets it waits a little before its next call.
  bool draining_allowed = false;
  uint64_t seed = 1;
};

struct LoadResult {
  std::map<CallKind, std::map<absl::StatusCode, int64_t>> outcomes;
  int64_t calls = 0;
  int64_t checked_ok = 0;        // good answers verified against the oracle
  int64_t broken_promises = 0;   // wrong answers and statuses a kind may not end with
  std::vector<std::string> examples;  // the first few broken promises
};

class SoakLoad {
 public:
  SoakLoad(Client* client, const Workload* workload, LoadOptions options);
  ~SoakLoad();  // Stop()

  void Start();
  // Asks callers to stop after their current call and waits up to `timeout` for them; returns the
  // number still inside a call then (calls that never came back).
  int Stop(absl::Duration timeout = absl::Seconds(60));
  LoadResult Result();
  int64_t calls() const { return calls_.load(); }

 private:
  void Caller(int index);
  absl::Status RunOne(CallKind kind, uint64_t pick, bool* checked);
  void Record(CallKind kind, const absl::Status& status, bool checked, const std::string& wrong);

  Client* const client_;
  const Workload* const workload_;
  const LoadOptions options_;
  std::atomic<bool> stop_{false};
  std::atomic<int> active_{0};
  std::atomic<int64_t> calls_{0};
  std::vector<std::thread> callers_;
  absl::Mutex mu_;
  LoadResult result_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attnd::soak
