#include "server/engine/dynamic_batcher.h"

#include <algorithm>
#include <exception>
#include <iterator>
#include <limits>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/engine/batch_packing.h"

namespace attnd::engine {
namespace {

absl::Time ToAbslTime(std::chrono::system_clock::time_point t) {
  if (t == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(t);
}

bool Raised(const std::atomic<bool>* flag) { return flag != nullptr && flag->load(std::memory_order_acquire); }

absl::Status ExpiredStatus() {
  return absl::DeadlineExceededError("deadline passed while the call waited in the batch queue; it was not computed");
}
absl::Status CancelledStatus() {
  return absl::CancelledError("call cancelled while it waited in the batch queue; it was not computed");
}

// Backends return absl::Status; should one throw anyway (or packing run out of host memory), fail
// the batch, not the daemon.
template <typename F>
absl::Status Guarded(F&& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of host memory while computing a batch");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("backend failure: ", e.what()));
  }
}

}  // namespace

struct DynamicBatcher::Call {
  Ticket ticket = 0;
  BatchKey key;
  ForwardArgs forward;    // key.direction == kForward
  BackwardArgs backward;  // key.direction == kBackward
  int64_t q_rows = 0;
  int64_t k_rows = 0;
  bool alone = false;     // oversized or not packable: never shares a batch
  absl::Time submitted;
  absl::Time deadline;
  const std::atomic<bool>* cancelled = nullptr;
  absl::Status dropped;   // why it was dropped unrun, when it was
  double queued_s = 0;    // submit -> taken by an executor
  Completion done;
};

struct DynamicBatcher::Group {
  std::list<Call>::iterator head;  // oldest call of the group
  int64_t q_rows = 0;
  int64_t k_rows = 0;
  int count = 0;
};

struct DynamicBatcher::Packers {
  Packers(Backend* host_memory, int64_t max_rows) : forward(host_memory, max_rows), backward(host_memory, max_rows) {}
  ForwardPacker forward;
  BackwardPacker backward;
  std::vector<const ForwardArgs*> forward_calls;
  std::vector<const BackwardArgs*> backward_calls;
};

absl::Status ValidateBatcherOptions(const BatcherOptions& o) {
  if (o.max_queue_delay < absl::ZeroDuration() || o.max_queue_delay == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_delay ", absl::FormatDuration(o.max_queue_delay), " must be finite and >= 0"));
  }
  if (o.max_batch_tokens < 1 || o.max_batch_tokens > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_tokens ", o.max_batch_tokens, " must be in 1..", std::numeric_limits<int32_t>::max()));
  }
  if (o.max_batch_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_batch_requests ", o.max_batch_requests, " must be >= 1"));
  }
  if (o.max_queue_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_queue_requests ", o.max_queue_requests, " must be >= 1"));
  }
  if (o.executor_threads < 1 || o.executor_threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("executor_threads ", o.executor_threads, " must be in 1..1024"));
  }
  return absl::OkStatus();
}

namespace {
BatcherOptions Clamped(BatcherOptions o) {
  if (o.max_queue_delay < absl::ZeroDuration()) o.max_queue_delay = absl::ZeroDuration();
  if (o.max_queue_delay == absl::InfiniteDuration()) o.max_queue_delay = absl::Seconds(1);
  o.max_batch_tokens = std::clamp<int64_t>(o.max_batch_tokens, 1, std::numeric_limits<int32_t>::max());
  o.max_batch_requests = std::max(o.max_batch_requests, 1);
  o.max_queue_requests = std::max(o.max_queue_requests, 1);
  o.executor_threads = std::clamp(o.executor_threads, 1, 1024);
  return o;
}
}  // namespace

DynamicBatcher::DynamicBatcher(Backend* backend, const BatcherOptions& options)
    : backend_(backend), options_(Clamped(options)) {
  for (int i = 0; i < options_.executor_threads; ++i) executors_.emplace_back([this] { ExecutorLoop(); });
}

DynamicBatcher::~DynamicBatcher() { Stop(); }

void DynamicBatcher::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_.SignalAll();
  }
  for (std::thread& t : executors_) t.join();
  executors_.clear();
  absl::MutexLock lock(&mu_);  // calls computing on their callers' threads finish too
  mu_.Await(absl::Condition(+[](int* n) { return *n == 0; }, &computing_));
}

DynamicBatcher::Ticket DynamicBatcher::SubmitForward(const ForwardArgs& args, Completion done) {
  Call call;
  call.key = MakeBatchKey(Direction::kForward, *args.shape, args.options, args.dtype);
  call.forward = args;
  call.alone = !IsPackable(args);
  call.q_rows = args.shape->total_q;
  call.k_rows = args.shape->total_k;
  call.deadline = ToAbslTime(args.control.deadline);
  call.cancelled = args.control.cancelled;
  call.done = std::move(done);
  return Submit(std::move(call));
}

DynamicBatcher::Ticket DynamicBatcher::SubmitBackward(const BackwardArgs& args, Completion done) {
  Call call;
  call.key = MakeBatchKey(Direction::kBackward, *args.shape, args.options, args.dtype);
  call.backward = args;
  call.alone = !IsPackable(args) || args.options.deterministic || options_.all_backward_deterministic;
  call.q_rows = args.shape->total_q;
  call.k_rows = args.shape->total_k;
  call.deadline = ToAbslTime(args.control.deadline);
  call.cancelled = args.control.cancelled;
  call.done = std::move(done);
  return Submit(std::move(call));
}

DynamicBatcher::Ticket DynamicBatcher::Submit(Call&& call) {
  if (call.q_rows > options_.max_batch_tokens || call.k_rows > options_.max_batch_tokens) call.alone = true;
  const absl::Time now = absl::Now();
  call.submitted = now;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.submitted;
    if (stopping_) {
      ++stats_.rejected_stopped;
      refused = absl::UnavailableError("the batcher is shutting down; retry on another server");
    } else if (Raised(call.cancelled)) {
      ++stats_.cancelled;
      refused = absl::CancelledError("call cancelled before it was queued; it was not computed");
    } else if (call.deadline <= now) {
      ++stats_.expired;
      refused = absl::DeadlineExceededError("deadline passed before the call was queued; it was not computed");
    } else if (queue_.size() >= static_cast<size_t>(options_.max_queue_requests)) {
      ++stats_.rejected_queue_full;
      refused = absl::ResourceExhaustedError(
          absl::StrCat("server busy: ", queue_.size(), " calls already wait in the batch queue (max_queue_requests ",
                       options_.max_queue_requests, "); retry later"));
    } else if (options_.lone_calls_on_caller && queue_.empty() && options_.max_queue_delay == absl::ZeroDuration() &&
               computing_ < options_.executor_threads) {
      ++computing_;  // this thread takes an executor's slot (see "Lone calls")
      call.ticket = next_ticket_++;
      stats_.queue_wait_us.Add(0);
      CountBatch(1, call.q_rows, call.alone);
    } else {
      const Ticket ticket = next_ticket_++;
      call.ticket = ticket;
      queue_.push_back(std::move(call));
      stats_.queue_depth = static_cast<int64_t>(queue_.size());
      stats_.peak_queue_depth = std::max(stats_.peak_queue_depth, stats_.queue_depth);
      wake_.Signal();
      return ticket;
    }
  }
  if (refused.ok()) {  // computed here, as an executor would have
    std::list<Call> batch;
    batch.push_back(std::move(call));
    RunBatch(batch, nullptr);  // a batch of one is never packed
    return 0;
  }
  std::move(call.done)(std::move(refused));
  return 0;
}

void DynamicBatcher::CountBatch(int calls, int64_t q_rows, bool alone) {
  ++stats_.batches_run;
  if (calls > 1) ++stats_.packed_batches;
  if (alone) ++stats_.oversized_requests;
  stats_.requests_per_batch.Add(calls);
  stats_.tokens_per_batch.Add(q_rows);
  stats_.running += calls;
}

bool DynamicBatcher::Withdraw(Ticket ticket, absl::Status status) {
  Completion done;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(queue_.begin(), queue_.end(), [&](const Call& c) { return c.ticket == ticket; });
    if (ticket == 0 || it == queue_.end()) return false;
    done = std::move(it->done);
    queue_.erase(it);
    ++stats_.withdrawn;
    stats_.queue_depth = static_cast<int64_t>(queue_.size());
  }
  std::move(done)(std::move(status));
  return true;
}

BatcherStats DynamicBatcher::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool DynamicBatcher::NextBatch(std::list<Call>& batch, std::list<Call>& dropped) {
  const int64_t cap = options_.max_batch_tokens;
  const int max_requests = options_.max_batch_requests;
  for (;;) {
    if (stopping_ && queue_.empty()) return false;
    const absl::Time now = absl::Now();
    absl::Time wake = absl::InfiniteFuture();

    // 1. Drop calls nobody waits for any more; group the others by key, oldest first.
    groups_.clear();
    for (auto it = queue_.begin(); it != queue_.end();) {
      auto next = std::next(it);
      if (it->deadline <= now || Raised(it->cancelled)) {
        const bool expired = it->deadline <= now;
        it->dropped = expired ? ExpiredStatus() : CancelledStatus();
        ++(expired ? stats_.expired : stats_.cancelled);
        dropped.splice(dropped.end(), queue_, it);
        it = next;
        continue;
      }
      wake = std::min(wake, it->deadline);
      Group* group = nullptr;
      if (!it->alone) {
        for (Group& g : groups_) {
          if (!g.head->alone && g.head->key == it->key) {
            group = &g;
            break;
          }
        }
      }
      if (group == nullptr) group = &groups_.emplace_back(Group{it});
      group->q_rows += it->q_rows;
      group->k_rows += it->k_rows;
      ++group->count;
      it = next;
    }
    stats_.queue_depth = static_cast<int64_t>(queue_.size());
    if (!dropped.empty()) return true;  // complete them now, outside the lock, then look again

    // 2. The oldest ready group (while a batch slot is free: callers may hold some, see "Lone calls").
    const Group* ready = nullptr;
    const bool slot_free = computing_ < options_.executor_threads;
    for (const Group& g : groups_) {
      if (!slot_free) break;  // RunBatch signals when one frees
      const bool full = g.q_rows >= cap || g.k_rows >= cap || g.count >= max_requests;
      const absl::Time due = g.head->submitted + options_.max_queue_delay;
      if (g.head->alone || full || due <= now || stopping_) {
        ready = &g;
        break;
      }
      wake = std::min(wake, due);
    }

    // 3. Its calls, in arrival order, while they fit.
    if (ready != nullptr) {
      const bool alone = ready->head->alone;
      const BatchKey key = ready->head->key;
      int64_t q_rows = 0, k_rows = 0;
      int count = 0;
      for (auto it = ready->head; it != queue_.end();) {
        auto next = std::next(it);
        const bool take = count == 0 || (!alone && !it->alone && it->key == key && count < max_requests &&
                                          q_rows + it->q_rows <= cap && k_rows + it->k_rows <= cap);
        if (take) {
          q_rows += it->q_rows;
          k_rows += it->k_rows;
          ++count;
          it->queued_s = absl::ToDoubleSeconds(now - it->submitted);
          stats_.queue_wait_us.Add(absl::ToInt64Microseconds(now - it->submitted));
          batch.splice(batch.end(), queue_, it);
          if (alone) break;
        }
        it = next;
      }
      ++computing_;
      CountBatch(count, q_rows, alone);
      stats_.queue_depth = static_cast<int64_t>(queue_.size());
      if (!queue_.empty()) wake_.Signal();  // another idle executor may have work too
      return true;
    }

    if (wake == absl::InfiniteFuture()) {
      wake_.Wait(&mu_);
    } else {
      wake_.WaitWithDeadline(&mu_, wake);
    }
  }
}

void DynamicBatcher::ExecutorLoop() {
  Packers packers(backend_, options_.max_batch_tokens);
  std::list<Call> batch, dropped;
  for (;;) {
    bool more;
    {
      absl::MutexLock lock(&mu_);
      more = NextBatch(batch, dropped);
    }
    for (Call& call : dropped) std::move(call.done)(std::move(call.dropped));
    dropped.clear();
    if (!batch.empty()) RunBatch(batch, &packers);
    batch.clear();
    if (!more) return;
  }
}

int64_t DynamicBatcher::ReserveRows(const Call& call) const {
  const int64_t cap = options_.max_batch_tokens;
  if (options_.max_batch_requests <= 1 || call.q_rows > cap || call.k_rows > cap) return 0;
  return cap;
}

absl::Status DynamicBatcher::RunAlone(const Call& call) {
  CallTimings* timings = call.key.direction == Direction::kForward ? call.forward.timings : call.backward.timings;
  if (timings != nullptr) {
    *timings = CallTimings{};
    timings->queue_s = call.queued_s;
    timings->batch_requests = 1;
  }
  // Sized like the packed calls: the same device blocks serve a call alone and a batch.
  const int64_t reserve = ReserveRows(call);
  return Guarded([&] {
    if (call.key.direction == Direction::kForward) {
      ForwardArgs args = call.forward;
      args.reserve_rows = std::max(args.reserve_rows, reserve);
      return backend_->Forward(args);
    }
    BackwardArgs args = call.backward;
    args.reserve_rows = std::max(args.reserve_rows, reserve);
    return backend_->Backward(args);
  });
}

namespace {

// The packed launch's timings, as seen by one of its callers: its own wait in the queue plus the
// launch's wait for a stream, and the launch's stages, the host-side gather counted with H2D and
// the scatter with D2H (stages the backend has: the CPU backend has neither).
void ShareTimings(const CallTimings& launch, double queued_s, int requests, double gather_s, double scatter_s,
                  CallTimings* caller) {
  if (caller == nullptr) return;
  *caller = launch;
  caller->queue_s = queued_s + std::max(launch.queue_s, 0.0);
  if (launch.h2d_s >= 0) caller->h2d_s += gather_s;
  if (launch.d2h_s >= 0) caller->d2h_s += scatter_s;
  caller->batch_requests = requests;
}

double SecondsSince(absl::Time t) { return absl::ToDoubleSeconds(absl::Now() - t); }

}  // namespace

absl::Status DynamicBatcher::RunPacked(const std::list<Call>& batch, Packers& packers) {
  // The same steps for either direction: gather, one launch, scatter, each caller's timings.
  auto run = [&](auto& packer, auto& calls, auto Call::*args, auto launch) -> absl::Status {
    CallTimings timings;
    absl::Time start = absl::Now();
    calls.clear();
    for (const Call& c : batch) calls.push_back(&(c.*args));
    auto packed = packer.Pack(calls);
    packed.timings = &timings;
    packed.reserve_rows = options_.max_batch_tokens;  // every packed call of a key: one block size
    const double gather_s = SecondsSince(start);
    absl::Status status = launch(packed);
    if (!status.ok()) return status;
    start = absl::Now();
    packer.Scatter(calls);
    const double scatter_s = SecondsSince(start);
    const int n = static_cast<int>(batch.size());
    for (const Call& c : batch) ShareTimings(timings, c.queued_s, n, gather_s, scatter_s, (c.*args).timings);
    return status;
  };
  return Guarded([&]() -> absl::Status {
    if (batch.front().key.direction == Direction::kForward) {
      return run(packers.forward, packers.forward_calls, &Call::forward,
                 [&](const ForwardArgs& a) { return backend_->Forward(a); });
    }
    return run(packers.backward, packers.backward_calls, &Call::backward,
               [&](const BackwardArgs& a) { return backend_->Backward(a); });
  });
}

void DynamicBatcher::RunBatch(std::list<Call>& batch, Packers* packers) {
  std::vector<absl::Status> statuses;
  statuses.reserve(batch.size());
  int64_t retried = 0;
  if (batch.size() == 1) {
    statuses.push_back(RunAlone(batch.front()));  // straight on the caller's buffers
  } else {
    const absl::Status packed = RunPacked(batch, *packers);
    for (const Call& call : batch) {
      if (packed.ok()) {
        statuses.push_back(packed);
      } else {  // one bad call must not fail its neighbours: each gets its own status
        statuses.push_back(RunAlone(call));
        ++retried;
      }
    }
  }
  {
    absl::MutexLock lock(&mu_);
    stats_.retried_alone += retried;
    stats_.running -= static_cast<int64_t>(batch.size());
    --computing_;
    if (!queue_.empty()) wake_.Signal();  // the slot is free again
    for (const absl::Status& s : statuses) ++(s.ok() ? stats_.completed_ok : stats_.completed_error);
  }
  size_t i = 0;
  for (Call& call : batch) std::move(call.done)(std::move(statuses[i++]));
}

}  // namespace attnd::engine
