// Transport security and authentication of AttentionServer, end to end on loopback with the C++
// client's options: TLS, mutual TLS (clients without a certificate of the right CA refused),
// bearer tokens (UNAUTHENTICATED without, PERMISSION_DENIED for a wrong one, reload), health
// reachable without a token and on the plaintext health-only listener, and bad options refused at
// start naming the flag. Certificates are made with openssl when the test runs.
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/create_channel.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/attnd/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/service/attention_server.h"
#include "tests/reliability/test_certificates.h"
#include "tests/server/service/service_test_util.h"

namespace attnd {
namespace {

using testing::DenseForwardRequest;
using testing::FakeBackend;
using testing::FakeBackendState;
using testing::RequestSpec;
using testing::TestCertificates;
using testing::WriteFile;

constexpr char kTokenA[] = "dHJhaW5lci1hLXRva2VuLTAx";
constexpr char kTokenB[] = "bm90ZWJvb2stdG9rZW4tMDI=";

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = TestCertificates::Get();
    ASSERT_NE(certs_, nullptr) << "make_test_certs.sh (openssl) failed";
  }

  // A server with `security` and an access log; fails the test if it does not start.
  void Start(ServerSecurityOptions security, const std::string& health_listen = "") {
    ServerOptions options;
    options.worker_threads = 2;
    options.security = std::move(security);
    options.health_listen = health_listen;
    options.access_log = certs_->Path(absl::StrCat("access-", ::testing::UnitTest::GetInstance()->random_seed(),
                                                   "-", counter_++, ".log"));
    access_log_ = options.access_log;
    auto server = AttentionServer::Start(options, std::make_unique<FakeBackend>(state_));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // TLS as the daemon runs it by default: the files are watched for changes (every second here).
  ServerSecurityOptions Tls() const {
    return {.tls_cert_file = certs_->Path("server.pem"),
            .tls_key_file = certs_->Path("server.key"),
            .reload_interval = absl::Seconds(1)};
  }

  // A TLS server whose token file `tokens` holds trainer-a's token alone.
  void StartWithTokenA(const std::string& tokens) {
    WriteFile(tokens, absl::StrCat("trainer-a ", kTokenA, "\n"));
    ServerSecurityOptions security = Tls();
    security.auth_tokens_file = tokens;
    Start(security);
  }

  ClientOptions WithToken(const char* token) const {
    ClientOptions o = ClientTls();
    o.bearer_token = token;
    return o;
  }

  // Polls `ok` every 100 ms for up to 15 s (a few reload intervals): whether it became true.
  static bool Eventually(const std::function<bool()>& ok) {
    for (int i = 0; i < 150; ++i) {
      if (ok()) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  ClientOptions ClientTls() const {
    ClientOptions o;
    o.target = server_->address();
    o.tls_ca_file = certs_->Path("ca.pem");
    o.connect_timeout = absl::ZeroDuration();  // connect on the first call: its status is the test
    o.retry_unavailable = false;
    o.default_timeout = absl::Seconds(10);
    return o;
  }

  // One forward call through a client built from `options`: its status.
  absl::Status Call(const ClientOptions& options) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return client.status();
    const v1::ForwardRequest request = DenseForwardRequest(RequestSpec{});
    absl::StatusOr<v1::ForwardResponse> response = (*client)->Forward(request);
    if (response.ok() && response->out().data() != request.q().data()) return absl::InternalError("wrong answer");
    return response.status();
  }

  // grpc.health.v1 Check of the whole server over `channel`.
  static grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                  grpc::health::v1::HealthCheckResponse* response) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return stub->Check(&context, grpc::health::v1::HealthCheckRequest(), response);
  }

  std::string ReadAccessLog() const {
    std::ifstream in(access_log_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  const TestCertificates* certs_ = nullptr;
  std::shared_ptr<FakeBackendState> state_ = std::make_shared<FakeBackendState>();
  std::unique_ptr<AttentionServer> server_;
  std::string access_log_;
  int counter_ = 0;
};

TEST_F(AuthTest, TlsServesTlsClientsAndRefusesPlaintextAndUntrustedOnes) {
  Start(Tls());
  EXPECT_TRUE(Call(ClientTls()).ok()) << Call(ClientTls());

  ClientOptions plaintext = ClientTls();
  plaintext.tls_ca_file.clear();
  EXPECT_EQ(Call(plaintext).code(), absl::StatusCode::kUnavailable) << "a plaintext client must not get through";

  ClientOptions wrong_ca = ClientTls();
  wrong_ca.tls_ca_file = certs_->Path("rogue-ca.pem");
  EXPECT_EQ(Call(wrong_ca).code(), absl::StatusCode::kUnavailable) << "the server's certificate must be checked";

  ClientOptions wrong_name = ClientTls();
  wrong_name.tls_server_name = "not-attnd.example";
  EXPECT_EQ(Call(wrong_name).code(), absl::StatusCode::kUnavailable) << "the certificate's name must be checked";
}

TEST_F(AuthTest, MutualTlsNeedsAClientCertificateOfTheRightCa) {
  ServerSecurityOptions security = Tls();
  security.tls_client_ca_file = certs_->Path("ca.pem");
  Start(security);

  ClientOptions with_cert = ClientTls();
  with_cert.tls_cert_file = certs_->Path("client.pem");
  with_cert.tls_key_file = certs_->Path("client.key");
  const absl::Status ok = Call(with_cert);
  EXPECT_TRUE(ok.ok()) << ok;

  EXPECT_EQ(Call(ClientTls()).code(), absl::StatusCode::kUnavailable) << "no client certificate";
  ClientOptions rogue = ClientTls();
  rogue.tls_cert_file = certs_->Path("rogue-client.pem");
  rogue.tls_key_file = certs_->Path("rogue-client.key");
  EXPECT_EQ(Call(rogue).code(), absl::StatusCode::kUnavailable) << "a certificate of another CA";
  EXPECT_EQ(state_->Entered(), 1) << "only the call with the right certificate was computed";

  server_->Shutdown();
  EXPECT_TRUE(absl::StrContains(ReadAccessLog(), "client=trainer-a")) << "the access log names the certificate";
}

TEST_F(AuthTest, BearerTokensAreCheckedAndNamedInTheAccessLog) {
  const std::string tokens = certs_->Path("tokens-check.txt");
  WriteFile(tokens, absl::StrCat("# test tokens\ntrainer-a ", kTokenA, "\n\nnotebook\t", kTokenB, "\n"));
  ServerSecurityOptions security = Tls();
  security.auth_tokens_file = tokens;
  Start(security);

  ClientOptions none = ClientTls();
  const absl::Status missing = Call(none);
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated) << missing;
  EXPECT_TRUE(absl::StrContains(missing.message(), "Bearer")) << missing;

  ClientOptions wrong = ClientTls();
  wrong.bearer_token = "bm90LWEtdG9rZW4tYXQtYWxs";
  const absl::Status denied = Call(wrong);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied) << denied;
  EXPECT_FALSE(absl::StrContains(denied.message(), wrong.bearer_token)) << "never echo a token";

  ClientOptions right = ClientTls();
  right.bearer_token = kTokenB;
  EXPECT_TRUE(Call(right).ok()) << Call(right);
  EXPECT_EQ(state_->Entered(), 1) << "refused calls never reach the backend";

  const std::string scrape = server_->metrics().Render();
  EXPECT_TRUE(absl::StrContains(scrape, "attnd_auth_refused_total{code=\"UNAUTHENTICATED\"} 1")) << scrape;
  EXPECT_TRUE(absl::StrContains(scrape, "attnd_auth_refused_total{code=\"PERMISSION_DENIED\"} 1")) << scrape;
  server_->Shutdown();
  const std::string log = ReadAccessLog();
  EXPECT_TRUE(absl::StrContains(log, "client=notebook")) << log;
  EXPECT_FALSE(absl::StrContains(log, kTokenB)) << "the access log names the token, never shows it";
}

TEST_F(AuthTest, TokensReloadAndABadFileKeepsTheOldOnes) {
  const std::string tokens = certs_->Path("tokens-reload.txt");
  StartWithTokenA(tokens);
  const ClientOptions a = WithToken(kTokenA), b = WithToken(kTokenB);
  EXPECT_TRUE(Call(a).ok());
  EXPECT_EQ(Call(b).code(), absl::StatusCode::kPermissionDenied);

  WriteFile(tokens, absl::StrCat("notebook ", kTokenB, "\n"));
  absl::StatusOr<int> reloaded = server_->ReloadAuthTokens();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(*reloaded, 1);
  EXPECT_EQ(Call(a).code(), absl::StatusCode::kPermissionDenied) << "a removed token stops working";
  EXPECT_TRUE(Call(b).ok());

  WriteFile(tokens, "notebook short\n");
  EXPECT_EQ(server_->ReloadAuthTokens().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Call(b).ok()) << "a bad file leaves the tokens in use";
}

// Kubernetes updates a mounted Secret by pointing a symlink at a new directory; cert-manager
// rotates certificates that way. New handshakes must get the new certificate without a restart,
// and connections already open keep working.
TEST_F(AuthTest, ARotatedCertificateServesNewHandshakesAndOpenConnectionsKeepTheirs) {
  namespace fs = std::filesystem;
  const fs::path dir = certs_->Path("rotation");
  fs::create_directories(dir / "v1");
  fs::create_directories(dir / "v2");
  fs::copy_file(certs_->Path("server.pem"), dir / "v1/tls.crt");
  fs::copy_file(certs_->Path("server.key"), dir / "v1/tls.key");
  fs::copy_file(certs_->Path("next-server.pem"), dir / "v2/tls.crt");
  fs::copy_file(certs_->Path("next-server.key"), dir / "v2/tls.key");
  fs::create_directory_symlink("v1", dir / "current");
  ServerSecurityOptions security = Tls();
  security.tls_cert_file = dir / "current/tls.crt";
  security.tls_key_file = dir / "current/tls.key";
  Start(security);

  ClientOptions old_ca = ClientTls();
  ClientOptions next_ca = ClientTls();
  next_ca.tls_ca_file = certs_->Path("next-ca.pem");
  ASSERT_TRUE(Call(old_ca).ok()) << Call(old_ca);
  EXPECT_EQ(Call(next_ca).code(), absl::StatusCode::kUnavailable) << "not rotated yet";
  absl::StatusOr<std::unique_ptr<Client>> open = Client::Connect(old_ca);
  ASSERT_TRUE(open.ok()) << open.status();
  const v1::ForwardRequest request = DenseForwardRequest(RequestSpec{});
  ASSERT_TRUE((*open)->Forward(request).ok());

  fs::create_directory_symlink("v2", dir / "current.new");
  fs::rename(dir / "current.new", dir / "current");  // atomic, like kubelet's ..data swap
  EXPECT_TRUE(Eventually([&] { return Call(next_ca).ok(); })) << "the new certificate was never served";
  EXPECT_EQ(Call(old_ca).code(), absl::StatusCode::kUnavailable) << "new handshakes get the new certificate";
  const absl::StatusOr<v1::ForwardResponse> on_open = (*open)->Forward(request);
  EXPECT_TRUE(on_open.ok()) << on_open.status() << ": an open connection keeps its session";
}

// A half-written rotation (a key that does not belong to the certificate) must not take the
// server off the air: the last good pair stays in use.
TEST_F(AuthTest, AMismatchedKeyAndCertificateKeepTheLastGoodPair) {
  namespace fs = std::filesystem;
  const fs::path dir = certs_->Path("mismatch");
  fs::create_directories(dir);
  fs::copy_file(certs_->Path("server.pem"), dir / "tls.crt");
  fs::copy_file(certs_->Path("server.key"), dir / "tls.key");
  ServerSecurityOptions security = Tls();
  security.tls_cert_file = dir / "tls.crt";
  security.tls_key_file = dir / "tls.key";
  Start(security);
  ASSERT_TRUE(Call(ClientTls()).ok());

  fs::copy_file(certs_->Path("next-server.pem"), dir / "tls.crt.new");
  fs::rename(dir / "tls.crt.new", dir / "tls.crt");  // the certificate moves on, the key does not
  absl::SleepFor(absl::Seconds(3));                  // several reload intervals
  const absl::Status still = Call(ClientTls());
  EXPECT_TRUE(still.ok()) << still;

  fs::copy_file(certs_->Path("next-server.key"), dir / "tls.key.new");
  fs::rename(dir / "tls.key.new", dir / "tls.key");  // now the pair matches again
  ClientOptions next_ca = ClientTls();
  next_ca.tls_ca_file = certs_->Path("next-ca.pem");
  EXPECT_TRUE(Eventually([&] { return Call(next_ca).ok(); })) << "the completed pair was never served";
}

TEST_F(AuthTest, CertificatesReadOnceAtStartStillServeTls) {
  ServerSecurityOptions security = Tls();
  security.reload_interval = absl::ZeroDuration();
  security.tls_client_ca_file = certs_->Path("ca.pem");
  Start(security);
  ClientOptions with_cert = ClientTls();
  with_cert.tls_cert_file = certs_->Path("client.pem");
  with_cert.tls_key_file = certs_->Path("client.key");
  EXPECT_TRUE(Call(with_cert).ok()) << Call(with_cert);
  EXPECT_EQ(Call(ClientTls()).code(), absl::StatusCode::kUnavailable) << "no client certificate";
}

// Nobody sends a SIGHUP when a Kubernetes Secret changes: the token file is watched.
TEST_F(AuthTest, AChangedTokenFileIsReloadedWithoutASignal) {
  const std::string tokens = certs_->Path("tokens-watched.txt");
  StartWithTokenA(tokens);
  const ClientOptions a = WithToken(kTokenA), b = WithToken(kTokenB);
  ASSERT_TRUE(Call(a).ok());
  EXPECT_EQ(Call(b).code(), absl::StatusCode::kPermissionDenied);

  const std::string next = tokens + ".new";
  WriteFile(next, absl::StrCat("notebook ", kTokenB, "\n"));
  std::filesystem::rename(next, tokens);
  EXPECT_TRUE(Eventually([&] { return Call(b).ok(); })) << "the new token never worked";
  EXPECT_EQ(Call(a).code(), absl::StatusCode::kPermissionDenied) << "the removed token still works";

  WriteFile(next, "notebook short\n");  // a bad file: the tokens in use stay
  std::filesystem::rename(next, tokens);
  absl::SleepFor(absl::Seconds(3));
  EXPECT_TRUE(Call(b).ok());
}

TEST_F(AuthTest, HealthNeedsNoTokenAndTheHealthListenerNeedsNoTls) {
  const std::string tokens = certs_->Path("tokens-health.txt");
  WriteFile(tokens, absl::StrCat("trainer-a ", kTokenA, "\n"));
  ServerSecurityOptions security = Tls();
  security.auth_tokens_file = tokens;
  security.tls_client_ca_file = certs_->Path("ca.pem");
  Start(security, "127.0.0.1:0");
  ASSERT_FALSE(server_->health_address().empty());

  // On the main port: TLS with a client certificate, but no token.
  grpc::SslCredentialsOptions ssl;
  std::ifstream ca(certs_->Path("ca.pem")), cert(certs_->Path("client.pem")), key(certs_->Path("client.key"));
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(ca), {});
  ssl.pem_cert_chain.assign(std::istreambuf_iterator<char>(cert), {});
  ssl.pem_private_key.assign(std::istreambuf_iterator<char>(key), {});
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status main = HealthCheck(grpc::CreateChannel(server_->address(), grpc::SslCredentials(ssl)), &response);
  ASSERT_TRUE(main.ok()) << main.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // On the health listener: plaintext; it serves health and nothing else.
  auto plain = grpc::CreateChannel(server_->health_address(), grpc::InsecureChannelCredentials());
  grpc::Status probe = HealthCheck(plain, &response);
  ASSERT_TRUE(probe.ok()) << probe.error_message();
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  auto stub = v1::Attention::NewStub(plain);
  grpc::ClientContext context;
  v1::ServerInfo info;
  EXPECT_EQ(stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);

  // While draining, the health listener reports NOT_SERVING.
  state_->Close();
  ClientOptions held = ClientTls();
  held.tls_cert_file = certs_->Path("client.pem");
  held.tls_key_file = certs_->Path("client.key");
  held.bearer_token = kTokenA;
  absl::Status held_status;
  std::thread call([&] { held_status = Call(held); });
  ASSERT_TRUE(state_->WaitFor(&FakeBackendState::entered, 1, absl::Seconds(10)));
  std::thread shutdown([&] { server_->Shutdown(absl::Seconds(10)); });
  bool not_serving = false;
  for (int i = 0; i < 200 && !not_serving; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    not_serving = HealthCheck(plain, &response).ok() &&
                  response.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
  }
  EXPECT_TRUE(not_serving);
  state_->Open();
  call.join();
  shutdown.join();
  EXPECT_TRUE(held_status.ok()) << held_status;
}

TEST_F(AuthTest, BadSecurityOptionsAreRefusedAtStartNamingTheFlag) {
  auto start = [&](ServerSecurityOptions security) {
    ServerOptions options;
    options.security = std::move(security);
    return AttentionServer::Start(options, std::make_unique<FakeBackend>(state_)).status();
  };
  const std::string tokens = certs_->Path("tokens-bad.txt");
  WriteFile(tokens, absl::StrCat("trainer-a ", kTokenA, "\n"));
  const std::string bad_tokens = certs_->Path("tokens-bad-line.txt");
  WriteFile(bad_tokens, "trainer-a\n");
  struct Case {
    ServerSecurityOptions security;
    absl::StatusCode code;
    const char* names;
  };
  const Case cases[] = {
      {{.auth_tokens_file = tokens}, absl::StatusCode::kInvalidArgument, "--auth_tokens_file"},
      {{.tls_client_ca_file = certs_->Path("ca.pem")}, absl::StatusCode::kInvalidArgument, "--tls_client_ca"},
      {{.tls_cert_file = certs_->Path("server.pem")}, absl::StatusCode::kInvalidArgument, "--tls_key"},
      {{.tls_cert_file = certs_->Path("server.pem"), .tls_key_file = certs_->Path("client.key")},
       absl::StatusCode::kInvalidArgument, "--tls_key"},
      {{.tls_cert_file = certs_->Path("server.key"), .tls_key_file = certs_->Path("server.key")},
       absl::StatusCode::kInvalidArgument, "--tls_cert"},
      {{.tls_cert_file = certs_->Path("missing.pem"), .tls_key_file = certs_->Path("server.key")},
       absl::StatusCode::kNotFound, "--tls_cert"},
      {{.tls_cert_file = certs_->Path("server.pem"), .tls_key_file = certs_->Path("server.key"),
        .auth_tokens_file = bad_tokens},
       absl::StatusCode::kInvalidArgument, "line 1"},
      {{.tls_cert_file = certs_->Path("server.pem"), .tls_key_file = certs_->Path("server.key"),
        .reload_interval = absl::Milliseconds(1500)},
       absl::StatusCode::kInvalidArgument, "--security_reload_interval"},
      {{.tls_cert_file = certs_->Path("server.pem"), .tls_key_file = certs_->Path("server.key"),
        .reload_interval = absl::Seconds(-1)},
       absl::StatusCode::kInvalidArgument, "--security_reload_interval"},
  };
  for (const Case& c : cases) {
    const absl::Status status = start(c.security);
    EXPECT_EQ(status.code(), c.code) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), c.names)) << status;
  }
}

TEST_F(AuthTest, ClientTlsOptionsAreChecked) {
  Start(Tls());
  ClientOptions token_plaintext;
  token_plaintext.target = server_->address();
  token_plaintext.bearer_token = kTokenA;
  EXPECT_EQ(Client::Connect(token_plaintext).status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions cert_without_key = ClientTls();
  cert_without_key.tls_cert_file = certs_->Path("client.pem");
  EXPECT_EQ(Client::Connect(cert_without_key).status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions missing_ca = ClientTls();
  missing_ca.tls_ca_file = certs_->Path("nope.pem");
  EXPECT_EQ(Client::Connect(missing_ca).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace attnd
