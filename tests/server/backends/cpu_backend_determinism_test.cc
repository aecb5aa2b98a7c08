// The CPU backend's result does not depend on how its work is spread: thread count, backward
// schedule and concurrent callers give identical bits; every instruction-set variant this CPU
// runs matches the oracle.
#include <memory>
#include <thread>

#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/backends/cpu/cpu_backend_options.h"
#include "tests/server/backends/attention_case.h"

namespace attnd::testing {
namespace {

using cpu::BackwardSchedule;

// Uneven sequences (one longer than a tile, one empty), causal, GQA: every task boundary shows.
const AttentionCase kUneven{"uneven", {130, 7, 64, 0, 200}, {100, 7, 200, 5, 150}, 4, 2, 40, true, true, 0.f};

std::unique_ptr<Backend> MakeBackend(int threads, BackwardSchedule schedule,
                                     std::optional<cpu::CpuIsa> isa = std::nullopt) {
  CpuBackendOptions o;
  o.threads = threads;
  o.backward_schedule = schedule;
  o.isa = isa;
  absl::StatusOr<std::unique_ptr<Backend>> b = CreateCpuBackendWithOptions(o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

TEST(CpuBackendDeterminism, ThreadCountAndScheduleGiveIdenticalBits) {
  for (DType dtype : {DType::kBF16, DType::kFP32}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Problem p = MakeProblem(kUneven, dtype, FreshSeed());
    std::unique_ptr<Backend> one = MakeBackend(1, BackwardSchedule::kAuto);
    const ForwardOutputs f1 = RunForward(*one, p);
    const BackwardOutputs b1 = RunBackward(*one, p, f1.out, f1.lse);
    ASSERT_EQ(CountNonFinite(Decode(f1.out)), 0);
    ASSERT_EQ(CountNonFinite(Decode(b1.dq)), 0);
    for (int threads : {2, 3, 5}) {
      for (BackwardSchedule schedule :
           {BackwardSchedule::kAuto, BackwardSchedule::kPerKvHead, BackwardSchedule::kSplit}) {
        SCOPED_TRACE(::testing::Message() << threads << " threads, schedule " << int(schedule));
        std::unique_ptr<Backend> many = MakeBackend(threads, schedule);
        const ForwardOutputs f = RunForward(*many, p);
        EXPECT_TRUE(SameBytes(f.out, f1.out));
        EXPECT_TRUE(SameBits(f.lse, f1.lse));
        const BackwardOutputs b = RunBackward(*many, p, f1.out, f1.lse);
        EXPECT_TRUE(SameBytes(b.dq, b1.dq));
        EXPECT_TRUE(SameBytes(b.dk, b1.dk));
        EXPECT_TRUE(SameBytes(b.dv, b1.dv));
      }
    }
  }
}

TEST(CpuBackendDeterminism, ConcurrentCallersGetTheirOwnResults) {
  std::unique_ptr<Backend> shared = MakeBackend(2, BackwardSchedule::kAuto);
  std::unique_ptr<Backend> alone = MakeBackend(2, BackwardSchedule::kAuto);
  constexpr int kCallers = 4;
  std::vector<Problem> problems;
  for (int i = 0; i < kCallers; ++i) {
    problems.push_back(MakeProblem(kUneven, i % 2 ? DType::kBF16 : DType::kFP16, FreshSeed()));
  }
  std::vector<ForwardOutputs> fwd(kCallers);
  std::vector<BackwardOutputs> bwd(kCallers);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      fwd[i] = RunForward(*shared, problems[i]);
      bwd[i] = RunBackward(*shared, problems[i], fwd[i].out, fwd[i].lse);
    });
  }
  for (std::thread& t : callers) t.join();
  for (int i = 0; i < kCallers; ++i) {
    const ForwardOutputs f = RunForward(*alone, problems[i]);
    const BackwardOutputs b = RunBackward(*alone, problems[i], f.out, f.lse);
    EXPECT_TRUE(SameBytes(fwd[i].out, f.out)) << "caller " << i;
    EXPECT_TRUE(SameBits(fwd[i].lse, f.lse)) << "caller " << i;
    EXPECT_TRUE(SameBytes(bwd[i].dq, b.dq) && SameBytes(bwd[i].dk, b.dk) && SameBytes(bwd[i].dv, b.dv))
        << "caller " << i;
  }
}

TEST(CpuBackendInstructionSets, EveryAvailableVariantMatchesOracle) {
  for (cpu::CpuIsa isa : cpu::AvailableCpuIsas()) {
    for (DType dtype : {DType::kBF16, DType::kFP32}) {
      SCOPED_TRACE(::testing::Message() << cpu::CpuIsaName(isa) << " " << DTypeName(dtype));
      const Problem p = MakeProblem(kUneven, dtype, FreshSeed());
      std::unique_ptr<Backend> backend = MakeBackend(2, BackwardSchedule::kAuto, isa);
      const ForwardOutputs f = RunForward(*backend, p);
      const ReferenceForward want_f =
          ReferenceAttentionForward(p.shape, p.options, p.q.values, p.k.values, p.v.values);
      EXPECT_LE(RelativeL2Error(Decode(f.out), want_f.out), RelTolerance(dtype));
      EXPECT_EQ(CompareLse(f.lse, want_f.lse, dtype), 0);
      const BackwardOutputs b = RunBackward(*backend, p, f.out, f.lse);
      const ReferenceBackward want_b =
          ReferenceAttentionBackward(p.shape, p.options, p.q.values, p.k.values, p.v.values, p.dout.values);
      const double scale = Rms(want_b.grad_v);
      EXPECT_LE(GradientError(Decode(b.dq), want_b.grad_q, scale), RelTolerance(dtype));
      EXPECT_LE(GradientError(Decode(b.dk), want_b.grad_k, scale), RelTolerance(dtype));
      EXPECT_LE(GradientError(Decode(b.dv), want_b.grad_v, scale), RelTolerance(dtype));
    }
  }
}

}  // namespace
}  // namespace attnd::testing
