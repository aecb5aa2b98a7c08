// The CPU backend: exact attention on the host with FP32 accumulation, tiled online softmax
// (O(N) memory), multithreaded. The embedded default on machines without a GPU.
#pragma once

#include <memory>

#include "server/backend.h"

namespace attnd {

// threads <= 0: one per hardware thread.
std::unique_ptr<Backend> CreateCpuBackend(int threads);

}  // namespace attnd
