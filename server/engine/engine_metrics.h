// The engine's Prometheus series, read from Backend::CollectStats when /metrics is scraped (one
// collection per scrape, shared by every series). Per-request stage latencies (batch_queue, h2d,
// kernel, d2h) are recorded by the service into attnd_request_stage_seconds; these are the rest:
//   attnd_batch_queue_depth                               gauge: calls waiting in the batch queues
//   attnd_batch_requests                                  histogram: requests per launch (1..1024)
//   attnd_batcher_requests_total{outcome}                 counter: ok, error, queue_full, expired,
//                                                         cancelled, withdrawn, stopped
//   attnd_gpu_memory_bytes{device,state}                  gauge: in_use, reserved, cached, cap, peak_reserved
//   attnd_gpu_memory_fragmentation_ratio{device}          gauge: unrequested share of in-use blocks
//   attnd_gpu_memory_driver_allocations_total{device}     counter: cudaMalloc calls (flat when warm)
//   attnd_gpu_memory_cache_hits_total{device}             counter
//   attnd_gpu_memory_rejected_total{device}               counter: RESOURCE_EXHAUSTED under the cap
//   attnd_gpu_streams_busy{device}                        gauge
//   attnd_gpu_launches_total{device}                      counter: backend calls that ran kernels
//   attnd_gpu_copy_bytes_total{device,route}              counter: direct (page-locked DMA), staged,
//                                                         pageable (the driver's path)
//   attnd_device_routed_requests_total{device}            counter (several devices)
//   attnd_pinned_memory_bytes{state}                      gauge: in_use, reserved, cached, cap
//   attnd_pinned_memory_driver_allocations_total          counter: cudaHostAlloc calls
#pragma once

#include "server/backend.h"
#include "server/metrics/metrics_registry.h"

namespace attnd {

// `backend` (the engine's top) must outlive every Render() of `registry`.
void RegisterEngineMetrics(metrics::MetricsRegistry& registry, const Backend* backend);

}  // namespace attnd
