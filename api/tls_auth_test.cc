// The API's certificates (api/pki.h), the token file, authentication and authorization
// (api/auth.h), and the HTTPS listener: real OpenSSL handshakes with Beast clients on loopback.
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <openssl/ssl.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <nlohmann/json.hpp>

#include "api/api.h"
#include "api/pipe_stream_for_test.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::api {
namespace {

namespace net = boost::asio;
namespace ssl = net::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using ::edgevirt::testing::TempDir;

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

mode_t Mode(const std::filesystem::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

HttpRequest Req(std::string method, std::string path, std::string query = "") {
  HttpRequest r;
  r.method = std::move(method);
  r.path = std::move(path);
  r.query = std::move(query);
  r.target = r.path + (r.query.empty() ? "" : "?" + r.query);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Certificates

TEST_CASE("pki: first start makes a CA and a server certificate; reused; re-issued for new SANs") {
  TempDir tmp("pki");
  PkiPaths paths{tmp.path() / "pki"};
  const auto sans = HostSans({"edge.example", "192.0.2.7"});
  CHECK(Contains(sans, "DNS:localhost"));
  CHECK(Contains(sans, "IP:127.0.0.1"));
  CHECK(Contains(sans, "IP:::1"));
  CHECK(Contains(sans, "DNS:edge.example"));
  CHECK(Contains(sans, "IP:192.0.2.7"));

  auto first = EnsureServerPki(paths, sans);
  REQUIRE(first.has_value());
  CHECK(first->ca_created);
  CHECK(first->server_issued);
  CHECK(Mode(paths.dir) == 0700);
  CHECK(Mode(paths.CaKey()) == 0600);
  CHECK(Mode(paths.ServerKey()) == 0600);
  auto on_disk = CertificateSans(paths.ServerCert());
  REQUIRE(on_disk.has_value());
  for (const auto& s : sans) CHECK(Contains(*on_disk, s));

  const std::string ca = ReadAll(paths.CaCert());
  const std::string server = ReadAll(paths.ServerCert());
  auto again = EnsureServerPki(paths, sans);
  REQUIRE(again.has_value());
  CHECK_FALSE(again->ca_created);
  CHECK_FALSE(again->server_issued);
  CHECK(ReadAll(paths.ServerCert()) == server);

  // A name the certificate lacks: a new server certificate (old names kept), same CA.
  auto more = HostSans({"edge.example", "192.0.2.7", "api.edge.example"});
  auto reissued = EnsureServerPki(paths, more);
  REQUIRE(reissued.has_value());
  CHECK_FALSE(reissued->ca_created);
  CHECK(reissued->server_issued);
  CHECK(reissued->missing_before == std::vector<std::string>{"DNS:api.edge.example"});
  CHECK(ReadAll(paths.CaCert()) == ca);
  CHECK(ReadAll(paths.ServerCert()) != server);
  auto now_sans = CertificateSans(paths.ServerCert());
  REQUIRE(now_sans.has_value());
  CHECK(Contains(*now_sans, "DNS:api.edge.example"));
  CHECK(Contains(*now_sans, "IP:192.0.2.7"));

  // A CA key without its certificate is never silently replaced.
  std::filesystem::remove(paths.CaCert());
  auto broken = EnsureServerPki(paths, sans);
  REQUIRE_FALSE(broken.has_value());
  CHECK_THAT(broken.error().message, Catch::Contains("restore the other or remove both"));
}

// ---------------------------------------------------------------------------------------------
// Tokens

TEST_CASE("token file: format, comments, errors with line numbers") {
  const std::string good =
      "# comment\n"
      "\n"
      "  0123456789abcdef0123 , alice , admin \r\n"
      "abcdefghijklmnopq_-.~+/=,bob,viewer\n";
  auto parsed = ParseTokenFile(good, "tokens.csv");
  REQUIRE(parsed.has_value());
  REQUIRE(parsed->size() == 2);
  CHECK((*parsed)[0] == TokenEntry{"0123456789abcdef0123", "alice", Role::kAdmin});
  CHECK((*parsed)[1] == TokenEntry{"abcdefghijklmnopq_-.~+/=", "bob", Role::kViewer});

  auto err = [](const std::string& text) {
    auto r = ParseTokenFile(text, "t.csv");
    REQUIRE_FALSE(r.has_value());
    return r.error().message;
  };
  CHECK_THAT(err("#\n0123456789abcdef0123,alice\n"), Catch::StartsWith("t.csv:2: expected"));
  CHECK_THAT(err("short,alice,admin\n"), Catch::StartsWith("t.csv:1: the token must"));
  CHECK_THAT(err("0123456789abcdef0123,alice,root\n"),
             Catch::StartsWith("t.csv:1: unknown role \"root\""));
  CHECK_THAT(err("0123456789abcdef0123,al ice,admin\n"), Catch::Contains("t.csv:1: the user"));
  CHECK_THAT(err("0123456789abcdef0123,a,admin\n0123456789abcdef0123,b,admin\n"),
             Catch::StartsWith("t.csv:2: duplicate token"));
  CHECK_THAT(err("0123456789abcdef0123,a,admin\n0123456789abcdef0124,a,viewer\n"),
             Catch::StartsWith("t.csv:2: duplicate user \"a\""));
}

TEST_CASE("token file: EnsureUserToken creates 0600, appends, keeps roles; TokenStore reloads") {
  TempDir tmp("tokens");
  const auto file = tmp.path() / "sub" / "tokens.csv";
  bool created = false;
  auto admin = EnsureUserToken(file, "admin", Role::kAdmin, false, &created);
  REQUIRE(admin.has_value());
  CHECK(created);
  CHECK(admin->token.size() == 43);
  CHECK(Mode(file) == 0600);
  CHECK(Mode(file.parent_path()) == 0700);

  auto same = EnsureUserToken(file, "admin", Role::kAdmin, true, &created);
  REQUIRE(same.has_value());
  CHECK_FALSE(created);
  CHECK(same->token == admin->token);
  auto conflict = EnsureUserToken(file, "admin", Role::kViewer, true, &created);
  REQUIRE_FALSE(conflict.has_value());
  CHECK(conflict.error().code == Code::kConflict);

  TokenStore store(file);
  CHECK(store.Find(admin->token).has_value());
  CHECK_FALSE(store.Find("not-a-token-of-anyone").has_value());

  auto viewer = EnsureUserToken(file, "bob", Role::kViewer, false, &created);
  REQUIRE(viewer.has_value());
  CHECK(viewer->token != admin->token);
  auto found = store.Find(viewer->token);  // added after the store first read the file
  REQUIRE(found.has_value());
  CHECK(found->user == "bob");
  CHECK(found->role == Role::kViewer);
  auto reparsed = ParseTokenFile(ReadAll(file), "f");
  REQUIRE(reparsed.has_value());
  CHECK(reparsed->size() == 2);

  // A broken file keeps the previous tokens.
  {
    std::ofstream out(file, std::ios::app);
    out << "garbage line\n";
  }
  CHECK(store.Find(viewer->token).has_value());
}

// ---------------------------------------------------------------------------------------------
// Authorization

TEST_CASE("authz: request attributes like kube-apiserver's RequestInfo") {
  auto a =
      RequestAttributesOf(Req("GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines"));
  CHECK(a.resource_request);
  CHECK(a.verb == "list");
  CHECK(a.api_group == "kubevirt.io");
  CHECK(a.namespace_ == "default");
  CHECK(a.resource == "virtualmachines");
  a = RequestAttributesOf(
      Req("GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines", "watch=true"));
  CHECK(a.verb == "watch");
  a = RequestAttributesOf(Req("GET", "/apis/kubevirt.io/v1/watch/virtualmachines"));
  CHECK(a.verb == "watch");
  CHECK(a.namespace_.empty());
  a = RequestAttributesOf(Req("DELETE", "/api/v1/namespaces/ns1/secrets/s1"));
  CHECK(a.verb == "delete");
  CHECK(a.api_group.empty());
  CHECK(a.resource == "secrets");
  CHECK(a.name == "s1");
  a = RequestAttributesOf(Req("DELETE", "/api/v1/namespaces/ns1/secrets"));
  CHECK(a.verb == "deletecollection");
  a = RequestAttributesOf(Req(
      "GET",
      "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/v/vnc/screenshot"));
  CHECK(a.verb == "get");
  CHECK(a.resource == "virtualmachineinstances");
  CHECK(a.subresource == "vnc");
  a = RequestAttributesOf(Req("GET", "/api/v1/namespaces/default"));
  CHECK(a.resource == "namespaces");
  CHECK(a.name == "default");
  CHECK(a.namespace_.empty());
  a = RequestAttributesOf(Req("HEAD", "/apis/kubevirt.io/v1"));
  CHECK_FALSE(a.resource_request);
  CHECK(a.verb == "get");
  a = RequestAttributesOf(Req("PATCH", "/apis/kubevirt.io/v1/namespaces/d/virtualmachines/x"));
  CHECK(a.verb == "patch");
}

TEST_CASE("authz: viewer reads but neither writes nor opens consoles; admin does everything") {
  auto can = [](Role role, const char* method, const char* path, std::string query = "") {
    return Authorize(role, RequestAttributesOf(Req(method, path, std::move(query))));
  };
  const char* vms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
  const char* vm = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1";
  const std::string sub = "/apis/subresources.kubevirt.io/v1/namespaces/default/";
  CHECK(can(Role::kViewer, "GET", vms));
  CHECK(can(Role::kViewer, "GET", vms, "watch=true"));
  CHECK(can(Role::kViewer, "GET", vm));
  CHECK(can(Role::kViewer, "GET", "/openapi/v3"));
  CHECK(can(Role::kViewer, "GET", (sub + "virtualmachineinstances/vm1/guestosinfo").c_str()));
  CHECK_FALSE(can(Role::kViewer, "POST", vms));
  CHECK_FALSE(can(Role::kViewer, "PUT", vm));
  CHECK_FALSE(can(Role::kViewer, "PATCH", vm));
  CHECK_FALSE(can(Role::kViewer, "DELETE", vm));
  CHECK_FALSE(can(Role::kViewer, "PUT", (sub + "virtualmachines/vm1/start").c_str()));
  CHECK_FALSE(can(Role::kViewer, "GET", (sub + "virtualmachineinstances/vm1/console").c_str()));
  CHECK_FALSE(can(Role::kViewer, "GET", (sub + "virtualmachineinstances/vm1/vnc").c_str()));
  CHECK_FALSE(
      can(Role::kViewer, "GET", (sub + "virtualmachineinstances/vm1/portforward/22/tcp").c_str()));
  CHECK_FALSE(can(Role::kViewer, "GET", "/api/v1/namespaces/default/secrets"));
  CHECK_FALSE(can(Role::kViewer, "POST", "/some/path"));
  CHECK(can(Role::kAdmin, "DELETE", vm));
  CHECK(can(Role::kAdmin, "GET", (sub + "virtualmachineinstances/vm1/console").c_str()));
  CHECK(can(Role::kAdmin, "GET", "/api/v1/namespaces/default/secrets"));
}

TEST_CASE("authz: 401 and 403 bodies as kube-apiserver writes them") {
  auto u = UnauthorizedResponse();
  CHECK(u.status == 401);
  auto uj = nlohmann::json::parse(u.body);
  CHECK(uj == nlohmann::json::parse(
                  R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                      "message":"Unauthorized","reason":"Unauthorized","code":401})"));

  auto f = ForbiddenResponse(
      "bob", RequestAttributesOf(
                 Req("DELETE", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1")));
  CHECK(f.status == 403);
  auto fj = nlohmann::json::parse(f.body);
  CHECK(fj["reason"] == "Forbidden");
  CHECK(fj["code"] == 403);
  CHECK(fj["message"] ==
        "virtualmachines.kubevirt.io \"vm1\" is forbidden: User \"bob\" cannot delete resource "
        "\"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"default\"");
  CHECK(fj["details"] ==
        nlohmann::json{{"name", "vm1"}, {"group", "kubevirt.io"}, {"kind", "virtualmachines"}});

  auto list = nlohmann::json::parse(
      ForbiddenResponse("bob", RequestAttributesOf(Req("POST", "/api/v1/namespaces/d/secrets")))
          .body);
  CHECK(list["message"] ==
        "secrets is forbidden: User \"bob\" cannot create resource \"secrets\" in API group \"\" "
        "in the namespace \"d\"");
  auto console = nlohmann::json::parse(
      ForbiddenResponse("bob", RequestAttributesOf(Req("GET",
                                                       "/apis/subresources.kubevirt.io/v1/"
                                                       "namespaces/d/virtualmachineinstances/"
                                                       "v/console")))
          .body);
  CHECK(console["message"] ==
        "virtualmachineinstances.subresources.kubevirt.io \"v\" is forbidden: User \"bob\" cannot "
        "get resource \"virtualmachineinstances/console\" in API group "
        "\"subresources.kubevirt.io\" in the namespace \"d\"");
  auto path = nlohmann::json::parse(
      ForbiddenResponse("bob", RequestAttributesOf(Req("POST", "/x")), "why").body);
  CHECK(path["message"] == "forbidden: User \"bob\" cannot post path \"/x\": why");
  CHECK(path["details"] == nlohmann::json::object());
}

TEST_CASE("WithAuth: credentials, public health endpoints, unix peers, plain HTTP") {
  TempDir tmp("withauth");
  const auto file = tmp.path() / "tokens.csv";
  bool created = false;
  auto admin = EnsureUserToken(file, "admin", Role::kAdmin, false, &created);
  auto viewer = EnsureUserToken(file, "bob", Role::kViewer, false, &created);
  REQUIRE(admin.has_value());
  REQUIRE(viewer.has_value());
  int served = 0;
  auto handler = WithAuth({file, false}, [&](const HttpRequest&) {
    ++served;
    return HttpResponse::Text(200, "ok");
  });
  auto https = [](HttpRequest r, std::string token = "") {
    r.tls = true;
    if (!token.empty()) r.headers.emplace_back("authorization", "Bearer " + token);
    return r;
  };
  const char* vms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
  CHECK(handler(https(Req("GET", vms))).status == 401);
  CHECK(handler(https(Req("GET", "/apis"))).status == 401);
  CHECK(handler(https(Req("GET", vms), "wrong-token-0123456789")).status == 401);
  CHECK(handler(https(Req("GET", "/healthz"))).status == 200);
  CHECK(handler(https(Req("GET", "/readyz/ping"))).status == 200);
  CHECK(handler(https(Req("GET", "/version"))).status == 200);
  CHECK(handler(https(Req("POST", "/healthz"))).status == 401);
  // A bad token is refused even where anonymous requests are served (as kube-apiserver does).
  CHECK(handler(https(Req("GET", "/healthz"), "wrong-token-0123456789")).status == 401);
  CHECK(served == 3);
  CHECK(handler(https(Req("GET", vms), admin->token)).status == 200);
  CHECK(handler(https(Req("POST", vms), admin->token)).status == 200);
  CHECK(handler(https(Req("GET", vms), viewer->token)).status == 200);
  auto denied = handler(https(Req("POST", vms), viewer->token));
  CHECK(denied.status == 403);
  CHECK_THAT(denied.body, Catch::Contains("User \\\"bob\\\" cannot create resource"));
  // "bearer" is case-insensitive.
  HttpRequest lower = https(Req("GET", vms));
  lower.headers.emplace_back("authorization", "bearer " + admin->token);
  CHECK(handler(lower).status == 200);

  // Client certificates (verified by the listener): CN user, O role group.
  HttpRequest cert = https(Req("DELETE", std::string(vms) + "/x"));
  cert.client_certificate = HttpRequest::ClientCertificate{"carol", {"admin"}};
  CHECK(handler(cert).status == 200);
  cert.client_certificate = HttpRequest::ClientCertificate{"dave", {"viewer"}};
  auto dave = handler(cert);
  CHECK(dave.status == 403);
  CHECK_THAT(dave.body, Catch::Contains("User \\\"dave\\\""));

  // The unix socket: root needs no token; anybody else is refused, tokens or not.
  HttpRequest root = Req("DELETE", std::string(vms) + "/x");
  root.peer_uid = 0;
  CHECK(handler(root).status == 200);
  HttpRequest user = Req("GET", "/healthz");
  user.peer_uid = 1000;
  user.headers.emplace_back("authorization", "Bearer " + admin->token);
  CHECK(handler(user).status == 403);

  // Plain HTTP: tokens, unless api.auth.plainHttp is none.
  CHECK(handler(Req("GET", vms)).status == 401);
  CHECK(handler(https(Req("GET", vms), admin->token)).status == 200);
  auto open =
      WithAuth({file, true}, [](const HttpRequest&) { return HttpResponse::Text(200, ""); });
  CHECK(open(Req("POST", vms)).status == 200);
  CHECK(open(https(Req("POST", vms))).status == 401);  // never on https
}

// ---------------------------------------------------------------------------------------------
// The HTTPS listener

struct TlsServer {
  TempDir tmp{"tlssrv"};
  PkiPaths paths{tmp.path() / "pki"};
  std::unique_ptr<HttpServer> server;
  uint16_t port = 0;

  explicit TlsServer(Handler handler) {
    REQUIRE(EnsureServerPki(paths, HostSans({})).has_value());
    ServerOptions o;
    o.listen.push_back(*ListenAddress::Parse("https://127.0.0.1:0"));
    o.tls = {paths.ServerCert().string(), paths.ServerKey().string(), paths.CaCert().string()};
    o.read_timeout = std::chrono::seconds(5);
    auto s = HttpServer::Start(o, std::move(handler));
    REQUIRE(s.has_value());
    server = std::move(*s);
    const std::string bound = server->BoundAddresses().at(0);
    port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
  }
};

struct ClientTls {
  ssl::context ctx{ssl::context::tls_client};
  explicit ClientTls(const PkiPaths& paths) {
    ctx.load_verify_file(paths.CaCert().string());
    ctx.set_verify_mode(ssl::verify_peer);
  }
};

// One HTTPS GET; the negotiated ALPN protocol in *alpn.
http::response<http::string_body> HttpsGet(ssl::context& ctx, uint16_t port,
                                           const std::string& target, std::string* alpn,
                                           const std::string& host = "127.0.0.1") {
  net::io_context ioc;
  beast::ssl_stream<beast::tcp_stream> stream(ioc, ctx);
  static const unsigned char kOffer[] = "\x02h2\x08http/1.1";
  SSL_set_alpn_protos(stream.native_handle(), kOffer, sizeof(kOffer) - 1);
  // The name checked against the SANs, as Go checks a URL's host: an IP SAN for an address.
  if (host.find_first_not_of("0123456789.") != std::string::npos) {
    SSL_set_tlsext_host_name(stream.native_handle(), host.c_str());
    X509_VERIFY_PARAM_set1_host(SSL_get0_param(stream.native_handle()), host.c_str(), 0);
  } else {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(stream.native_handle()), host.c_str());
  }
  beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
  beast::get_lowest_layer(stream).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  stream.handshake(ssl::stream_base::client);
  const unsigned char* proto = nullptr;
  unsigned int len = 0;
  SSL_get0_alpn_selected(stream.native_handle(), &proto, &len);
  if (alpn) *alpn = std::string(reinterpret_cast<const char*>(proto), len);
  http::request<http::empty_body> req(http::verb::get, target, 11);
  req.set(http::field::host, host);
  http::write(stream, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(stream, buf, res);
  beast::error_code ec;
  stream.shutdown(ec);
  return res;
}

TEST_CASE("https: TLS 1.2+, ALPN http/1.1 only, the CA verifies the server, client certificates") {
  std::mutex mu;
  std::optional<HttpRequest::ClientCertificate> seen_cert;
  bool seen_tls = false;
  TlsServer srv([&](const HttpRequest& r) {
    std::lock_guard lock(mu);
    seen_cert = r.client_certificate;
    seen_tls = r.tls;
    return HttpResponse::Text(200, "hello " + r.path);
  });

  ClientTls client(srv.paths);
  std::string alpn;
  auto res = HttpsGet(client.ctx, srv.port, "/x", &alpn);
  CHECK(res.result_int() == 200);
  CHECK(res.body() == "hello /x");
  CHECK(alpn == "http/1.1");  // offered h2 first; never chosen
  {
    std::lock_guard lock(mu);
    CHECK(seen_tls);
    CHECK_FALSE(seen_cert.has_value());
  }
  // The SANs: localhost verifies too.
  CHECK(HttpsGet(client.ctx, srv.port, "/y", nullptr, "localhost").result_int() == 200);
  CHECK_THROWS(HttpsGet(client.ctx, srv.port, "/y", nullptr, "not-a-san.invalid"));

  // A CA that did not sign the server's certificate: the handshake fails.
  {
    TempDir other("otherca");
    PkiPaths op{other.path() / "pki"};
    REQUIRE(EnsureServerPki(op, HostSans({})).has_value());
    ClientTls wrong(op);
    CHECK_THROWS(HttpsGet(wrong.ctx, srv.port, "/z", nullptr));
  }

  // TLS 1.1 is refused.
  {
    ssl::context old(ssl::context::tls_client);
    SSL_CTX_set_security_level(old.native_handle(), 0);
    SSL_CTX_set_min_proto_version(old.native_handle(), TLS1_VERSION);
    SSL_CTX_set_max_proto_version(old.native_handle(), TLS1_1_VERSION);
    old.set_verify_mode(ssl::verify_none);
    CHECK_THROWS(HttpsGet(old, srv.port, "/old", nullptr));
  }

  // A client certificate signed by the CA: CN and O reach the handler.
  auto issued = IssueClientCertificate(srv.paths, "carol", "viewer");
  REQUIRE(issued.has_value());
  ClientTls with_cert(srv.paths);
  with_cert.ctx.use_certificate(net::buffer(issued->cert_pem), ssl::context::pem);
  with_cert.ctx.use_private_key(net::buffer(issued->key_pem), ssl::context::pem);
  CHECK(HttpsGet(with_cert.ctx, srv.port, "/c", nullptr).result_int() == 200);
  {
    std::lock_guard lock(mu);
    REQUIRE(seen_cert.has_value());
    CHECK(seen_cert->common_name == "carol");
    CHECK(seen_cert->organizations == std::vector<std::string>{"viewer"});
  }

  // A certificate from another CA fails the handshake (it is not silently ignored).
  {
    TempDir other("otherca2");
    PkiPaths op{other.path() / "pki"};
    REQUIRE(EnsureServerPki(op, HostSans({})).has_value());
    auto foreign = IssueClientCertificate(op, "mallory", "admin");
    REQUIRE(foreign.has_value());
    ClientTls bad(srv.paths);
    bad.ctx.use_certificate(net::buffer(foreign->cert_pem), ssl::context::pem);
    bad.ctx.use_private_key(net::buffer(foreign->key_pem), ssl::context::pem);
    bool failed = false;
    try {
      auto r = HttpsGet(bad.ctx, srv.port, "/m", nullptr);
      // TLS 1.3 reports the server's rejection after the client's handshake returned.
      failed = r.result_int() != 200;
    } catch (const std::exception&) {
      failed = true;
    }
    CHECK(failed);
  }
}

TEST_CASE("https: WebSocket upgrade over TLS, with the request's headers seen by the handler") {
  std::shared_ptr<testing::PipeStream> device;
  std::string auth_seen;
  std::mutex mu;
  TlsServer srv([&](const HttpRequest& r) {
    HttpResponse resp;
    std::lock_guard lock(mu);
    auth_seen = std::string(r.Header("authorization"));
    device = std::make_shared<testing::PipeStream>(1 << 20, /*echo=*/true);
    resp.websocket = device;
    resp.websocket_options.subprotocol = "plain.kubevirt.io";
    return resp;
  });
  ClientTls client(srv.paths);
  net::io_context ioc;
  beast::websocket::stream<beast::ssl_stream<beast::tcp_stream>> ws(ioc, client.ctx);
  beast::get_lowest_layer(ws).expires_after(std::chrono::seconds(10));
  beast::get_lowest_layer(ws).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), srv.port));
  ws.next_layer().handshake(ssl::stream_base::client);
  ws.set_option(beast::websocket::stream_base::decorator([](beast::websocket::request_type& req) {
    req.set(http::field::sec_websocket_protocol, "plain.kubevirt.io");
    req.set(http::field::authorization, "Bearer abc");
  }));
  beast::websocket::response_type hs;
  ws.handshake(hs, "127.0.0.1", "/console");
  CHECK(hs[http::field::sec_websocket_protocol] == "plain.kubevirt.io");
  ws.binary(true);
  ws.write(net::buffer(std::string("ping\x00\xff", 6)));
  beast::flat_buffer buf;
  ws.read(buf);
  CHECK(beast::buffers_to_string(buf.data()) == std::string("ping\x00\xff", 6));
  ws.close(beast::websocket::close_code::normal);
  std::lock_guard lock(mu);
  CHECK(auth_seen == "Bearer abc");
}

TEST_CASE("https: refused without a certificate; config errors name the file") {
  ServerOptions o;
  o.listen.push_back(*ListenAddress::Parse("https://127.0.0.1:0"));
  auto none = HttpServer::Start(o, [](const HttpRequest&) { return HttpResponse::Text(200, ""); });
  REQUIRE_FALSE(none.has_value());
  CHECK_THAT(none.error().message, Catch::Contains("https needs a certificate"));
  o.tls = {"/nonexistent/cert.pem", "/nonexistent/key.pem", ""};
  auto missing =
      HttpServer::Start(o, [](const HttpRequest&) { return HttpResponse::Text(200, ""); });
  REQUIRE_FALSE(missing.has_value());
  CHECK_THAT(missing.error().message, Catch::Contains("/nonexistent/cert.pem"));
  // https may listen on any address; plain http only on loopback.
  CHECK(ListenAddress::Parse("https://0.0.0.0:8443").has_value());
  CHECK_FALSE(ListenAddress::Parse("http://0.0.0.0:8080").has_value());
}

}  // namespace
}  // namespace edgevirt::api
