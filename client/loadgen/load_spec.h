// LoadSpec: what attn_loadgen sends, how hard and for how long. Filled from the command-line flags
// in main.cc; everything else in client/loadgen takes it as plain data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "server/core/attention_problem.h"

namespace attnd::loadgen {

// kTrain: one training step per call, a Forward then its Backward (with `resident`, the Backward
// names the Forward's handle and sends grad_out alone).
enum class Direction { kForward, kBackward, kTrain };
// How tensor bytes reach the daemon (server/transport): in the protobuf messages, in a shared-memory
// region each load thread registers, or in GPU memory each thread shares by CUDA IPC.
enum class Transport { kProto, kSharedMemory, kCudaIpc };
enum class Arrival { kPoisson, kConstant };

struct LoadSpec {
  std::string target;
  int concurrency = 1;       // closed-loop clients, each with one call in flight at all times
  double rate = 0;           // > 0: open loop, this many calls/s offered whatever the answers do
  Arrival arrival = Arrival::kPoisson;  // open loop: the gaps between scheduled sends
  int max_in_flight = 4096;  // open loop: sends wait (their latency still counting) beyond this
  int connections = 0;       // gRPC channels (TCP connections) they share; 0: one per client
  double duration_s = 10;    // how long to keep issuing calls (ignored when requests > 0)
  int64_t requests = 0;      // total calls to issue; > 0 overrides duration_s
  double warmup_s = 0;       // calls started in the first warmup_s seconds are not measured
  // Measurement windows: > 0 measures consecutive windows of window_s seconds after the warm-up
  // and ends the step once the last stable_windows windows agree within `stability` (relative) in
  // throughput and p99, or after duration_s (the step's cap). The report covers those windows.
  // 0: one measurement of duration_s (or of `requests` calls).
  double window_s = 0;
  int stable_windows = 3;
  double stability = 0.10;
  double timeout_s = 60;     // per-call deadline
  double connect_timeout_s = 10;  // how long to wait for the daemon before giving up
  // Forward/Backward with more request tensor bytes go over the streamed RPCs (ClientOptions).
  int64_t stream_above_bytes = int64_t{8} << 20;

  // Request shape. seqlen_k / heads_kv of 0 mean "same as seqlen_q / heads_q".
  int batch = 1;
  int seqlen_q = 1024;
  int seqlen_k = 0;
  int heads_q = 16;
  int heads_kv = 0;
  int head_dim = 128;
  DType dtype = DType::kBF16;
  bool causal = false;
  bool varlen = false;       // packed layout with random per-sequence lengths up to seqlen_q/k
  Direction direction = Direction::kForward;
  Transport transport = Transport::kProto;
  bool resident = false;     // kTrain: keep the forward's tensors in the daemon for the backward

  int payloads = 4;          // distinct random requests, rotated so no cache sees one payload twice in a row
  uint64_t seed = 1;

  // Mixed workloads (--workload_file, workload_file.h): each payload belongs to one workload, and a
  // call picks its workload with these weights. Empty: one workload, payloads in rotation.
  std::vector<std::string> workload_names;
  std::vector<double> workload_weights;
  int cuda_device = 0;       // the GPU of --transport=cuda_ipc regions

  bool check = false;        // compare sampled responses with the local CPU backend
  int check_every = 1;       // check every Nth completed call
  double check_tolerance = 0;  // relative L2 bound; 0: the dtype's default (see DefaultTolerance)
  int check_threads = 0;     // threads of the local CPU backend; 0: all

  int resolved_seqlen_k() const { return seqlen_k > 0 ? seqlen_k : seqlen_q; }
  int resolved_heads_kv() const { return heads_kv > 0 ? heads_kv : heads_q; }
};

const char* TransportName(Transport t);  // "proto", "shm", "cuda_ipc"
const char* DirectionName(Direction d);  // "forward", "backward", "train"

// Relative L2 error allowed by --check per dtype: bf16 2e-2, fp16 5e-3, fp32 1e-3. Loose enough
// for any correct kernel's rounding (GPU kernels accumulate in FP32 in a different order), tight
// enough that a wrong result (relative error near 1) never passes.
double DefaultTolerance(DType dtype);

}  // namespace attnd::loadgen
