// CpuBackend: checks each call's arguments (cheaply, as a last line of defence behind the front
// end's validation) and runs the tiled forward/backward on its own thread pool.
#include "server/backends/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/backends/cpu/cpu_backend_options.h"
#include "server/backends/cpu/cpu_backward.h"
#include "server/backends/cpu/cpu_forward.h"
#include "server/backends/cpu/thread_pool.h"

namespace attnd {
namespace {

absl::Status CheckShape(const AttentionShape& s) {
  if (s.batch < 0) return absl::InvalidArgumentError(absl::StrCat("batch ", s.batch, " is negative"));
  if (s.heads_q <= 0 || s.heads_kv <= 0 || s.heads_q % s.heads_kv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("heads_q (", s.heads_q,
                                                   ") must be a positive multiple of heads_kv (",
                                                   s.heads_kv, ")"));
  }
  if (s.head_dim < 1 || s.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", s.head_dim, " is outside 1..", kMaxHeadDim));
  }
  const size_t offsets = static_cast<size_t>(s.batch) + 1;
  if (s.cu_seqlens_q.size() != offsets || s.cu_seqlens_k.size() != offsets) {
    return absl::InvalidArgumentError(absl::StrCat("cu_seqlens_q/cu_seqlens_k must hold batch + 1 = ",
                                                   offsets, " offsets"));
  }
  for (const auto* cu : {&s.cu_seqlens_q, &s.cu_seqlens_k}) {
    const bool is_q = cu == &s.cu_seqlens_q;
    const char* field = is_q ? "cu_seqlens_q" : "cu_seqlens_k";
    const int64_t total = is_q ? s.total_q : s.total_k;
    const int max_len = is_q ? s.max_seqlen_q : s.max_seqlen_k;
    if ((*cu)[0] != 0 || (*cu)[s.batch] != total) {
      return absl::InvalidArgumentError(absl::StrCat(field, " must run from 0 to ", total));
    }
    for (int b = 0; b < s.batch; ++b) {
      const int64_t len = int64_t{(*cu)[b + 1]} - (*cu)[b];
      if (len < 0 || len > max_len) {
        return absl::InvalidArgumentError(absl::StrCat(field, "[", b + 1, "] - ", field, "[", b, "] = ", len,
                                                       " is outside 0..", max_len));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckCommon(const AttentionShape* shape, const AttentionOptions& options) {
  if (shape == nullptr) return absl::InvalidArgumentError("shape is missing");
  if (!(std::isfinite(options.softmax_scale) && options.softmax_scale != 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("softmax_scale ", options.softmax_scale, " must be finite and resolved (non-zero)"));
  }
  return CheckShape(*shape);
}

// Device-resident tensors (TensorPlacement::kDevice) are GPU memory this backend cannot read.
absl::Status CheckOnHost(const TensorPlacement& placement) {
  if (placement.space == MemorySpace::kHost) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("the cpu backend computes on host memory; the call's tensors are ",
                                                    "on CUDA device ", placement.device));
}

absl::Status CheckBuffer(const void* p, int64_t elements, const char* field) {
  if (p == nullptr && elements > 0) return absl::InvalidArgumentError(absl::StrCat(field, " is missing"));
  return absl::OkStatus();
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, cpu::CpuIsa isa, cpu::BackwardSchedule schedule)
      : pool_(threads), isa_(isa), schedule_(schedule) {}

  std::string_view name() const override { return "cpu"; }

  std::vector<DeviceDescription> Devices() const override {
    DeviceDescription d;
    d.index = 0;
    d.name = absl::StrCat("host CPU (", std::string(cpu::CpuIsaName(isa_)), ", ", pool_.threads(), " threads)");
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) d.total_memory_bytes = int64_t{pages} * page_size;
    d.multiprocessors = pool_.threads();
    return {d};
  }

  absl::Status CheckSupported(const AttentionShape& shape, DType dtype) const override {
    (void)dtype;  // BF16, FP16 and FP32 all run
    if (shape.head_dim < 1 || shape.head_dim > kMaxHeadDim) {
      return absl::InvalidArgumentError(absl::StrCat("head_dim ", shape.head_dim,
                                                     " is not supported by the cpu backend (1..",
                                                     kMaxHeadDim, ")"));
    }
    if (shape.heads_q <= 0 || shape.heads_kv <= 0 || shape.heads_q % shape.heads_kv != 0) {
      return absl::InvalidArgumentError(absl::StrCat("heads_q (", shape.heads_q,
                                                     ") must be a positive multiple of heads_kv (",
                                                     shape.heads_kv, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status Forward(const ForwardArgs& args) override {
    if (absl::Status st = CheckOnHost(args.placement); !st.ok()) return st;
    if (absl::Status st = CheckCommon(args.shape, args.options); !st.ok()) return st;
    const AttentionShape& s = *args.shape;
    for (absl::Status st : {CheckBuffer(args.q, s.q_elements(), "q"), CheckBuffer(args.k, s.kv_elements(), "k"),
                            CheckBuffer(args.v, s.kv_elements(), "v"),
                            CheckBuffer(args.out, s.q_elements(), "out"),
                            CheckBuffer(args.lse, s.lse_elements(), "lse")}) {
      if (!st.ok()) return st;
    }
    cpu::RunForward(args, isa_, pool_);
    return absl::OkStatus();
  }

  absl::Status Backward(const BackwardArgs& args) override {
    if (absl::Status st = CheckOnHost(args.placement); !st.ok()) return st;
    if (absl::Status st = CheckCommon(args.shape, args.options); !st.ok()) return st;
    const AttentionShape& s = *args.shape;
    for (absl::Status st : {CheckBuffer(args.q, s.q_elements(), "q"), CheckBuffer(args.k, s.kv_elements(), "k"),
                            CheckBuffer(args.v, s.kv_elements(), "v"),
                            CheckBuffer(args.out, s.q_elements(), "out"),
                            CheckBuffer(args.lse, s.lse_elements(), "lse"),
                            CheckBuffer(args.grad_out, s.q_elements(), "grad_out"),
                            CheckBuffer(args.grad_q, s.q_elements(), "grad_q"),
                            CheckBuffer(args.grad_k, s.kv_elements(), "grad_k"),
                            CheckBuffer(args.grad_v, s.kv_elements(), "grad_v")}) {
      if (!st.ok()) return st;
    }
    cpu::RunBackward(args, isa_, schedule_, pool_);
    return absl::OkStatus();
  }

 private:
  cpu::ThreadPool pool_;
  const cpu::CpuIsa isa_;
  const cpu::BackwardSchedule schedule_;
};

int ResolveThreads(int threads) {
  if (threads > 0) return threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackendWithOptions(const CpuBackendOptions& options) {
  cpu::CpuIsa isa = cpu::BestCpuIsa();
  if (options.isa.has_value()) {
    const std::vector<cpu::CpuIsa> available = cpu::AvailableCpuIsas();
    if (std::find(available.begin(), available.end(), *options.isa) == available.end()) {
      return absl::FailedPreconditionError(absl::StrCat("cpu backend: instruction set ",
                                                        std::string(cpu::CpuIsaName(*options.isa)),
                                                        " is not available on this CPU"));
    }
    isa = *options.isa;
  }
  return std::make_unique<CpuBackend>(ResolveThreads(options.threads), isa, options.backward_schedule);
}

std::unique_ptr<Backend> CreateCpuBackend(int threads) {
  return std::make_unique<CpuBackend>(ResolveThreads(threads), cpu::BestCpuIsa(),
                                      cpu::BackwardSchedule::kAuto);
}

}  // namespace attnd
