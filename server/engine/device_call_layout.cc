#include "server/engine/device_call_layout.h"

#include <algorithm>

namespace attnd::engine {

size_t DeviceRequestBytes(size_t exact, size_t reserved, int64_t cap_bytes, int lanes) {
  if (reserved <= exact || cap_bytes <= 0) return exact;
  const auto budget = static_cast<uint64_t>(cap_bytes) / 4;
  const uint64_t all_lanes = static_cast<uint64_t>(reserved) * static_cast<uint64_t>(std::max(lanes, 1));
  return all_lanes <= budget ? reserved : exact;
}

}  // namespace attnd::engine
