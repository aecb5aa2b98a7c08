// The client process of SharedMemoryClientDeath: opens a session on the daemon (argv[1]),
// registers a region, puts a forward's tensors in it and sends the call naming them. The test
// kills it while the daemon holds the call.
#include <cstdio>
#include <cstring>

#include "client/attnd/region_session.h"
#include "client/attnd/tensors.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  attnd::ClientOptions options;
  options.target = argv[1];
  auto client = attnd::Client::Connect(options);
  if (!client.ok()) return 3;
  auto session = attnd::RegionSession::Open(**client);
  if (!session.ok()) return 4;
  auto region = attnd::SharedMemoryRegion::Create(**client, **session, 1 << 20, "child");
  if (!region.ok()) return 5;
  const attnd::AttentionShape shape = attnd::DenseShape(1, 64, 96, 4, 2, 64);
  const size_t q_bytes = shape.q_elements() * 2, kv_bytes = shape.kv_elements() * 2;
  std::memset((*region)->data(), 0x3c, 1 << 20);  // bf16 1.0 everywhere
  attnd::v1::ForwardRequest request;
  uint64_t at = 0;
  for (auto [t, wire, bytes] : {std::tuple{request.mutable_q(), attnd::WireQShape(shape), q_bytes},
                                std::tuple{request.mutable_k(), attnd::WireKVShape(shape), kv_bytes},
                                std::tuple{request.mutable_v(), attnd::WireKVShape(shape), kv_bytes}}) {
    t->set_dtype(attnd::v1::DTYPE_BF16);
    t->mutable_shape()->Assign(wire.begin(), wire.end());
    *t->mutable_region() = (*region)->Span(at, bytes);
    at += bytes;
  }
  *request.mutable_out_region() = (*region)->Span(at, q_bytes);
  (void)(*client)->Forward(request);  // blocks until the test kills this process
  return 0;
}
