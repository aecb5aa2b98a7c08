#include "client/loadgen/payload_sender.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "client/attnd/tensors.h"

namespace attnd::loadgen {
namespace {

constexpr uint64_t kAlign = 4096;

uint64_t Up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

int64_t TensorBytes(const v1::Tensor& t) { return static_cast<int64_t>(t.data().size()); }

// Bytes of the region a payload needs: its inputs, then room for its outputs.
uint64_t RegionBytes(const Payload& p) {
  uint64_t n = 0;
  if (p.forward) n += Up(TensorBytes(p.forward->q())) + 2 * Up(TensorBytes(p.forward->k()));
  if (p.backward) {
    for (const v1::Tensor* t : {&p.backward->q(), &p.backward->k(), &p.backward->v(), &p.backward->out(),
                                &p.backward->lse(), &p.backward->grad_out()}) {
      n += Up(TensorBytes(*t));
    }
  }
  const uint64_t q = Up(TensorBytes(p.forward ? p.forward->q() : p.backward->q()));
  const uint64_t kv = Up(TensorBytes(p.forward ? p.forward->k() : p.backward->k()));
  return n + 2 * q + 2 * kv + Up(p.shape.lse_elements() * 4);  // out, lse; grad_q, grad_k, grad_v
}

}  // namespace

// A payload's requests as sent through a region: every tensor a span, every output a span.
struct PayloadSender::Placed {
  v1::ForwardRequest forward;
  v1::BackwardRequest backward;  // full, or by handle (grad_out only) when resident
};

PayloadSender::PayloadSender(Client& client) : client_(client) {}

PayloadSender::~PayloadSender() {
  // Regions first (unmapped here), then the session (the daemon releases them).
  shm_.reset();
  cuda_.reset();
  session_.reset();
}

absl::StatusOr<std::unique_ptr<PayloadSender>> PayloadSender::Create(Client& client,
                                                                     const std::vector<Payload>& payloads,
                                                                     int cuda_device) {
  std::unique_ptr<PayloadSender> sender(new PayloadSender(client));
  uint64_t shm_bytes = 0, cuda_bytes = 0;
  for (const Payload& p : payloads) {
    if (p.transport == Transport::kSharedMemory) shm_bytes += RegionBytes(p);
    if (p.transport == Transport::kCudaIpc) cuda_bytes += RegionBytes(p);
  }
  if (shm_bytes + cuda_bytes > 0) {
    absl::StatusOr<std::unique_ptr<RegionSession>> session = RegionSession::Open(client);
    if (!session.ok()) return session.status();
    sender->session_ = *std::move(session);
  }
  if (shm_bytes > 0) {
    absl::StatusOr<std::unique_ptr<SharedMemoryRegion>> r =
        SharedMemoryRegion::Create(client, *sender->session_, shm_bytes, "loadgen");
    if (!r.ok()) return r.status();
    sender->shm_ = *std::move(r);
  }
  if (cuda_bytes > 0) {
    absl::StatusOr<std::unique_ptr<CudaMemoryRegion>> r =
        CudaMemoryRegion::Create(client, *sender->session_, cuda_bytes, cuda_device, "loadgen");
    if (!r.ok()) return r.status();
    sender->cuda_ = *std::move(r);
  }
  for (const Payload& p : payloads) {
    if (p.transport == Transport::kProto) continue;
    if (absl::Status s = sender->Place(p); !s.ok()) return s;
  }
  return sender;
}

v1::RegionSpan PayloadSender::Span(Transport t, uint64_t offset, uint64_t size) const {
  return t == Transport::kCudaIpc ? cuda_->Span(offset, size) : shm_->Span(offset, size);
}

absl::Status PayloadSender::Write(Transport t, uint64_t offset, const std::string& bytes) {
  if (t == Transport::kCudaIpc) return cuda_->Write(offset, bytes.data(), bytes.size());
  std::memcpy(static_cast<char*>(shm_->data()) + offset, bytes.data(), bytes.size());
  return absl::OkStatus();
}

absl::Status PayloadSender::Read(Transport t, const v1::RegionSpan& span, std::string* bytes) {
  bytes->resize(span.size());
  if (t == Transport::kCudaIpc) return cuda_->Read(span.offset(), bytes->data(), span.size());
  std::memcpy(bytes->data(), static_cast<const char*>(shm_->data()) + span.offset(), span.size());
  return absl::OkStatus();
}

absl::Status PayloadSender::Place(const Payload& p) {
  uint64_t& at = p.transport == Transport::kCudaIpc ? cuda_at_ : shm_at_;
  auto placed = std::make_unique<Placed>();
  auto put = [&](v1::Tensor* t) -> absl::Status {
    if (absl::Status s = Write(p.transport, at, t->data()); !s.ok()) return s;
    *t->mutable_region() = Span(p.transport, at, t->data().size());
    at += Up(t->data().size());
    t->clear_data();
    return absl::OkStatus();
  };
  const int64_t q_bytes = TensorBytes(p.forward ? p.forward->q() : p.backward->q());
  const int64_t kv_bytes = TensorBytes(p.forward ? p.forward->k() : p.backward->k());
  const int64_t lse_bytes = p.shape.lse_elements() * 4;
  if (p.forward) {
    placed->forward = *p.forward;
    for (v1::Tensor* t : {placed->forward.mutable_q(), placed->forward.mutable_k(), placed->forward.mutable_v()}) {
      if (absl::Status s = put(t); !s.ok()) return s;
    }
  }
  const uint64_t out = at, lse = out + Up(q_bytes), grads = lse + Up(lse_bytes);
  if (p.forward) {
    *placed->forward.mutable_out_region() = Span(p.transport, out, q_bytes);
    *placed->forward.mutable_lse_region() = Span(p.transport, lse, lse_bytes);
  }
  at = grads + Up(q_bytes) + 2 * Up(kv_bytes);  // grad_q, grad_k, grad_v, then the backward inputs
  if (p.backward) {
    placed->backward = *p.backward;
    v1::BackwardRequest& b = placed->backward;
    if (p.direction == Direction::kTrain) {
      // The backward's out and lse are the forward's, where the daemon wrote them.
      b.mutable_out()->clear_data();
      *b.mutable_out()->mutable_region() = Span(p.transport, out, q_bytes);
      b.mutable_lse()->clear_data();
      *b.mutable_lse()->mutable_region() = Span(p.transport, lse, lse_bytes);
      for (v1::Tensor* t : {b.mutable_q(), b.mutable_k(), b.mutable_v()}) {
        const v1::Tensor& from_forward = t == b.mutable_q() ? placed->forward.q()
                                         : t == b.mutable_k() ? placed->forward.k() : placed->forward.v();
        t->clear_data();
        *t->mutable_region() = from_forward.region();
      }
      if (absl::Status s = put(b.mutable_grad_out()); !s.ok()) return s;
    } else {
      for (v1::Tensor* t : {b.mutable_q(), b.mutable_k(), b.mutable_v(), b.mutable_out(), b.mutable_lse(),
                            b.mutable_grad_out()}) {
        if (absl::Status s = put(t); !s.ok()) return s;
      }
    }
    *b.mutable_grad_q_region() = Span(p.transport, grads, q_bytes);
    *b.mutable_grad_k_region() = Span(p.transport, grads + Up(q_bytes), kv_bytes);
    *b.mutable_grad_v_region() = Span(p.transport, grads + Up(q_bytes) + Up(kv_bytes), kv_bytes);
  }
  placed_.emplace(&p, std::move(placed));
  return absl::OkStatus();
}

SendResult PayloadSender::SendForward(const Payload& p, const v1::ForwardRequest& request, const CallOptions& call,
                                      bool want) {
  SendResult r;
  ForwardBuffers buffers;
  if (p.transport == Transport::kProto && !want) {
    out_.resize(TensorBytes(request.q()));
    lse_.resize(p.shape.lse_elements() * 4);
    buffers.out = {out_.data(), out_.size()};
    buffers.lse = {lse_.data(), lse_.size()};
  }
  absl::StatusOr<v1::ForwardResponse> response = client_.Forward(request, buffers, call);
  r.status = response.status();
  if (!response.ok()) return r;
  r.wire_bytes = static_cast<int64_t>(request.ByteSizeLong() + response->ByteSizeLong()) +
                 (buffers.out.empty() ? 0 : static_cast<int64_t>(out_.size() + lse_.size()));
  if (want && p.transport != Transport::kProto) {  // read the outputs back for the check
    for (v1::Tensor* t : {response->mutable_out(), response->mutable_lse()}) {
      if (absl::Status s = Read(p.transport, t->region(), t->mutable_data()); !s.ok()) r.status = s;
      t->clear_region();
    }
  }
  r.forward = *std::move(response);
  return r;
}

SendResult PayloadSender::SendBackward(const Payload& p, const v1::BackwardRequest& request, const CallOptions& call,
                                       bool want) {
  SendResult r;
  BackwardBuffers buffers;
  if (p.transport == Transport::kProto && !want) {
    grad_q_.resize(TensorBytes(p.backward->q()));
    grad_k_.resize(TensorBytes(p.backward->k()));
    grad_v_.resize(TensorBytes(p.backward->v()));
    buffers.grad_q = {grad_q_.data(), grad_q_.size()};
    buffers.grad_k = {grad_k_.data(), grad_k_.size()};
    buffers.grad_v = {grad_v_.data(), grad_v_.size()};
  }
  absl::StatusOr<v1::BackwardResponse> response = client_.Backward(request, buffers, call);
  r.status = response.status();
  if (!response.ok()) return r;
  r.wire_bytes = static_cast<int64_t>(request.ByteSizeLong() + response->ByteSizeLong()) +
                 (buffers.grad_q.empty() ? 0 : static_cast<int64_t>(grad_q_.size() + grad_k_.size() + grad_v_.size()));
  if (want && p.transport != Transport::kProto) {
    for (v1::Tensor* t : {response->mutable_grad_q(), response->mutable_grad_k(), response->mutable_grad_v()}) {
      if (absl::Status s = Read(p.transport, t->region(), t->mutable_data()); !s.ok()) r.status = s;
      t->clear_region();
    }
  }
  r.backward = *std::move(response);
  return r;
}

SendResult PayloadSender::Send(const Payload& p, const CallOptions& call, bool want_response) {
  const Placed* placed = p.transport == Transport::kProto ? nullptr : placed_.at(&p).get();
  if (p.direction == Direction::kForward) return SendForward(p, placed ? placed->forward : *p.forward, call, want_response);
  if (p.direction == Direction::kBackward) {
    return SendBackward(p, placed ? placed->backward : *p.backward, call, want_response);
  }
  // A training step.
  v1::ForwardRequest forward = placed ? placed->forward : *p.forward;
  if (p.resident) forward.mutable_keep_resident()->set_keep(true);
  SendResult f = SendForward(p, forward, call, false);
  if (!f.status.ok()) return f;
  v1::BackwardRequest by_handle;
  const v1::BackwardRequest* backward = placed ? &placed->backward : p.backward.get();
  if (p.resident) {
    by_handle.set_resident_handle(f.forward->resident().handle());
    *by_handle.mutable_grad_out() = backward->grad_out();
    if (backward->has_grad_q_region()) *by_handle.mutable_grad_q_region() = backward->grad_q_region();
    if (backward->has_grad_k_region()) *by_handle.mutable_grad_k_region() = backward->grad_k_region();
    if (backward->has_grad_v_region()) *by_handle.mutable_grad_v_region() = backward->grad_v_region();
    backward = &by_handle;
  }
  SendResult b = SendBackward(p, *backward, call, false);
  b.wire_bytes += f.wire_bytes;
  return b;
}

}  // namespace attnd::loadgen
