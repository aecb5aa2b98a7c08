// The payloads the transport benchmarks move: the request and response tensor bytes of one attnd
// Forward at the shape (B=1, H=16, d=128, bf16: q, k, v in; out and the FP32 lse back),
// and symmetric sizes for the collapse the issue reports at 32 and 128 MiB.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace attnd::bench {

struct PayloadSize {
  std::string name;
  int64_t request_bytes = 0;
  int64_t response_bytes = 0;
  int64_t total() const { return request_bytes + response_bytes; }
};

// Forward of B=1, H=16, d=128, bf16 at `seqlen`: q, k, v in; out (bf16) and lse (fp32) back.
inline PayloadSize ForwardPayload(int seqlen) {
  const int64_t tensor = int64_t{seqlen} * 16 * 128 * 2;
  const int64_t lse = int64_t{seqlen} * 16 * 4;
  return {"fwd_s" + std::to_string(seqlen), 3 * tensor, tensor + lse};
}

inline PayloadSize SymmetricPayload(int64_t mib) {
  return {"echo_" + std::to_string(mib) + "MiB", mib << 20, mib << 20};
}

// "fwd_s1024", "fwd_s4096", "echo_32MiB", ... from a name list; unknown names are skipped by the caller.
inline std::vector<PayloadSize> DefaultPayloads() {
  return {ForwardPayload(1024), ForwardPayload(4096), ForwardPayload(16384), SymmetricPayload(32),
          SymmetricPayload(128)};
}

}  // namespace attnd::bench
