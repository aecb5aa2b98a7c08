// ThreadSanitizer annotations for Debian's uninstrumented Abseil Mutex, CondVar and Notification.
//
// Why: the TSan build links Debian's libabsl_synchronization.so, compiled without
// -fsanitize=thread, so TSan never sees absl::Mutex lock or unlock and reports a data race on every
// field that a Mutex guards (thousands per test). Rebuilding Abseil (and gRPC, which links the same
// shared Abseil) from source is not an option with Debian packages only. Instead this file, linked
// into every executable of the TSan build (CMake option ATTND_SANITIZE=thread), defines the
// Mutex/CondVar/Notification entry points itself. Being in the executable, these definitions interpose on the
// shared library's for every caller, ours and gRPC's alike. Each one tells TSan what the call does
// (lock, unlock, wait = unlock + lock) with the __tsan_mutex_* interface and forwards to the real
// function found with dlsym(RTLD_NEXT).
//
// Inside a wait (Await, LockWhen, CondVar::Wait) Abseil evaluates Conditions on whichever thread
// holds the lock at the time; those evaluations run between a pre_/post_ annotation pair, where
// TSan ignores memory accesses, so they are not checked (they only read what the lock guards).
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

// The real function `mangled` of the shared library, looked up once.
template <typename Fn>
Fn Real(std::atomic<void*>& slot, const char* mangled) {
  void* f = slot.load(std::memory_order_acquire);
  if (f == nullptr) {
    f = dlsym(RTLD_NEXT, mangled);
    if (f == nullptr) {
      std::fprintf(stderr, "tsan_absl_mutex: %s not found in the shared Abseil\n", mangled);
      std::abort();
    }
    slot.store(f, std::memory_order_release);
  }
  return reinterpret_cast<Fn>(f);
}

// Abseil's own entry points call each other (CondVar::WaitWithTimeout calls WaitWithDeadline,
// Notification::Notify calls Mutex::Lock, ...), and those calls interpose too. Only the outermost
// one is annotated: `depth` counts the shims this thread is inside.
thread_local int depth = 0;
struct Nested {
  Nested() { ++depth; }
  ~Nested() { --depth; }
  Nested(const Nested&) = delete;
  Nested& operator=(const Nested&) = delete;
};

// Declares `real`, the shared library's function of type Type (a function pointer type), and
// returns real(args...) at once, unannotated, when called from inside another shim.
#define ATTND_REAL(Type, mangled, ...)                                                        \
  static std::atomic<void*> real_slot{nullptr};                                               \
  std::type_identity_t<Type> real = Real<std::type_identity_t<Type>>(real_slot, mangled);    \
  if (depth > 0) return real(__VA_ARGS__);                                                   \
  Nested nested

constexpr unsigned kRead = __tsan_mutex_read_lock;
constexpr unsigned kTry = __tsan_mutex_try_lock;
constexpr unsigned kTryFailed = __tsan_mutex_try_lock_failed;

// A wait that gives the lock up and takes it back: unlock now, lock when the real call returns.
void BeginWait(void* mu) {
  __tsan_mutex_pre_unlock(mu, 0);
  __tsan_mutex_post_unlock(mu, 0);
  __tsan_mutex_pre_lock(mu, 0);
}
void EndWait(void* mu) { __tsan_mutex_post_lock(mu, 0, 0); }

// A Notification's flag: Notify() releases it, a wait that returns true acquires it. The inline
// HasBeenNotified() loads the flag with an instrumented acquire, which acquires the same clock.
// Layout of Abseil 20220623: { Mutex mutex_; std::atomic<bool> notified_yet_; }.
static_assert(sizeof(absl::Notification) == sizeof(absl::Mutex) + sizeof(void*));
void* NotificationFlag(const absl::Notification* n) {
  return const_cast<char*>(reinterpret_cast<const char*>(n)) + sizeof(absl::Mutex);
}

}  // namespace

// The mangled names below are those of Debian's Abseil 20220623 (inline namespace debian3); a
// missing one aborts with its name at first use rather than silently losing the annotations.
namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  ATTND_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv", this);
  __tsan_mutex_pre_lock(this, 0);
  real(this);
  __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::Unlock() {
  ATTND_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv", this);
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

bool Mutex::TryLock() {
  ATTND_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv", this);
  __tsan_mutex_pre_lock(this, kTry);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, locked ? kTry : kTry | kTryFailed, 0);
  return locked;
}

void Mutex::ReaderLock() {
  ATTND_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv", this);
  __tsan_mutex_pre_lock(this, kRead);
  real(this);
  __tsan_mutex_post_lock(this, kRead, 0);
}

void Mutex::ReaderUnlock() {
  ATTND_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv", this);
  __tsan_mutex_pre_unlock(this, kRead);
  real(this);
  __tsan_mutex_post_unlock(this, kRead);
}

bool Mutex::ReaderTryLock() {
  ATTND_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv", this);
  __tsan_mutex_pre_lock(this, kRead | kTry);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, locked ? kRead | kTry : kRead | kTry | kTryFailed, 0);
  return locked;
}

void Mutex::LockWhen(const Condition& cond) {
  ATTND_REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE", this, cond);
  __tsan_mutex_pre_lock(this, 0);
  real(this, cond);
  __tsan_mutex_post_lock(this, 0, 0);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  ATTND_REAL(bool (*)(Mutex*, const Condition&, Duration),
             "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE", this, cond, timeout);
  __tsan_mutex_pre_lock(this, 0);
  const bool met = real(this, cond, timeout);
  __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  ATTND_REAL(bool (*)(Mutex*, const Condition&, Time),
             "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE", this, cond, deadline);
  __tsan_mutex_pre_lock(this, 0);
  const bool met = real(this, cond, deadline);
  __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  ATTND_REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE", this, cond);
  __tsan_mutex_pre_lock(this, kRead);
  real(this, cond);
  __tsan_mutex_post_lock(this, kRead, 0);
}

void Mutex::Await(const Condition& cond) {
  ATTND_REAL(void (*)(Mutex*, const Condition&), "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE", this, cond);
  BeginWait(this);
  real(this, cond);
  EndWait(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  ATTND_REAL(bool (*)(Mutex*, const Condition&, Duration),
             "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE", this, cond, timeout);
  BeginWait(this);
  const bool met = real(this, cond, timeout);
  EndWait(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  ATTND_REAL(bool (*)(Mutex*, const Condition&, Time),
             "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE", this, cond, deadline);
  BeginWait(this);
  const bool met = real(this, cond, deadline);
  EndWait(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  ATTND_REAL(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE", this, mu);
  BeginWait(mu);
  real(this, mu);
  EndWait(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  ATTND_REAL(bool (*)(CondVar*, Mutex*, Duration),
             "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE", this, mu, timeout);
  BeginWait(mu);
  const bool timed_out = real(this, mu, timeout);
  EndWait(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  ATTND_REAL(bool (*)(CondVar*, Mutex*, Time),
             "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE", this, mu, deadline);
  BeginWait(mu);
  const bool timed_out = real(this, mu, deadline);
  EndWait(mu);
  return timed_out;
}

void Notification::Notify() {
  ATTND_REAL(void (*)(Notification*), "_ZN4absl7debian312Notification6NotifyEv", this);
  __tsan_release(NotificationFlag(this));
  real(this);
}

void Notification::WaitForNotification() const {
  ATTND_REAL(void (*)(const Notification*), "_ZNK4absl7debian312Notification19WaitForNotificationEv", this);
  real(this);
  __tsan_acquire(NotificationFlag(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  ATTND_REAL(bool (*)(const Notification*, Duration),
             "_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE", this, timeout);
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(NotificationFlag(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  ATTND_REAL(bool (*)(const Notification*, Time),
             "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE", this, deadline);
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(NotificationFlag(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
