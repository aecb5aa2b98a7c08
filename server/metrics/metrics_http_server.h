// MetricsHttpServer: serves a MetricsRegistry at GET /metrics in the Prometheus text format, over
// HTTP/1.1 with cpp-httplib (Debian's libcpp-httplib-dev). Anything else is a 404. It runs on its
// own few threads, so a slow scraper never holds a gRPC or worker thread.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/metrics/metrics_registry.h"

namespace attnd::metrics {

class MetricsHttpServer {
 public:
  // `listen`: host:port ("127.0.0.1:9090", "0.0.0.0:0", "[::]:9090"); port 0 picks a free port.
  // `registry` outlives the server. Errors: a malformed address (INVALID_ARGUMENT), one that
  // cannot be bound (UNAVAILABLE).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& listen,
                                                                   const MetricsRegistry* registry);

  int port() const { return port_; }
  // A dialable host:port (127.0.0.1 / [::1] for a wildcard host).
  const std::string& address() const { return address_; }

  // Stops accepting, finishes the scrape in progress, joins the threads. Idempotent.
  void Stop();
  ~MetricsHttpServer();

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

 private:
  struct Impl;
  explicit MetricsHttpServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  std::string address_;
};

}  // namespace attnd::metrics
