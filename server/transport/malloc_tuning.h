// Heap settings for a process that moves messages of many MiB through gRPC.
//
// gRPC reads the socket into buffers from malloc, up to 4 MiB each. glibc's defaults hand such
// blocks back to the kernel when they are freed
// (mmap'd blocks are unmapped, a heap's free top is trimmed with madvise), so the next read lands
// in fresh pages, and every page costs a fault: measured on loopback, faults and TLB shootdowns
// from that churn took most of a 12 MiB call's CPU time (bench/results/2026-11-23_h100_transport.md).
// Keeping freed memory for reuse removes them. Process-wide: the attnd daemon, attn_loadgen and
// the transport benchmark call it first thing in main(); a program embedding attnd::Client may.
#pragma once

#include <malloc.h>

namespace attnd {

inline void TuneMallocForLargeMessages() {
  // Blocks up to 32 MiB (glibc's largest threshold) come from the heap, not from mmap...
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  // ...and freed heap memory stays mapped for the next message instead of being trimmed.
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
}

}  // namespace attnd
