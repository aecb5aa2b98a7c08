#include "bench/transport/attnd_roundtrip.h"

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/transport/transport_only_backend.h"
#include "client/attnd/client.h"
#include "client/attnd/tensors.h"
#include "server/engine/batching_backend.h"
#include "server/engine/stage_timing_backend.h"
#include "server/service/attention_server.h"

namespace attnd::bench {

absl::StatusOr<CallTimes> AttndForwardRoundTrip(int seqlen, const AttndRoundTripOptions& bench,
                                                const TimingRule& rule) {
  ServerOptions options;
  options.worker_threads = 2;
  options.channel_args = bench.channel_args;
  options.parallel_copy = bench.parallel_copy;
  options.access_log = bench.access_log;
  std::unique_ptr<Backend> backend = std::make_unique<TransportOnlyBackend>();
  if (bench.engine) {
    engine::BatcherOptions batcher;  // the daemon's defaults
    batcher.lone_calls_on_caller = bench.lone_calls_on_caller;
    backend = std::make_unique<engine::StageTimingBackend>(std::make_unique<BatchingBackend>(std::move(backend), batcher));
  }
  absl::StatusOr<std::unique_ptr<AttentionServer>> server = AttentionServer::Start(options, std::move(backend));
  if (!server.ok()) return server.status();
  ClientOptions client_options;
  client_options.target = (*server)->address();
  client_options.dedicated_connection = true;
  client_options.parallel_copy = bench.parallel_copy;
  client_options.stream_above_bytes = bench.stream_above_bytes;
  client_options.stream_chunk_bytes = bench.stream_chunk_bytes;
  for (const auto& [key, value] : bench.channel_args) client_options.channel_args.emplace_back(key, value);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(client_options);
  if (!client.ok()) return client.status();

  const AttentionShape shape = DenseShape(1, seqlen, seqlen, 16, 16, 128);
  const size_t tensor_bytes = shape.q_elements() * 2;
  std::vector<char> q(tensor_bytes, 1), k(tensor_bytes, 2), v(tensor_bytes, 3);
  std::vector<char> out(tensor_bytes), lse(shape.lse_elements() * 4);
  v1::ForwardRequest request;
  for (auto [t, wire] : {std::pair{request.mutable_q(), WireQShape(shape)}, std::pair{request.mutable_k(), WireKVShape(shape)},
                         std::pair{request.mutable_v(), WireKVShape(shape)}}) {
    t->set_dtype(v1::DTYPE_BF16);
    t->mutable_shape()->Assign(wire.begin(), wire.end());
  }
  ForwardBuffers buffers;
  buffers.q = {q.data(), q.size()};
  buffers.k = {k.data(), k.size()};
  buffers.v = {v.data(), v.size()};
  buffers.out = {out.data(), out.size()};
  buffers.lse = {lse.data(), lse.size()};
  CallTimes times;
  absl::Status status = TimeCalls(rule, [&]() -> absl::Status { return (*client)->Forward(request, buffers).status(); },
                                  &times);
  (*server)->Shutdown(absl::Seconds(5));
  if (!status.ok()) return status;
  return times;
}

}  // namespace attnd::bench
