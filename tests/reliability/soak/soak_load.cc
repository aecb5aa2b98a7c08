#include "tests/reliability/soak/soak_load.h"

#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace attnd::soak {
namespace {

constexpr size_t kMaxExamples = 20;
constexpr absl::Duration kGoodDeadline = absl::Seconds(30);

// What each kind of call may end with. OK always means a checked right answer.
bool Allowed(CallKind kind, absl::StatusCode code, bool draining) {
  if (draining && code == absl::StatusCode::kUnavailable) return true;
  switch (kind) {
    case CallKind::kGood: return code == absl::StatusCode::kOk;
    case CallKind::kMalformed: return false;  // checked against its own expected status
    case CallKind::kCancelled: return code == absl::StatusCode::kOk || code == absl::StatusCode::kCancelled;
    case CallKind::kShortDeadline:
      return code == absl::StatusCode::kOk || code == absl::StatusCode::kDeadlineExceeded;
  }
  return false;
}

}  // namespace

const char* CallKindName(CallKind kind) {
  switch (kind) {
    case CallKind::kGood: return "good";
    case CallKind::kMalformed: return "malformed";
    case CallKind::kCancelled: return "cancelled";
    case CallKind::kShortDeadline: return "short_deadline";
  }
  return "?";
}

SoakLoad::SoakLoad(Client* client, const Workload* workload, LoadOptions options)
    : client_(client), workload_(workload), options_(options) {}

SoakLoad::~SoakLoad() { Stop(); }

void SoakLoad::Start() {
  for (int i = 0; i < options_.concurrency; ++i) callers_.emplace_back([this, i] { Caller(i); });
}

int SoakLoad::Stop(absl::Duration timeout) {
  stop_ = true;
  const absl::Time give_up = absl::Now() + timeout;
  while (active_.load() > 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(10));
  const int stuck = active_.load();
  for (std::thread& t : callers_) {
    if (stuck == 0) {
      t.join();
    } else {
      t.detach();  // reported; the process is about to end
    }
  }
  callers_.clear();
  return stuck;
}

LoadResult SoakLoad::Result() {
  absl::MutexLock lock(&mu_);
  return result_;
}

void SoakLoad::Caller(int index) {
  std::mt19937_64 rng(options_.seed * 1000003 + index);
  int total_weight = 0;
  for (int w : options_.weights) total_weight += w;
  while (!stop_.load()) {
    int pick = static_cast<int>(rng() % total_weight);
    CallKind kind = CallKind::kGood;
    for (int k = 0; k < 4; ++k) {
      if (pick < options_.weights[k]) {
        kind = kCallKinds[k];
        break;
      }
      pick -= options_.weights[k];
    }
    active_.fetch_add(1);
    bool checked = false;
    const absl::Status status = RunOne(kind, rng(), &checked);
    active_.fetch_sub(1);
    calls_.fetch_add(1);
    if (options_.draining_allowed && status.code() == absl::StatusCode::kUnavailable) {
      absl::SleepFor(absl::Milliseconds(5));  // the daemon is going away: do not spin on it
    }
  }
}

absl::Status SoakLoad::RunOne(CallKind kind, uint64_t pick, bool* checked) {
  const std::vector<GoodProblem>& good = workload_->good;
  if (kind == CallKind::kMalformed) {
    const MalformedRequest& bad = workload_->malformed[pick % workload_->malformed.size()];
    const CallOptions call{.timeout = kGoodDeadline};
    const absl::Status status = bad.forward != nullptr ? client_->Forward(*bad.forward, call).status()
                                                       : client_->Backward(*bad.backward, call).status();
    const bool expected = status.code() == bad.code && absl::StrContains(status.message(), bad.names);
    const bool tolerated = options_.draining_allowed && status.code() == absl::StatusCode::kUnavailable;
    Record(kind, status, false,
           expected || tolerated ? ""
                                 : absl::StrCat("malformed ", bad.name, ": wanted ", absl::StatusCodeToString(bad.code),
                                                " naming '", bad.names, "', got ", status.ToString()));
    return status;
  }

  const GoodProblem& p = good[pick % good.size()];
  CallOptions call{.timeout = kGoodDeadline};
  if (kind == CallKind::kShortDeadline) call.timeout = absl::Microseconds(500 + (pick >> 8) % 4500);  // 0.5-5 ms
  absl::Status status;
  std::string wrong;
  auto check = [&](auto response, auto checker) {
    status = response.status();
    if (!status.ok()) return;
    wrong = checker(p, *response);
    *checked = wrong.empty();
  };
  if (kind == CallKind::kCancelled) {
    // Cancelled after 0-5 ms: before, during or after the daemon computes it.
    absl::Notification done;
    absl::StatusOr<v1::ForwardResponse> fr;
    absl::StatusOr<v1::BackwardResponse> br;
    std::shared_ptr<PendingCall> pending =
        p.backward ? client_->BackwardAsync(p.backward_request, [&](absl::StatusOr<v1::BackwardResponse> r) { br = std::move(r); done.Notify(); }, call)
                   : client_->ForwardAsync(p.forward, [&](absl::StatusOr<v1::ForwardResponse> r) { fr = std::move(r); done.Notify(); }, call);
    absl::SleepFor(absl::Microseconds((pick >> 8) % 5000));
    pending->Cancel();
    done.WaitForNotification();
    if (p.backward) check(br, CheckBackward); else check(fr, CheckForward);
  } else if (p.backward) {
    check(client_->Backward(*p.backward_request, call), CheckBackward);
  } else {
    check(client_->Forward(*p.forward, call), CheckForward);
  }
  if (wrong.empty() && !Allowed(kind, status.code(), options_.draining_allowed)) {
    wrong = absl::StrCat(CallKindName(kind), " ", p.name, " may not end ", status.ToString());
  }
  if (!wrong.empty()) wrong = absl::StrCat(p.name, ": ", wrong);
  Record(kind, status, *checked, wrong);
  return status;
}

void SoakLoad::Record(CallKind kind, const absl::Status& status, bool checked, const std::string& wrong) {
  absl::MutexLock lock(&mu_);
  ++result_.outcomes[kind][status.code()];
  ++result_.calls;
  if (checked) ++result_.checked_ok;
  if (!wrong.empty()) {
    ++result_.broken_promises;
    if (result_.examples.size() < kMaxExamples) result_.examples.push_back(wrong);
  }
}

}  // namespace attnd::soak
