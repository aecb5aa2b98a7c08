// DeviceRouter: calls go to the least loaded device (load = estimated FLOPs in hand), idle devices
// in turn, device-resident calls to their own device; statistics say where calls went.
#include "server/engine/device_router.h"

#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/backend_stats.h"

namespace attnd::engine {
namespace {

// A device that answers at once, or holds calls until released, and counts what it got.
class FakeDevice final : public Backend {
 public:
  explicit FakeDevice(int index) : index_(index) {}
  std::string_view name() const override { return "fake"; }
  std::vector<DeviceDescription> Devices() const override {
    DeviceDescription d;
    d.index = index_;
    d.name = "fake device";
    return {d};
  }
  absl::Status CheckSupported(const AttentionShape&, DType) const override { return absl::OkStatus(); }
  absl::Status Forward(const ForwardArgs&) override { return Enter(); }
  absl::Status Backward(const BackwardArgs&) override { return Enter(); }

  void Hold() {
    absl::MutexLock lock(&mu_);
    held_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    held_ = false;
  }
  void WaitForEntered(int n) {
    absl::MutexLock lock(&mu_);
    auto entered = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return entered_ >= n; };
    mu_.Await(absl::Condition(&entered));
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return entered_;
  }

 private:
  absl::Status Enter() {
    absl::MutexLock lock(&mu_);
    ++entered_;
    mu_.Await(absl::Condition(+[](bool* held) { return !*held; }, &held_));
    return absl::OkStatus();
  }
  const int index_;
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  int entered_ ABSL_GUARDED_BY(mu_) = 0;
};

struct Fixture {
  explicit Fixture(int n) {
    std::vector<std::unique_ptr<Backend>> backends;
    for (int i = 0; i < n; ++i) {
      auto d = std::make_unique<FakeDevice>(10 + i);  // CUDA ordinals need not start at 0
      devices.push_back(d.get());
      backends.push_back(std::move(d));
    }
    router = std::make_unique<DeviceRouter>(std::move(backends));
  }
  absl::Status Call(const AttentionShape& shape, TensorPlacement placement = {}) {
    ForwardArgs args;
    args.shape = &shape;
    args.placement = placement;
    return router->Forward(args);
  }
  std::vector<FakeDevice*> devices;
  std::unique_ptr<DeviceRouter> router;
};

const AttentionShape kSmall = DenseShape(1, 128, 128, 16, 16, 128);
const AttentionShape kLarge = DenseShape(1, 8192, 8192, 16, 16, 128);

TEST(DeviceRouter, IdleDevicesTakeCallsInTurn) {
  Fixture f(3);
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(f.Call(kSmall).ok());
  for (FakeDevice* d : f.devices) EXPECT_EQ(d->calls(), 10);
  EXPECT_EQ(f.router->Devices().size(), 3u);
}

TEST(DeviceRouter, ABusyDeviceGetsNothingWhileAnotherIsIdle) {
  Fixture f(2);
  f.devices[0]->Hold();
  std::thread busy([&] { EXPECT_TRUE(f.Call(kLarge).ok()); });
  f.devices[0]->WaitForEntered(1);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(f.Call(kSmall).ok());
  EXPECT_EQ(f.devices[1]->calls(), 8);
  EXPECT_EQ(f.devices[0]->calls(), 1);
  EXPECT_GT(f.router->Loads()[0], 0.0);
  f.devices[0]->Release();
  busy.join();
  EXPECT_EQ(f.router->Loads()[0], 0.0);
}

TEST(DeviceRouter, LoadIsTheWorkInHandNotTheNumberOfCalls) {
  Fixture f(2);
  f.devices[0]->Hold();
  f.devices[1]->Hold();
  std::vector<std::thread> running;
  running.emplace_back([&] { EXPECT_TRUE(f.Call(kLarge).ok()); });  // device 0 (both idle: first in turn)
  f.devices[0]->WaitForEntered(1);
  for (int i = 0; i < 3; ++i) {  // three small calls weigh far less than one large one: all on device 1
    running.emplace_back([&] { EXPECT_TRUE(f.Call(kSmall).ok()); });
    f.devices[1]->WaitForEntered(i + 1);
  }
  EXPECT_EQ(f.devices[0]->calls(), 1);
  EXPECT_EQ(f.devices[1]->calls(), 3);
  f.devices[0]->Release();
  f.devices[1]->Release();
  for (std::thread& t : running) t.join();
}

TEST(DeviceRouter, DeviceResidentCallsGoToTheirDeviceOrAreRefused) {
  Fixture f(2);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(f.Call(kSmall, {MemorySpace::kDevice, 11}).ok());
  EXPECT_EQ(f.devices[1]->calls(), 5);
  EXPECT_EQ(f.devices[0]->calls(), 0);
  const absl::Status refused = f.Call(kSmall, {MemorySpace::kDevice, 3});
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("device 3"), std::string_view::npos) << refused;
}

TEST(DeviceRouter, StatisticsSayWhereCallsWent) {
  Fixture f(2);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(f.Call(kSmall).ok());
  ASSERT_TRUE(f.Call(kSmall, {MemorySpace::kDevice, 10}).ok());
  BackendStats stats;
  f.router->CollectStats(stats);
  ASSERT_EQ(stats.devices.size(), 2u);
  EXPECT_EQ(stats.devices[0].device, 10);
  EXPECT_EQ(stats.devices[1].device, 11);
  EXPECT_EQ(stats.devices[0].routed_requests, 3);
  EXPECT_EQ(stats.devices[1].routed_requests, 2);
}

TEST(DeviceRouter, EstimatedFlopsFollowTheShape) {
  const AttentionShape s = PackedShape({100, 300}, {200, 50}, 8, 2, 64);
  EXPECT_DOUBLE_EQ(EstimatedFlops(s, false), 4.0 * 8 * 64 * (100 * 200 + 300 * 50));
  EXPECT_DOUBLE_EQ(EstimatedFlops(s, true), 2.5 * EstimatedFlops(s, false));
  EXPECT_DOUBLE_EQ(EstimatedFlops(DenseShape(0, 0, 0, 1, 1, 32), false), 1e6);  // empty calls still count
}

}  // namespace
}  // namespace attnd::engine
