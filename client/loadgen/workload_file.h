// Mixed workloads for attn_loadgen (--workload_file): a small text file, one workload per line,
// `key=value` pairs separated by spaces; '#' starts a comment. Keys a line leaves out keep the
// command line's values.
//
//   # name      shape                          kind                        how         share
//   name=decode seqlen_q=1 seqlen_k=4096      direction=forward           transport=shm    weight=8
//   name=prefill seqlen_q=4096 causal=true    direction=forward           transport=proto  weight=1
//   name=train  seqlen_q=2048 dtype=bf16      direction=train resident=1  transport=proto  weight=1
//
// Keys: name, weight (> 0, relative share of calls), batch, seqlen_q, seqlen_k, heads_q, heads_kv,
// head_dim, dtype (bf16|fp16|fp32), causal, varlen, resident (true|false|1|0), direction
// (forward|backward|train), transport (proto|shm|cuda_ipc), payloads.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/loadgen/load_spec.h"

namespace attnd::loadgen {

struct Workload {
  std::string name;
  double weight = 1;
  LoadSpec spec;  // the command line's spec with the line's keys applied
};

// INVALID_ARGUMENT naming the line and key for anything it does not understand.
absl::StatusOr<std::vector<Workload>> ParseWorkloads(const std::string& text, const LoadSpec& base);
absl::StatusOr<std::vector<Workload>> ReadWorkloadFile(const std::string& path, const LoadSpec& base);

absl::StatusOr<Direction> ParseDirection(const std::string& text);
absl::StatusOr<Transport> ParseTransport(const std::string& text);

}  // namespace attnd::loadgen
