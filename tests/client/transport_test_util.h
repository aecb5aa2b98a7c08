// Helpers of the transport tests: an in-process daemon with the transports switched on (a region
// socket in a fresh directory, resident tensors), requests of random bf16 bytes, and the bytes a
// response tensor carries.
#pragma once

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "attnd/v1/attention.pb.h"
#include "client/attnd/client.h"
#include "client/attnd/tensors.h"
#include "gtest/gtest.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/service/attention_server.h"
#include "server/transport/host_tensor_allocator.h"
#include "server/transport/region_registry.h"
#include "server/transport/resident_store.h"
#include "tests/client/client_test_util.h"

namespace attnd::testing {

struct TransportDaemon {
  std::string dir;  // holds the region socket
  std::unique_ptr<AttentionServer> server;
  std::unique_ptr<Client> client;

  ~TransportDaemon() {
    server.reset();
    if (!dir.empty()) rmdir(dir.c_str());
  }
};

// Starts `backend` (CPU, 2 threads, when null) with a region socket and `tweak` applied to the options.
inline void StartTransportDaemon(TransportDaemon* d, std::unique_ptr<Backend> backend = nullptr,
                                 const std::function<void(ServerOptions&)>& tweak = nullptr) {
  char dir[] = "/tmp/attnd-transport-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  d->dir = dir;
  ServerOptions options;
  options.worker_threads = 2;
  options.region_socket = absl::StrCat(d->dir, "/regions.sock");
  if (tweak) tweak(options);
  if (backend == nullptr) backend = CreateCpuBackend(2);
  absl::StatusOr<std::unique_ptr<AttentionServer>> server = AttentionServer::Start(options, std::move(backend));
  ASSERT_TRUE(server.ok()) << server.status();
  d->server = *std::move(server);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(OptionsFor(d->server->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  d->client = *std::move(client);
}

// A forward request of `shape` with random bf16 bytes (seeded).
inline v1::ForwardRequest RandomForward(const AttentionShape& shape, uint64_t seed, bool causal = false) {
  AttentionOptions options;
  options.causal = causal;
  return *MakeForwardRequest(shape, DType::kBF16, options, RandomNormal(shape.q_elements(), seed),
                             RandomNormal(shape.kv_elements(), seed + 1), RandomNormal(shape.kv_elements(), seed + 2));
}

// The header of a request: every tensor without its bytes (they go as buffers or chunks).
template <typename Request>
Request WithoutData(Request r) {
  const google::protobuf::Descriptor* d = Request::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->message_type() == v1::Tensor::descriptor() && r.GetReflection()->HasField(r, f)) {
      static_cast<v1::Tensor*>(r.GetReflection()->MutableMessage(&r, f))->clear_data();
    }
  }
  return r;
}

// The transport state of a daemon is back to nothing: no region, session, resident tensor, and
// no tensor buffer handed out. Polls up to 5 s (calls finish asynchronously).
inline ::testing::AssertionResult TransportIdle(const AttentionServer& server) {
  std::string last;
  for (int i = 0; i < 500; ++i) {
    const RegionRegistry* r = server.regions();
    const ResidentStore* s = server.resident();
    const int64_t regions = r ? r->regions() : 0, mapped = r ? r->mapped_bytes() : 0;
    const int64_t sessions = r ? r->sessions() : 0, parked = r ? r->parked_fds() : 0;
    const int64_t resident = s ? s->bytes() : 0, handles = s ? s->handles() : 0;
    const int64_t buffers = server.tensor_allocator().bytes_in_use();
    if (regions == 0 && mapped == 0 && sessions == 0 && parked == 0 && resident == 0 && handles == 0 && buffers == 0) {
      return ::testing::AssertionSuccess();
    }
    last = absl::StrCat("regions ", regions, ", mapped bytes ", mapped, ", sessions ", sessions, ", parked fds ",
                        parked, ", resident bytes ", resident, ", handles ", handles, ", tensor buffer bytes ",
                        buffers);
    absl::SleepFor(absl::Milliseconds(10));
  }
  return ::testing::AssertionFailure() << "transport state not released: " << last;
}

}  // namespace attnd::testing
