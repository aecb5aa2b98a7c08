// Which vector instruction set the CPU backend's tile loops are compiled for, chosen at run time.
//
// The kernels are built once per instruction set from the same source (a template on the vector
// width, instantiated inside functions carrying a target attribute), so a binary built for plain
// x86-64 still uses AVX2/FMA or AVX-512 where the CPU has them and never executes them where it
// does not. Everything those functions inline is compiled for their target, and every function
// that is not inlined keeps the baseline target, so no wide instruction can leak into code that
// runs on an older CPU.
#pragma once

#include <string_view>
#include <vector>

namespace attnd::cpu {

enum class CpuIsa {
  kBaseline,  // what the compiler targets by default (SSE2 on x86-64, NEON on arm64)
  kAvx2,      // x86-64 with AVX2 and FMA
  kAvx512,    // x86-64 with AVX-512 F/BW/DQ/VL
};

std::string_view CpuIsaName(CpuIsa isa);

// The widest instruction set both this build and this CPU support.
CpuIsa BestCpuIsa();

// Every instruction set this build and this CPU support, baseline first.
std::vector<CpuIsa> AvailableCpuIsas();

}  // namespace attnd::cpu

// Attributes for the per-instruction-set entry points. Empty where the build has no such variant.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define ATTND_CPU_HAVE_X86_VARIANTS 1
#define ATTND_TARGET_AVX2 __attribute__((target("avx2,fma")))
// Both compilers default to 256-bit vectors for auto-vectorized loops even with AVX-512 enabled;
// each has its own way to ask for 512 (Clang ignores the whole target string if it sees GCC's).
#if defined(__clang__)
#define ATTND_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"), min_vector_width(512)))
#else
#define ATTND_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")))
#endif
#else
#define ATTND_CPU_HAVE_X86_VARIANTS 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ATTND_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ATTND_ALWAYS_INLINE inline
#endif
