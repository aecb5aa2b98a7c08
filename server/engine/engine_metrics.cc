#include "server/engine/engine_metrics.h"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/backend_stats.h"

namespace attnd {
namespace {

// About one CollectStats per scrape: the series of one scrape (rendered within a millisecond or
// so) share a snapshot, which is never older than 5 ms.
class StatsSnapshot {
 public:
  explicit StatsSnapshot(const Backend* backend) : backend_(backend) {}
  BackendStats Get() {
    absl::MutexLock lock(&mu_);
    const auto now = std::chrono::steady_clock::now();
    if (!fresh_ || now - taken_ > std::chrono::milliseconds(5)) {
      stats_ = BackendStats{};
      backend_->CollectStats(stats_);
      taken_ = now;
      fresh_ = true;
    }
    return stats_;
  }

 private:
  const Backend* const backend_;
  absl::Mutex mu_;
  bool fresh_ = false;
  std::chrono::steady_clock::time_point taken_;
  BackendStats stats_;
};

const DeviceStats* FindDevice(const BackendStats& stats, int device) {
  for (const DeviceStats& d : stats.devices)
    if (d.device == device) return &d;
  return nullptr;
}

// requests_per_batch (log2 buckets: <= 1, <= 2, <= 4, ...) as Prometheus buckets le=1, 2, 4, ...
constexpr int kBatchBuckets = 11;  // up to 1024
std::vector<double> BatchBounds() {
  std::vector<double> b;
  for (int i = 0; i < kBatchBuckets; ++i) b.push_back(static_cast<double>(int64_t{1} << i));
  return b;
}
metrics::Histogram::Snapshot BatchSnapshot(const engine::Log2Histogram& h) {
  metrics::Histogram::Snapshot s;
  uint64_t running = 0;
  for (int i = 0; i < kBatchBuckets; ++i) {
    running += static_cast<uint64_t>(h.bucket_count(i));
    s.cumulative.push_back(running);
  }
  s.count = static_cast<uint64_t>(h.count());
  s.cumulative.push_back(s.count);
  s.sum = static_cast<double>(h.sum());
  return s;
}

void RegisterMemory(metrics::MetricsRegistry& registry, const std::shared_ptr<StatsSnapshot>& snap,
                    const std::string& family, const metrics::Labels& base,
                    std::function<const MemoryPoolStats*(const BackendStats&)> pool) {
  auto read = [snap, pool](int64_t MemoryPoolStats::*field) {
    return [snap, pool, field] {
      const BackendStats s = snap->Get();
      const MemoryPoolStats* p = pool(s);
      return p == nullptr ? 0.0 : static_cast<double>(p->*field);
    };
  };
  for (auto [state, field] : {std::pair{"in_use", &MemoryPoolStats::in_use_bytes},
                              {"reserved", &MemoryPoolStats::reserved_bytes},
                              {"cached", &MemoryPoolStats::cached_bytes},
                              {"cap", &MemoryPoolStats::cap_bytes},
                              {"peak_reserved", &MemoryPoolStats::peak_reserved_bytes}}) {
    metrics::Labels labels = base;
    labels.emplace_back("state", state);
    registry.AddCallbackGauge(family + "_bytes", "Bytes of the memory pool by state (cap: its hard limit).",
                              labels, read(field));
  }
  registry.AddCallbackCounter(family + "_driver_allocations_total",
                              "Allocations the pool asked the CUDA driver for (flat once warm).", base,
                              read(&MemoryPoolStats::driver_allocations));
}

}  // namespace

void RegisterEngineMetrics(metrics::MetricsRegistry& registry, const Backend* backend) {
  auto snap = std::make_shared<StatsSnapshot>(backend);
  const BackendStats first = snap->Get();

  if (first.has_batcher) {
    registry.AddCallbackGauge("attnd_batch_queue_depth", "Calls waiting in the dynamic batchers' queues.", {},
                              [snap] { return static_cast<double>(snap->Get().batcher.queue_depth); });
    registry.AddCallbackHistogram("attnd_batch_requests", "Requests per backend launch of the dynamic batchers.", {},
                                  BatchBounds(), [snap] { return BatchSnapshot(snap->Get().batcher.requests_per_batch); });
    using B = engine::BatcherStats;
    for (auto [outcome, field] : {std::pair{"ok", &B::completed_ok}, {"error", &B::completed_error},
                                  {"queue_full", &B::rejected_queue_full}, {"expired", &B::expired},
                                  {"cancelled", &B::cancelled}, {"withdrawn", &B::withdrawn},
                                  {"stopped", &B::rejected_stopped}}) {
      registry.AddCallbackCounter("attnd_batcher_requests_total", "Requests through the dynamic batchers by outcome.",
                                  {{"outcome", outcome}},
                                  [snap, field] { return static_cast<double>(snap->Get().batcher.*field); });
    }
  }

  for (const DeviceStats& d : first.devices) {
    const int device = d.device;
    const metrics::Labels labels = {{"device", std::to_string(device)}};
    auto field = [snap, device](auto DeviceStats::*member) {
      return [snap, device, member] {
        const BackendStats s = snap->Get();
        const DeviceStats* found = FindDevice(s, device);
        return found == nullptr ? 0.0 : static_cast<double>(found->*member);
      };
    };
    if (first.devices.size() > 1) {
      registry.AddCallbackCounter("attnd_device_routed_requests_total", "Requests routed to each device.", labels,
                                  field(&DeviceStats::routed_requests));
    }
    if (!d.has_memory_pool) continue;
    registry.AddCallbackGauge("attnd_gpu_streams_busy", "CUDA streams of the GPU computing a call now.", labels,
                              field(&DeviceStats::busy_streams));
    registry.AddCallbackCounter("attnd_gpu_launches_total", "Backend calls that ran kernels on the GPU.", labels,
                                field(&DeviceStats::launches));
    for (auto [route, member] : {std::pair{"direct", &DeviceStats::direct_copy_bytes},
                                 {"staged", &DeviceStats::staged_copy_bytes},
                                 {"pageable", &DeviceStats::pageable_copy_bytes}}) {
      metrics::Labels with_route = labels;
      with_route.push_back({"route", route});
      registry.AddCallbackCounter("attnd_gpu_copy_bytes_total",
                                  "Host<->device bytes by route: page-locked memory by DMA directly, pageable "
                                  "memory through pinned staging, or the driver's pageable path.",
                                  with_route, field(member));
    }
    auto pool_of = [device](const BackendStats& s) -> const MemoryPoolStats* {
      const DeviceStats* found = FindDevice(s, device);
      return found == nullptr ? nullptr : &found->memory;
    };
    RegisterMemory(registry, snap, "attnd_gpu_memory", labels, pool_of);
    auto pool_field = [snap, pool_of](auto MemoryPoolStats::*member) {
      return [snap, pool_of, member] {
        const BackendStats s = snap->Get();
        const MemoryPoolStats* p = pool_of(s);
        return p == nullptr ? 0.0 : static_cast<double>(p->*member);
      };
    };
    registry.AddCallbackCounter("attnd_gpu_memory_cache_hits_total", "Allocations served from the pool's cache.",
                                labels, pool_field(&MemoryPoolStats::cache_hits));
    registry.AddCallbackCounter("attnd_gpu_memory_rejected_total",
                                "Requests refused with RESOURCE_EXHAUSTED by the pool's cap.", labels,
                                pool_field(&MemoryPoolStats::rejected));
    registry.AddCallbackGauge("attnd_gpu_memory_fragmentation_ratio",
                              "Share of the in-use blocks' bytes not requested (size-class rounding).", labels,
                              [snap, pool_of] {
                                const BackendStats s = snap->Get();
                                const MemoryPoolStats* p = pool_of(s);
                                return p == nullptr ? 0.0 : p->fragmentation();
                              });
  }

  if (first.has_pinned_host) {
    RegisterMemory(registry, snap, "attnd_pinned_memory", {},
                   [](const BackendStats& s) { return s.has_pinned_host ? &s.pinned_host : nullptr; });
  }
}

}  // namespace attnd
