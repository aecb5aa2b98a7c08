// RegionRegistry: registration through passed descriptors only, sealing, keys, bounds, leases,
// and release when sessions close, with the counts back at zero.
#include "server/transport/region_registry.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace attnd {
namespace {

// A memfd of `size` bytes, sealed against shrinking unless `seal` is false.
int MakeMemfd(size_t size, bool seal = true) {
  const int fd = memfd_create("region-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
  if (seal) EXPECT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
  return fd;
}

class RegionRegistryTest : public ::testing::Test {
 protected:
  RegisteredRegion Register(size_t size, int* client_fd = nullptr) {
    const int fd = MakeMemfd(size);
    absl::StatusOr<std::string> token = registry_.ParkFd(session_, dup(fd));
    EXPECT_TRUE(token.ok()) << token.status();
    absl::StatusOr<RegisteredRegion> region = registry_.RegisterSharedMemory(session_, *token, size, "test");
    EXPECT_TRUE(region.ok()) << region.status();
    if (client_fd != nullptr) {
      *client_fd = fd;
    } else {
      close(fd);
    }
    return *region;
  }

  RegionRegistry registry_{RegionRegistry::Limits{}, nullptr, nullptr};
  std::string session_ = *registry_.OpenSession({getpid(), getuid(), getgid()});
};

TEST_F(RegionRegistryTest, BothSidesSeeTheSameBytes) {
  int fd = -1;
  const RegisteredRegion region = Register(1 << 20, &fd);
  EXPECT_EQ(region.size, uint64_t{1} << 20);
  EXPECT_EQ(region.key.size(), 32u);  // 128 bits in hex
  auto* mine = static_cast<uint8_t*>(mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(mine, MAP_FAILED);
  std::memcpy(mine + 4096, "client bytes", 12);
  absl::StatusOr<ResolvedSpan> span = registry_.Resolve(region.region_id, region.key, 4096, 12, "q.region");
  ASSERT_TRUE(span.ok()) << span.status();
  EXPECT_EQ(std::memcmp(span->data, "client bytes", 12), 0);
  std::memcpy(span->data, "daemon bytes", 12);
  EXPECT_EQ(std::memcmp(mine + 4096, "daemon bytes", 12), 0);
  munmap(mine, 1 << 20);
  close(fd);
}

TEST_F(RegionRegistryTest, RefusesAnUnsealedMemfdAndEachTokenRegistersOnce) {
  const int fd = MakeMemfd(4096, /*seal=*/false);
  absl::StatusOr<std::string> token = registry_.ParkFd(session_, fd);
  ASSERT_TRUE(token.ok());
  absl::StatusOr<RegisteredRegion> r = registry_.RegisterSharedMemory(session_, *token, 4096, "x");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("F_SEAL_SHRINK"), std::string::npos) << r.status();
  r = registry_.RegisterSharedMemory(session_, *token, 4096, "x");  // double registration
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("fd_token"), std::string::npos);
  EXPECT_EQ(registry_.parked_fds(), 0);
  EXPECT_EQ(registry_.regions(), 0);
}

TEST_F(RegionRegistryTest, UnknownSessionsTokensAndRegionsAreNotFound) {
  EXPECT_EQ(registry_.RegisterSharedMemory("nope", "nope", 1, "x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_.RegisterSharedMemory(session_, "nope", 1, "x").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<ResolvedSpan> span = registry_.Resolve("shm-99", "k", 0, 1, "q.region");
  EXPECT_EQ(span.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(span.status().message().find("q.region.region_id"), std::string::npos) << span.status();
  EXPECT_EQ(registry_.Unregister("shm-99", "k").code(), absl::StatusCode::kNotFound);
}

TEST_F(RegionRegistryTest, AWrongKeyReachesNothing) {
  const RegisteredRegion region = Register(4096);
  const RegisteredRegion other = Register(4096);
  absl::StatusOr<ResolvedSpan> span = registry_.Resolve(region.region_id, other.key, 0, 16, "k.region");
  EXPECT_EQ(span.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(registry_.Unregister(region.region_id, other.key).code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(RegionRegistryTest, SpansPastTheEndAreOutOfRange) {
  const RegisteredRegion region = Register(4096);
  for (auto [offset, size] : {std::pair<uint64_t, uint64_t>{0, 4097}, {4096, 1}, {5000, 0}, {1, ~uint64_t{0}},
                              {~uint64_t{0}, 2}}) {
    absl::StatusOr<ResolvedSpan> span = registry_.Resolve(region.region_id, region.key, offset, size, "v.region");
    EXPECT_EQ(span.status().code(), absl::StatusCode::kOutOfRange) << offset << "+" << size;
  }
  EXPECT_TRUE(registry_.Resolve(region.region_id, region.key, 4000, 96, "v.region").ok());
}

TEST_F(RegionRegistryTest, SizeBeyondTheFileAndNonFilesAreRefused) {
  const int fd = MakeMemfd(4096);
  EXPECT_EQ(registry_.RegisterSharedMemory(session_, *registry_.ParkFd(session_, fd), 8192, "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  close(pipe_fds[1]);
  EXPECT_EQ(registry_.RegisterSharedMemory(session_, *registry_.ParkFd(session_, pipe_fds[0]), 1, "x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RegionRegistryTest, AReadOnlyDescriptorIsPermissionDenied) {
  const int fd = MakeMemfd(4096);
  const int read_only = open(absl::StrCat("/proc/self/fd/", fd).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(read_only, 0);
  close(fd);
  absl::StatusOr<RegisteredRegion> r =
      registry_.RegisterSharedMemory(session_, *registry_.ParkFd(session_, read_only), 4096, "x");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
}

TEST_F(RegionRegistryTest, UnregisterWaitsForCallsAndThenFreesEverything) {
  const RegisteredRegion region = Register(1 << 16);
  EXPECT_EQ(registry_.regions(), 1);
  EXPECT_EQ(registry_.mapped_bytes(), 1 << 16);
  {
    absl::StatusOr<ResolvedSpan> leased = registry_.Resolve(region.region_id, region.key, 0, 64, "q.region");
    ASSERT_TRUE(leased.ok());
    absl::Status busy = registry_.Unregister(region.region_id, region.key);
    EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(busy.message().find("in use by running calls"), std::string::npos) << busy;
  }
  EXPECT_TRUE(registry_.Unregister(region.region_id, region.key).ok());
  EXPECT_EQ(registry_.regions(), 0);
  EXPECT_EQ(registry_.mapped_bytes(), 0);
  EXPECT_EQ(registry_.Resolve(region.region_id, region.key, 0, 1, "q.region").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RegionRegistryTest, AClosedSessionReleasesItsRegionsOnceTheirCallsEnd) {
  const RegisteredRegion a = Register(1 << 16);
  Register(1 << 12);
  absl::StatusOr<std::string> parked = registry_.ParkFd(session_, MakeMemfd(64));
  ASSERT_TRUE(parked.ok());
  absl::StatusOr<ResolvedSpan> leased = registry_.Resolve(a.region_id, a.key, 0, 64, "q.region");
  ASSERT_TRUE(leased.ok());
  registry_.CloseSession(session_);  // the client is gone
  EXPECT_EQ(registry_.sessions(), 0);
  EXPECT_EQ(registry_.parked_fds(), 0);
  EXPECT_EQ(registry_.regions(), 1);  // still mapped under the running call
  EXPECT_EQ(static_cast<uint8_t*>(leased->data)[0], 0);
  EXPECT_EQ(registry_.Resolve(a.region_id, a.key, 0, 1, "q.region").status().code(), absl::StatusCode::kNotFound);
  leased = absl::CancelledError("call done");  // the call drops its lease
  EXPECT_EQ(registry_.regions(), 0);
  EXPECT_EQ(registry_.mapped_bytes(), 0);
}

TEST(RegionRegistryLimits, PerSessionLimitsAreResourceExhausted) {
  RegionRegistry::Limits limits;
  limits.max_regions_per_session = 1;
  limits.max_parked_fds_per_session = 1;
  limits.max_sessions = 1;
  RegionRegistry registry(limits, nullptr, nullptr);
  const std::string session = *registry.OpenSession({});
  EXPECT_EQ(registry.OpenSession({}).status().code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<std::string> t1 = registry.ParkFd(session, MakeMemfd(64));
  ASSERT_TRUE(t1.ok());
  EXPECT_EQ(registry.ParkFd(session, MakeMemfd(64)).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(registry.RegisterSharedMemory(session, *t1, 64, "a").ok());
  absl::StatusOr<std::string> t2 = registry.ParkFd(session, MakeMemfd(64));
  EXPECT_EQ(registry.RegisterSharedMemory(session, *t2, 64, "b").status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(RegionRegistryCuda, WithoutAnImporterCudaRegistrationIsUnimplemented) {
  RegionRegistry registry(RegionRegistry::Limits{}, nullptr, nullptr);
  const std::string session = *registry.OpenSession({});
  EXPECT_FALSE(registry.cuda_ipc_supported());
  EXPECT_EQ(registry.RegisterCudaMemory(session, std::string(64, '\0'), 64, 0, "x").status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace attnd
