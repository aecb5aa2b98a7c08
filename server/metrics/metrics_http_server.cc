#include "server/metrics/metrics_http_server.h"

#include <sys/socket.h>

#include <thread>

#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attnd::metrics {
namespace {

// Prometheus's text exposition format, version 0.0.4.
constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";
// Scrapes are rare and short: two threads serve a scraper plus a curl by hand.
constexpr size_t kHttpThreads = 2;

struct HostPort {
  std::string host;  // as getaddrinfo wants it: no brackets
  std::string dial;  // as a client writes it: brackets for IPv6
  int port = 0;
};

absl::StatusOr<HostPort> ParseListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535 || listen.substr(colon + 1).find_first_not_of("0123456789") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_listen: '", listen, "' is not host:port with a port in 0..65535 (e.g. 127.0.0.1:9090, [::]:9090)"));
  }
  HostPort hp;
  hp.port = port;
  std::string host = listen.substr(0, colon);
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) host = host.substr(1, host.size() - 2);
  hp.host = host;
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  hp.dial = absl::StrContains(host, ':') ? absl::StrCat("[", host, "]") : host;
  return hp;
}

}  // namespace

struct MetricsHttpServer::Impl {
  httplib::Server http;
  std::thread thread;
  bool stopped = false;
};

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& listen,
                                                                            const MetricsRegistry* registry) {
  if (registry == nullptr) return absl::InvalidArgumentError("MetricsHttpServer::Start: registry is null");
  absl::StatusOr<HostPort> hp = ParseListen(listen);
  if (!hp.ok()) return hp.status();

  auto impl = std::make_unique<Impl>();
  httplib::Server& http = impl->http;
  http.new_task_queue = [] { return new httplib::ThreadPool(kHttpThreads); };
  // cpp-httplib sets SO_REUSEPORT by default, which would let a second daemon bind the same port
  // and split the scrapes between two processes; a port in use must be an error instead.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  http.Get("/metrics", [registry](const httplib::Request&, httplib::Response& response) {
    response.set_content(registry->Render(), kContentType);
  });

  int port = hp->port;
  if (port == 0) {
    port = http.bind_to_any_port(hp->host);
  } else if (!http.bind_to_port(hp->host, port)) {
    port = -1;
  }
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat("metrics_listen: cannot listen on '", listen, "' (address in use?)"));
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->http.listen_after_bind(); });

  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer(std::move(impl)));
  server->port_ = port;
  server->address_ = absl::StrCat(hp->dial, ":", port);
  return server;
}

void MetricsHttpServer::Stop() {
  if (impl_ == nullptr || impl_->stopped) return;
  impl_->stopped = true;
  // stop() closes the listening socket; if the thread has not entered its accept loop yet, that
  // loop sees the closed socket and returns at once.
  impl_->http.stop();
  impl_->thread.join();
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

}  // namespace attnd::metrics
