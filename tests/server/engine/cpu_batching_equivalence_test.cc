// Batched == unbatched, bit for bit, on the real CPU backend: a packed batch must give every
// caller exactly the bits it would get alone (the CPU backend's rows must not depend on their
// batch neighbours). Mixed dense and packed callers, GQA, causal with seqlen_q != seqlen_k
// (including query rows that see no key: out 0, lse +inf), bf16 and fp32, forward and backward.
#include <cstring>

#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/engine/dynamic_batcher.h"
#include "tests/server/engine/engine_test_util.h"

namespace attnd::engine::testing {
namespace {

struct Case {
  DType dtype;
  bool causal;
};
void PrintTo(const Case& c, std::ostream* os) { *os << DTypeName(c.dtype) << (c.causal ? " causal" : " full"); }

class CpuBatchingEquivalence : public ::testing::TestWithParam<Case> {};

std::vector<std::unique_ptr<TestCall>> Calls(const Case& c, uint32_t seed) {
  const AttentionOptions options{c.causal, 0.17f, false};
  std::vector<AttentionShape> shapes = {
      DenseShape(2, 9, 5, 4, 2, 32),             // causal: the first 4 rows of each sequence see no key
      PackedShape({1, 17, 33}, {40, 3, 17}, 4, 2, 32),
      DenseShape(1, 64, 100, 4, 2, 32),
      PackedShape({100, 0}, {64, 7}, 4, 2, 32),
      DenseShape(3, 1, 1, 4, 2, 32),
  };
  std::vector<std::unique_ptr<TestCall>> calls;
  for (size_t i = 0; i < shapes.size(); ++i) {
    calls.push_back(MakeCall(shapes[i], seed + i, c.dtype, options, /*integers=*/false));
  }
  return calls;
}

// Runs every call through one packed batch (the batch is full when the last one arrives).
template <typename SubmitFn>
void RunAsOneBatch(Backend* backend, size_t n, SubmitFn submit) {
  BatcherOptions o;
  o.max_queue_delay = absl::Hours(1);
  o.max_batch_requests = static_cast<int>(n);
  DynamicBatcher batcher(backend, o);
  std::vector<Outcome> outcomes(n);
  for (size_t i = 0; i < n; ++i) submit(batcher, i, outcomes[i].Callback());
  for (Outcome& r : outcomes) ASSERT_TRUE(r.Wait().ok()) << r.status;
  const BatcherStats st = batcher.Stats();
  ASSERT_EQ(st.batches_run, 1);
  ASSERT_EQ(st.requests_per_batch.max(), static_cast<int64_t>(n));
}

TEST_P(CpuBatchingEquivalence, ForwardBatchedEqualsUnbatchedBitForBit) {
  std::unique_ptr<Backend> cpu = CreateCpuBackend(2);
  auto alone = Calls(GetParam(), 100);
  auto batched = Calls(GetParam(), 100);  // same inputs
  for (auto& c : alone) ASSERT_TRUE(cpu->Forward(c->Forward()).ok());
  RunAsOneBatch(cpu.get(), batched.size(), [&](DynamicBatcher& b, size_t i, DynamicBatcher::Completion done) {
    b.SubmitForward(batched[i]->Forward(), std::move(done));
  });
  for (size_t i = 0; i < alone.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(batched[i]->out, alone[i]->out);
    ASSERT_EQ(batched[i]->lse.size(), alone[i]->lse.size());
    EXPECT_EQ(std::memcmp(batched[i]->lse.data(), alone[i]->lse.data(), alone[i]->lse.size() * 4), 0);
  }
  if (GetParam().causal) {  // the case exercises rows that see no key
    EXPECT_TRUE(std::isinf(alone[0]->lse[0]));
  }
}

TEST_P(CpuBatchingEquivalence, BackwardBatchedEqualsUnbatchedBitForBit) {
  std::unique_ptr<Backend> cpu = CreateCpuBackend(2);
  auto alone = Calls(GetParam(), 200);
  auto batched = Calls(GetParam(), 200);
  for (size_t i = 0; i < alone.size(); ++i) {  // real out and lse as the backward's inputs
    ASSERT_TRUE(cpu->Forward(alone[i]->Forward()).ok());
    batched[i]->out = alone[i]->out;
    batched[i]->lse = alone[i]->lse;
  }
  for (auto& c : alone) ASSERT_TRUE(cpu->Backward(c->Backward()).ok());
  RunAsOneBatch(cpu.get(), batched.size(), [&](DynamicBatcher& b, size_t i, DynamicBatcher::Completion done) {
    b.SubmitBackward(batched[i]->Backward(), std::move(done));
  });
  for (size_t i = 0; i < alone.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(batched[i]->grad_q, alone[i]->grad_q);
    EXPECT_EQ(batched[i]->grad_k, alone[i]->grad_k);
    EXPECT_EQ(batched[i]->grad_v, alone[i]->grad_v);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypesAndMasks, CpuBatchingEquivalence,
                         ::testing::Values(Case{DType::kBF16, false}, Case{DType::kBF16, true},
                                           Case{DType::kFP32, true}, Case{DType::kFP16, true}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(DTypeName(info.param.dtype)) + (info.param.causal ? "_causal" : "_full");
                         });

}  // namespace
}  // namespace attnd::engine::testing
