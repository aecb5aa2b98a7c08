// The attnd binary itself: spawned with --listen=127.0.0.1:0, its "attnd listening on" line parsed,
// real requests served by the CPU backend, then SIGTERM/SIGINT: calls in flight complete and the
// process exits 0. Bad flags exit non-zero with a message.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "attnd/v1/attention.grpc.pb.h"
#include "tests/server/service/service_test_util.h"
#include "tests/support/reference_attention.h"

extern char** environ;

namespace attnd {
namespace {

using testing::Decode;
using testing::DenseForwardRequest;
using testing::RequestSpec;

// A child attnd process with its stderr on a pipe.
class Daemon {
 public:
  explicit Daemon(std::vector<std::string> flags) {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    std::vector<std::string> args = {ATTND_BINARY};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, ATTND_BINARY, &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    err_ = fds[0];
  }
  ~Daemon() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (err_ >= 0) close(err_);
  }

  // The address from "attnd listening on HOST:PORT", or nullopt if the process exits or says
  // nothing within `timeout`.
  std::optional<std::string> WaitForAddress(absl::Duration timeout) {
    const std::string prefix = "attnd listening on ";
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      const size_t at = log_.find(prefix);
      if (at != std::string::npos) {
        const size_t eol = log_.find('\n', at);
        if (eol != std::string::npos) return log_.substr(at + prefix.size(), eol - at - prefix.size());
      }
      if (!ReadSome(end)) break;
    }
    return std::nullopt;
  }

  // Exit code (or 128 + signal), or nullopt if still running after `timeout`. Drains stderr.
  std::optional<int> WaitForExit(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      int status = 0;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        while (ReadSome(absl::Now() + absl::Seconds(1))) {
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      ReadSome(absl::Now() + absl::Milliseconds(50));
    }
    return std::nullopt;
  }

  void Signal(int sig) { kill(pid_, sig); }
  const std::string& log() const { return log_; }

 private:
  // Appends what stderr has until `end`; false at end of file or timeout.
  bool ReadSome(absl::Time end) {
    pollfd p{err_, POLLIN, 0};
    const int ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(end - absl::Now())));
    if (poll(&p, 1, ms) <= 0) return false;
    char buf[4096];
    const ssize_t n = read(err_, buf, sizeof buf);
    if (n <= 0) return false;
    log_.append(buf, n);
    return true;
  }

  pid_t pid_ = -1;
  int err_ = -1;
  bool exited_ = false;
  std::string log_;
};

std::unique_ptr<v1::Attention::Stub> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return v1::Attention::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

std::chrono::system_clock::time_point In(absl::Duration d) { return absl::ToChronoTime(absl::Now() + d); }

struct AsyncForward {
  grpc::ClientContext context;
  v1::ForwardRequest request;
  v1::ForwardResponse response;
  grpc::Status status;
  absl::Time finished;
  absl::Notification done;
};

TEST(AttndDaemonTest, ServesThenFinishesAcceptedCallsOnSigtermAndExitsZero) {
  Daemon daemon({"--listen=127.0.0.1:0", "--backend=cpu", "--threads=2", "--workers=1"});
  std::optional<std::string> address = daemon.WaitForAddress(absl::Seconds(30));
  ASSERT_TRUE(address.has_value()) << daemon.log();
  ASSERT_TRUE(absl::StartsWith(*address, "127.0.0.1:")) << *address;
  auto stub = Connect(*address);

  // A real answer, checked against the oracle.
  const RequestSpec small{.batch = 2, .seqlen_q = 17, .seqlen_k = 17, .heads_q = 2, .heads_kv = 1, .head_dim = 32,
                          .dtype = DType::kBF16, .causal = true};
  const v1::ForwardRequest request = DenseForwardRequest(small);
  v1::ForwardResponse response;
  {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    grpc::Status status = stub->Forward(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  const AttentionShape shape = DenseShape(2, 17, 17, 2, 1, 32);
  AttentionOptions options;
  options.causal = true;
  options.softmax_scale = 1.f / std::sqrt(32.f);
  const testing::ReferenceForward want =
      testing::ReferenceAttentionForward(shape, options, Decode(request.q().data(), DType::kBF16),
                                         Decode(request.k().data(), DType::kBF16),
                                         Decode(request.v().data(), DType::kBF16));
  EXPECT_LT(testing::RelativeL2Error(Decode(response.out().data(), DType::kBF16), want.out), 1e-2);

  // Calls in flight at SIGTERM: one worker and several calls of small payload but long compute
  // (timed first, so the test holds whatever the CPU backend's speed). SIGTERM goes out once the
  // first call is answered, when the rest are queued, running or still arriving. Accepted calls
  // must complete; one still arriving may be refused, and must fail cleanly.
  const RequestSpec heavy{.batch = 1, .seqlen_q = 2048, .seqlen_k = 2048, .heads_q = 1, .heads_kv = 1,
                          .head_dim = 32, .dtype = DType::kFP32};
  const v1::ForwardRequest heavy_request = DenseForwardRequest(heavy);
  const absl::Time t0 = absl::Now();
  {
    grpc::ClientContext context;
    v1::ForwardResponse heavy_response;
    ASSERT_TRUE(stub->Forward(&context, heavy_request, &heavy_response).ok());
  }
  const absl::Duration one_call = absl::Now() - t0;
  const int calls_needed = static_cast<int>(std::clamp<int64_t>(absl::Milliseconds(500) / one_call + 3, 3, 16));

  std::vector<std::unique_ptr<AsyncForward>> calls;
  for (int i = 0; i < calls_needed; ++i) {
    auto call = std::make_unique<AsyncForward>();
    call->request = heavy_request;
    call->context.set_deadline(In(absl::Seconds(60)));
    calls.push_back(std::move(call));
  }
  std::atomic<int> answered{0};
  for (auto& call : calls) {
    AsyncForward* c = call.get();
    stub->async()->Forward(&c->context, &c->request, &c->response, [c, &answered](grpc::Status s) {
      c->status = std::move(s);
      c->finished = absl::Now();
      answered.fetch_add(1);
      c->done.Notify();
    });
  }
  for (const absl::Time end = absl::Now() + absl::Seconds(60); answered.load() == 0 && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_GT(answered.load(), 0);
  // Let the uploads (under a MiB each) land; at least two calls' work is still queued. Never a
  // fraction of one_call: on a loaded machine the timed call can be far slower than the later ones,
  // and all of them would finish before the signal.
  absl::SleepFor(std::min(one_call / 4, absl::Milliseconds(20)));
  const absl::Time signalled = absl::Now();
  daemon.Signal(SIGTERM);
  int after_signal = 0;
  for (auto& call : calls) {
    ASSERT_TRUE(call->done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    if (!call->status.ok()) {
      // Refused by the draining daemon (UNAVAILABLE "attnd is shutting down"), or still on the
      // wire when it finally closed, which gRPC cancels (UNAVAILABLE or CANCELLED).
      EXPECT_TRUE(call->status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                  call->status.error_code() == grpc::StatusCode::CANCELLED)
          << call->status.error_code() << " " << call->status.error_message();
      continue;
    }
    EXPECT_EQ(call->response.out().data().size(), heavy_request.q().data().size());
    if (call->finished > signalled) ++after_signal;
  }
  EXPECT_GT(after_signal, 0) << "no call completed after SIGTERM; the test proved nothing (one call "
                             << one_call << ", " << calls_needed << " calls)";
  std::optional<int> code = daemon.WaitForExit(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << "attnd did not exit after SIGTERM\n" << daemon.log();
  EXPECT_EQ(*code, 0) << daemon.log();
  EXPECT_TRUE(absl::StrContains(daemon.log(), "SIGTERM")) << daemon.log();
  EXPECT_TRUE(absl::StrContains(daemon.log(), "attnd: stopped")) << daemon.log();
}

TEST(AttndDaemonTest, SigintExitsZero) {
  Daemon daemon({"--listen=127.0.0.1:0", "--backend=cpu", "--threads=1"});
  ASSERT_TRUE(daemon.WaitForAddress(absl::Seconds(30)).has_value()) << daemon.log();
  daemon.Signal(SIGINT);
  std::optional<int> code = daemon.WaitForExit(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << daemon.log();
  EXPECT_EQ(*code, 0) << daemon.log();
}

TEST(AttndDaemonTest, BadFlagsExitNonZeroWithAMessage) {
  struct Case {
    std::vector<std::string> flags;
    int code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--backend=nope"}, 1, "--backend=nope"},
      {{"--listen=127.0.0.1:0", "--backend=cpu", "--max_request_bytes=0"}, 1, "max_request_bytes"},
      {{"--listen=127.0.0.1:0", "--backend=cpu", "--max_request_bytes=2147483647"}, 1, "max_request_bytes"},
      {{"--listen=127.0.0.1:0", "--backend=cpu", "--max_tokens=-5"}, 1, "max_tokens_per_request"},
      {{"--listen=127.0.0.1:99999", "--backend=cpu"}, 1, "listen: '127.0.0.1:99999' is not host:port"},
      {{"--listen=127.0.0.1", "--backend=cpu"}, 1, "is not host:port"},
      {{"stray"}, 2, "unexpected argument 'stray'"},
  };
  for (const Case& c : cases) {
    Daemon daemon(c.flags);
    std::optional<int> code = daemon.WaitForExit(absl::Seconds(30));
    ASSERT_TRUE(code.has_value()) << c.message;
    EXPECT_EQ(*code, c.code) << daemon.log();
    EXPECT_TRUE(absl::StrContains(daemon.log(), c.message)) << daemon.log();
  }
}

TEST(AttndDaemonTest, PortInUseExitsNonZero) {
  Daemon first({"--listen=127.0.0.1:0", "--backend=cpu", "--threads=1"});
  std::optional<std::string> address = first.WaitForAddress(absl::Seconds(30));
  ASSERT_TRUE(address.has_value()) << first.log();
  Daemon second({"--listen=" + *address, "--backend=cpu", "--threads=1"});
  std::optional<int> code = second.WaitForExit(absl::Seconds(30));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 1) << second.log();
  EXPECT_TRUE(absl::StrContains(second.log(), *address)) << second.log();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.WaitForExit(absl::Seconds(30)), std::optional<int>(0)) << first.log();
}

}  // namespace
}  // namespace attnd
