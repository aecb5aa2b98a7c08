#include "client/loadgen/payloads.h"

#include <cmath>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/attnd/tensors.h"
#include "server/backends/backend_factory.h"

namespace attnd::loadgen {

const char* TransportName(Transport t) {
  switch (t) {
    case Transport::kProto: return "proto";
    case Transport::kSharedMemory: return "shm";
    case Transport::kCudaIpc: return "cuda_ipc";
  }
  return "?";
}

const char* DirectionName(Direction d) {
  switch (d) {
    case Direction::kForward: return "forward";
    case Direction::kBackward: return "backward";
    case Direction::kTrain: return "train";
  }
  return "?";
}

double DefaultTolerance(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return 2e-2;
    case DType::kFP16: return 5e-3;
    case DType::kFP32: return 1e-3;
  }
  return 2e-2;
}

namespace {

AttentionShape RandomShape(const LoadSpec& spec, std::mt19937_64& rng) {
  const int seqlen_k = spec.resolved_seqlen_k();
  const int heads_kv = spec.resolved_heads_kv();
  if (!spec.varlen) return DenseShape(spec.batch, spec.seqlen_q, seqlen_k, spec.heads_q, heads_kv, spec.head_dim);
  std::uniform_int_distribution<int> len_q(1, spec.seqlen_q);
  std::uniform_int_distribution<int> len_k(1, seqlen_k);
  std::vector<int> lengths_q(spec.batch), lengths_k(spec.batch);
  for (int b = 0; b < spec.batch; ++b) {
    lengths_q[b] = len_q(rng);
    lengths_k[b] = len_k(rng);
  }
  return PackedShape(lengths_q, lengths_k, spec.heads_q, heads_kv, spec.head_dim);
}

// Normal random values, already rounded to `dtype` and encoded as its bytes.
std::string RandomBytes(int64_t n, DType dtype, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> values(n);
  for (float& x : values) x = normal(rng);
  return EncodeFloats(dtype, values);
}

double Flops(const AttentionShape& s, const LoadSpec& spec) {
  double pairs = 0;
  for (int b = 0; b < s.batch; ++b) pairs += double{1} * s.seqlen_q(b) * s.seqlen_k(b);
  double flops = 4 * pairs * s.heads_q * s.head_dim;
  if (spec.causal) flops /= 2;
  if (spec.direction == Direction::kBackward) flops *= 2.5;
  if (spec.direction == Direction::kTrain) flops *= 3.5;  // forward + backward
  return flops;
}

v1::Tensor Wrap(DType dtype, std::vector<int64_t> shape, std::string bytes) {
  v1::Tensor t;
  t.set_dtype(ToProtoDType(dtype));
  t.mutable_shape()->Assign(shape.begin(), shape.end());
  *t.mutable_data() = std::move(bytes);
  return t;
}

// Runs the local forward on the payload's tensors; fills out (in dtype) and lse (FP32).
absl::Status LocalForward(Backend& backend, const AttentionShape& shape, const AttentionOptions& options, DType dtype,
                          const std::string& q, const std::string& k, const std::string& v, std::string* out,
                          std::vector<float>* lse) {
  out->assign(shape.q_elements() * ElementSize(dtype), '\0');
  lse->assign(shape.lse_elements(), 0.f);
  ForwardArgs args;
  args.shape = &shape;
  args.options = options;
  args.dtype = dtype;
  args.q = q.data();
  args.k = k.data();
  args.v = v.data();
  args.out = out->data();
  args.lse = lse->data();
  return backend.Forward(args);
}

std::string LseBytes(const std::vector<float>& lse) { return EncodeFloats(DType::kFP32, lse); }

absl::StatusOr<Payload> BuildOne(const LoadSpec& spec, Backend* backend, std::mt19937_64& rng) {
  Payload p;
  p.direction = spec.direction;
  p.transport = spec.transport;
  p.resident = spec.resident;
  p.shape = RandomShape(spec, rng);
  const AttentionShape& shape = p.shape;
  const DType dtype = spec.dtype;
  if (backend != nullptr) {
    if (absl::Status s = backend->CheckSupported(shape, dtype); !s.ok()) return s;
  }
  AttentionOptions wire_options;
  wire_options.causal = spec.causal;
  wire_options.softmax_scale = 0.f;  // the daemon's default, 1/sqrt(head_dim)
  AttentionOptions local_options = wire_options;
  local_options.softmax_scale = 1.f / std::sqrt(static_cast<float>(spec.head_dim));

  std::string q = RandomBytes(shape.q_elements(), dtype, rng);
  std::string k = RandomBytes(shape.kv_elements(), dtype, rng);
  std::string v = RandomBytes(shape.kv_elements(), dtype, rng);
  p.flops = Flops(shape, spec);
  const v1::AttentionParams params = MakeParams(shape, wire_options);

  if (spec.direction == Direction::kTrain) {
    // A Forward and the Backward of it. Its out/lse come from the local CPU backend; the daemon's
    // own forward result agrees within rounding, and the backward uses its own (resident) or these.
    auto forward = std::make_shared<v1::ForwardRequest>();
    std::string out;
    std::vector<float> lse;
    if (absl::Status s = LocalForward(*backend, shape, local_options, dtype, q, k, v, &out, &lse); !s.ok()) return s;
    std::string grad_out = RandomBytes(shape.q_elements(), dtype, rng);
    *forward->mutable_q() = Wrap(dtype, WireQShape(shape), q);
    *forward->mutable_k() = Wrap(dtype, WireKVShape(shape), k);
    *forward->mutable_v() = Wrap(dtype, WireKVShape(shape), v);
    *forward->mutable_params() = params;
    auto backward = std::make_shared<v1::BackwardRequest>();
    *backward->mutable_q() = Wrap(dtype, WireQShape(shape), std::move(q));
    *backward->mutable_k() = Wrap(dtype, WireKVShape(shape), std::move(k));
    *backward->mutable_v() = Wrap(dtype, WireKVShape(shape), std::move(v));
    *backward->mutable_out() = Wrap(dtype, WireQShape(shape), std::move(out));
    *backward->mutable_lse() = Wrap(DType::kFP32, WireLseShape(shape), LseBytes(lse));
    *backward->mutable_grad_out() = Wrap(dtype, WireQShape(shape), std::move(grad_out));
    *backward->mutable_params() = params;
    // Logical tensor bytes of the step; what crosses the wire is measured per call.
    const int64_t q_bytes = shape.q_elements() * ElementSize(dtype);
    const int64_t kv_bytes = shape.kv_elements() * ElementSize(dtype);
    p.request_bytes = PayloadBytes(*forward) + (spec.resident ? q_bytes : PayloadBytes(*backward));
    p.response_bytes = q_bytes + shape.lse_elements() * 4 + q_bytes + 2 * kv_bytes;
    p.forward = std::move(forward);
    p.backward = std::move(backward);
    return p;
  }

  if (spec.direction == Direction::kForward) {
    auto request = std::make_shared<v1::ForwardRequest>();
    if (spec.check) {
      std::string out;
      std::vector<float> lse;
      if (absl::Status s = LocalForward(*backend, shape, local_options, dtype, q, k, v, &out, &lse); !s.ok()) return s;
      v1::ForwardResponse expected;
      *expected.mutable_out() = Wrap(dtype, WireQShape(shape), std::move(out));
      *expected.mutable_lse() = Wrap(DType::kFP32, WireLseShape(shape), LseBytes(lse));
      p.expected_forward = std::move(expected);
    }
    *request->mutable_q() = Wrap(dtype, WireQShape(shape), std::move(q));
    *request->mutable_k() = Wrap(dtype, WireKVShape(shape), std::move(k));
    *request->mutable_v() = Wrap(dtype, WireKVShape(shape), std::move(v));
    *request->mutable_params() = params;
    p.request_bytes = PayloadBytes(*request);
    p.response_bytes = shape.q_elements() * ElementSize(dtype) + shape.lse_elements() * 4;
    p.forward = std::move(request);
    return p;
  }

  // Backward: out and lse from the local forward, a random grad_out.
  std::string out;
  std::vector<float> lse;
  if (absl::Status s = LocalForward(*backend, shape, local_options, dtype, q, k, v, &out, &lse); !s.ok()) return s;
  std::string grad_out = RandomBytes(shape.q_elements(), dtype, rng);
  if (spec.check) {
    std::string dq(shape.q_elements() * ElementSize(dtype), '\0');
    std::string dk(shape.kv_elements() * ElementSize(dtype), '\0');
    std::string dv(shape.kv_elements() * ElementSize(dtype), '\0');
    BackwardArgs args;
    args.shape = &shape;
    args.options = local_options;
    args.dtype = dtype;
    args.q = q.data();
    args.k = k.data();
    args.v = v.data();
    args.out = out.data();
    args.lse = lse.data();
    args.grad_out = grad_out.data();
    args.grad_q = dq.data();
    args.grad_k = dk.data();
    args.grad_v = dv.data();
    if (absl::Status s = backend->Backward(args); !s.ok()) return s;
    v1::BackwardResponse expected;
    *expected.mutable_grad_q() = Wrap(dtype, WireQShape(shape), std::move(dq));
    *expected.mutable_grad_k() = Wrap(dtype, WireKVShape(shape), std::move(dk));
    *expected.mutable_grad_v() = Wrap(dtype, WireKVShape(shape), std::move(dv));
    p.expected_backward = std::move(expected);
  }
  auto request = std::make_shared<v1::BackwardRequest>();
  *request->mutable_q() = Wrap(dtype, WireQShape(shape), std::move(q));
  *request->mutable_k() = Wrap(dtype, WireKVShape(shape), std::move(k));
  *request->mutable_v() = Wrap(dtype, WireKVShape(shape), std::move(v));
  *request->mutable_out() = Wrap(dtype, WireQShape(shape), std::move(out));
  *request->mutable_lse() = Wrap(DType::kFP32, WireLseShape(shape), LseBytes(lse));
  *request->mutable_grad_out() = Wrap(dtype, WireQShape(shape), std::move(grad_out));
  *request->mutable_params() = params;
  p.request_bytes = PayloadBytes(*request);
  p.response_bytes = (shape.q_elements() + 2 * shape.kv_elements()) * ElementSize(dtype);
  p.backward = std::move(request);
  return p;
}

}  // namespace

absl::StatusOr<std::vector<Payload>> BuildPayloads(const LoadSpec& spec) {
  std::unique_ptr<Backend> backend;
  if (spec.check || spec.direction != Direction::kForward) {
    BackendOptions options;
    options.cpu_threads = spec.check_threads;
    absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend("cpu", options);
    if (!cpu.ok()) return cpu.status();
    backend = std::move(*cpu);
  }
  std::mt19937_64 rng(spec.seed);
  std::vector<Payload> payloads;
  for (int i = 0; i < spec.payloads; ++i) {
    absl::StatusOr<Payload> p = BuildOne(spec, backend.get(), rng);
    if (!p.ok()) {
      return absl::Status(p.status().code(), absl::StrCat("local CPU backend on payload ", i, ": ", p.status().message()));
    }
    payloads.push_back(std::move(*p));
  }
  return payloads;
}

}  // namespace attnd::loadgen
