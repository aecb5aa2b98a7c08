// BackendStats: what the engine measured, collected through Backend::CollectStats for the GetStats
// RPC, the Prometheus exporter and logs. Everything is cumulative since the daemon started (gauges
// such as bytes in use are "now"), so a client takes two snapshots and subtracts them to see one
// measurement window (attn_loadgen does, per step). Pure C++ data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "server/engine/batcher_stats.h"
#include "server/engine/log2_histogram.h"

namespace attnd {

// One caching memory pool: a GPU's device memory, or the page-locked host staging.
struct MemoryPoolStats {
  int64_t cap_bytes = 0;            // hard cap on reserved_bytes
  int64_t reserved_bytes = 0;       // held from the driver: blocks in use + cached blocks
  int64_t in_use_bytes = 0;         // asked for by the allocations alive now
  int64_t in_use_block_bytes = 0;   // the blocks serving them (size classes round up)
  int64_t cached_bytes = 0;         // idle blocks kept for reuse
  int64_t peak_reserved_bytes = 0;
  int64_t peak_in_use_bytes = 0;
  int64_t allocations = 0;          // allocations served
  int64_t cache_hits = 0;           // ... from a cached block, with no driver call
  int64_t driver_allocations = 0;   // cudaMalloc / cudaHostAlloc calls: flat in steady state
  int64_t driver_frees = 0;         // cudaFree / cudaFreeHost calls (cache trimmed under the cap)
  int64_t rejected = 0;             // RESOURCE_EXHAUSTED: the request did not fit under the cap

  // Share of the in-use blocks' bytes that nobody asked for (size-class rounding); 0 when idle.
  double fragmentation() const {
    return in_use_block_bytes > 0 ? 1.0 - static_cast<double>(in_use_bytes) / in_use_block_bytes : 0.0;
  }
};

// Per request, where its time went below the front end, in microseconds (CallTimings). `other`
// is the rest of `total` (the time inside the engine): packing, scatter, argument checks, pool.
struct StageHistograms {
  engine::Log2Histogram queue_us, h2d_us, kernel_us, d2h_us, other_us, total_us;

  void Merge(const StageHistograms& o) {
    queue_us.Merge(o.queue_us);
    h2d_us.Merge(o.h2d_us);
    kernel_us.Merge(o.kernel_us);
    d2h_us.Merge(o.d2h_us);
    other_us.Merge(o.other_us);
    total_us.Merge(o.total_us);
  }
};

// One GPU (or the CPU backend's single "device").
struct DeviceStats {
  int device = 0;
  std::string name;
  bool has_memory_pool = false;
  MemoryPoolStats memory;
  int streams = 0;                  // --streams: calls computed on the device at once
  int busy_streams = 0;             // now
  int64_t launches = 0;             // backend calls that ran kernels (a packed batch is one)
  int64_t routed_requests = 0;      // requests the router sent here (multi-GPU)
  // Host <-> device bytes by route (engine/transfer_plan.h): page-locked host memory by DMA
  // directly, pageable memory through pinned staging (a host copy each way), or the driver's
  // pageable path when no staging could be had.
  int64_t direct_copy_bytes = 0;
  int64_t staged_copy_bytes = 0;
  int64_t pageable_copy_bytes = 0;
};

struct BackendStats {
  bool has_stages = false;
  StageHistograms stages;           // per request, recorded by the engine's outermost layer
  bool has_batcher = false;
  engine::BatcherStats batcher;     // summed over the batchers of every device
  std::vector<DeviceStats> devices;
  bool has_pinned_host = false;
  MemoryPoolStats pinned_host;      // page-locked staging, shared by every GPU
};

}  // namespace attnd
