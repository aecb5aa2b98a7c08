// The CPU forward pass: out = softmax(scale * Q K^T) V and its logsumexp, on host buffers.
#pragma once

#include "server/backends/cpu/cpu_isa.h"
#include "server/backends/cpu/thread_pool.h"
#include "server/core/attention_problem.h"

namespace attnd::cpu {

// Runs one validated forward call on `pool` with the tile loops compiled for `isa`.
void RunForward(const ForwardArgs& args, CpuIsa isa, ThreadPool& pool);

}  // namespace attnd::cpu
