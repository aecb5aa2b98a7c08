#include "server/backends/cpu/cpu_isa.h"

namespace attnd::cpu {

std::string_view CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kBaseline: return "baseline";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "?";
}

std::vector<CpuIsa> AvailableCpuIsas() {
  std::vector<CpuIsa> isas = {CpuIsa::kBaseline};
#if ATTND_CPU_HAVE_X86_VARIANTS
  // libgcc's feature probe also checks that the OS saves the wide registers (XGETBV).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    isas.push_back(CpuIsa::kAvx2);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      isas.push_back(CpuIsa::kAvx512);
    }
  }
#endif
  return isas;
}

CpuIsa BestCpuIsa() { return AvailableCpuIsas().back(); }

}  // namespace attnd::cpu
