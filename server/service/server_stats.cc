#include "server/service/server_stats.h"

namespace attnd {
namespace {

int64_t Micros(double seconds) { return static_cast<int64_t>(seconds * 1e6 + 0.5); }

void Fill(const engine::Log2Histogram& h, v1::Log2Histogram* out) {
  out->set_count(h.count());
  out->set_sum(h.sum());
  out->set_max(h.max());
  int last = engine::Log2Histogram::kBuckets - 1;  // trailing empty buckets are left out
  while (last >= 0 && h.bucket_count(last) == 0) --last;
  for (int i = 0; i <= last; ++i) out->add_buckets(h.bucket_count(i));
}

void Fill(const MemoryPoolStats& m, v1::MemoryPoolStats* out) {
  out->set_cap_bytes(m.cap_bytes);
  out->set_reserved_bytes(m.reserved_bytes);
  out->set_in_use_bytes(m.in_use_bytes);
  out->set_in_use_block_bytes(m.in_use_block_bytes);
  out->set_cached_bytes(m.cached_bytes);
  out->set_peak_reserved_bytes(m.peak_reserved_bytes);
  out->set_peak_in_use_bytes(m.peak_in_use_bytes);
  out->set_allocations(m.allocations);
  out->set_cache_hits(m.cache_hits);
  out->set_driver_allocations(m.driver_allocations);
  out->set_driver_frees(m.driver_frees);
  out->set_rejected(m.rejected);
  out->set_fragmentation(m.fragmentation());
}

void Fill(const engine::BatcherStats& b, v1::BatcherStats* out) {
  out->set_submitted(b.submitted);
  out->set_completed_ok(b.completed_ok);
  out->set_completed_error(b.completed_error);
  out->set_rejected_queue_full(b.rejected_queue_full);
  out->set_rejected_stopped(b.rejected_stopped);
  out->set_expired(b.expired);
  out->set_cancelled(b.cancelled);
  out->set_withdrawn(b.withdrawn);
  out->set_batches_run(b.batches_run);
  out->set_packed_batches(b.packed_batches);
  out->set_oversized_requests(b.oversized_requests);
  out->set_retried_alone(b.retried_alone);
  v1::BatcherQueue* q = out->mutable_queue();
  q->set_depth(b.queue_depth);
  q->set_peak_depth(b.peak_queue_depth);
  q->set_running(b.running);
  Fill(b.queue_wait_us, q->mutable_wait_us());
  Fill(b.requests_per_batch, out->mutable_requests_per_batch());
  Fill(b.tokens_per_batch, out->mutable_tokens_per_batch());
}

}  // namespace

void ServiceLatencyStats::Record(const AccessRecord& r) {
  absl::MutexLock lock(&mu_);
  if (r.queue_wait_s >= 0) latencies_.worker_queue_us.Add(Micros(r.queue_wait_s));
  if (r.compute_s >= 0) latencies_.compute_us.Add(Micros(r.compute_s));
  latencies_.total_us.Add(Micros(r.total_s));
}

ServiceLatencies ServiceLatencyStats::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return latencies_;
}

void FillServerStats(const BackendStats& engine, const ServiceLatencies& service, double uptime_s,
                     v1::ServerStats* out) {
  out->set_uptime_s(uptime_s);
  if (engine.has_stages) {
    v1::EngineLatencies* e = out->mutable_engine();
    Fill(engine.stages.queue_us, e->mutable_queue_us());
    Fill(engine.stages.h2d_us, e->mutable_h2d_us());
    Fill(engine.stages.kernel_us, e->mutable_kernel_us());
    Fill(engine.stages.d2h_us, e->mutable_d2h_us());
    Fill(engine.stages.other_us, e->mutable_other_us());
    Fill(engine.stages.total_us, e->mutable_total_us());
  }
  v1::ServiceLatencies* s = out->mutable_service();
  Fill(service.worker_queue_us, s->mutable_worker_queue_us());
  Fill(service.compute_us, s->mutable_compute_us());
  Fill(service.total_us, s->mutable_total_us());
  if (engine.has_batcher) Fill(engine.batcher, out->mutable_batcher());
  for (const DeviceStats& d : engine.devices) {
    v1::DeviceStats* device = out->add_devices();
    device->set_index(d.device);
    device->set_name(d.name);
    if (d.has_memory_pool) Fill(d.memory, device->mutable_memory());
    device->set_streams(d.streams);
    device->set_busy_streams(d.busy_streams);
    device->set_launches(d.launches);
    device->set_routed_requests(d.routed_requests);
  }
  if (engine.has_pinned_host) Fill(engine.pinned_host, out->mutable_pinned_host());
}

}  // namespace attnd
