// Unit tests of api/: the HTTP server on loopback TCP and unix sockets (streamed responses
// included), and the health endpoints. Hermetic: temp dirs, port 0, short timeouts.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "api/api.h"
#include "api/http_internal.h"
#include "common/fd.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::api {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using edgevirt::testing::TempDir;

ListenAddress Addr(std::string_view text) {
  auto a = ListenAddress::Parse(text);
  INFO(text);
  REQUIRE(a.has_value());
  return *a;
}

// The port of the first bound http:// address.
int TcpPort(const HttpServer& s) {
  for (const auto& a : s.BoundAddresses()) {
    if (a.rfind("http://", 0) == 0) return std::stoi(a.substr(a.rfind(':') + 1));
  }
  FAIL("no TCP address bound");
  return 0;
}

// A handler that echoes the parsed request as JSON, with a few special paths.
HttpResponse Echo(const HttpRequest& r) {
  if (r.path == "/throw") throw std::runtime_error("boom");
  if (r.path == "/throw-int") throw 42;
  if (r.path == "/sleep") {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(*r.QueryParam("ms"))));
    return HttpResponse::Text(200, "slept");
  }
  if (r.path == "/bad-header") {
    HttpResponse res = HttpResponse::Text(200, "x");
    res.headers.emplace_back("X-Evil", "a\r\nSet-Cookie: pwned=1");
    res.headers.emplace_back("X-Good", "fine");
    return res;
  }
  if (r.path == "/close") {
    HttpResponse res = HttpResponse::Text(200, "bye");
    res.headers.emplace_back("Connection", "close");
    return res;
  }
  if (r.path == "/fixed") return HttpResponse::Text(200, "fixed body");
  if (r.path == "/no-content") return HttpResponse{204, {}, "ignored"};
  nlohmann::json headers = nlohmann::json::object();
  for (const auto& [n, v] : r.headers) headers[n] = v;
  nlohmann::json j = {{"method", r.method},
                      {"target", r.target},
                      {"path", r.path},
                      {"query", r.query},
                      {"headers", headers},
                      {"body", r.body},
                      {"peer_uid", r.peer_uid ? static_cast<int64_t>(*r.peer_uid) : -1}};
  if (auto q = r.QueryParam("q")) j["q"] = *q;
  return HttpResponse::Json(200, j.dump());
}

struct Started {
  std::unique_ptr<HttpServer> server;
  int port = 0;
};

Started StartServer(ServerOptions o, Handler h = Echo) {
  auto s = HttpServer::Start(std::move(o), std::move(h));
  if (!s) FAIL(s.error().ToString());
  Started out;
  out.server = std::move(s).value();
  for (const auto& a : out.server->BoundAddresses()) {
    if (a.rfind("http://", 0) == 0) out.port = TcpPort(*out.server);
  }
  return out;
}

ServerOptions TcpOptions() {
  ServerOptions o;
  o.listen = {Addr("http://127.0.0.1:0")};
  o.io_threads = 2;
  return o;
}

// ----- raw sockets -----------------------------------------------------------------------------

// `rcvbuf` > 0: a small receive buffer (set before connect, so the window stays small), for
// clients that stop reading.
UniqueFd ConnectTcp(int port, int rcvbuf = 0) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  if (rcvbuf > 0) {
    REQUIRE(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == 0);
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
  return fd;
}

int ConnectUnixRaw(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

UniqueFd ConnectUnix(const std::string& path) {
  UniqueFd fd(ConnectUnixRaw(path));
  REQUIRE(fd);
  return fd;
}

void SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n > 0);
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// Reads what arrives within `timeout` into `buf`. Returns false on EOF or reset.
enum class ReadStatus { kData, kTimeout, kClosed };
ReadStatus ReadSome(int fd, std::string* buf, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (r == 0) return ReadStatus::kTimeout;
  char tmp[8192];
  ssize_t n = ::recv(fd, tmp, sizeof(tmp), 0);
  if (n <= 0) return ReadStatus::kClosed;
  buf->append(tmp, static_cast<size_t>(n));
  return ReadStatus::kData;
}

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// Takes one response off the front of `buf`, reading more as needed. `head`: no body follows.
std::optional<RawResponse> ReadResponse(int fd, std::string* buf, bool head = false,
                                        std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = Clock::now() + timeout;
  auto remaining = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  };
  size_t end;
  while ((end = buf->find("\r\n\r\n")) == std::string::npos) {
    if (remaining() <= 0ms || ReadSome(fd, buf, remaining()) != ReadStatus::kData) {
      return std::nullopt;
    }
  }
  RawResponse res;
  std::string head_text = buf->substr(0, end);
  buf->erase(0, end + 4);
  size_t line_end = head_text.find("\r\n");
  std::string status_line = head_text.substr(0, line_end);
  REQUIRE(status_line.rfind("HTTP/1.", 0) == 0);
  res.status = std::stoi(status_line.substr(9, 3));
  size_t pos = line_end == std::string::npos ? head_text.size() : line_end + 2;
  while (pos < head_text.size()) {
    size_t next = head_text.find("\r\n", pos);
    if (next == std::string::npos) next = head_text.size();
    std::string line = head_text.substr(pos, next - pos);
    size_t colon = line.find(':');
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    res.headers[internal::ToLowerAscii(line.substr(0, colon))] = value;
    pos = next + 2;
  }
  size_t length = 0;
  if (!head && res.headers.count("content-length")) {
    length = std::stoul(res.headers["content-length"]);
  }
  while (buf->size() < length) {
    if (remaining() <= 0ms || ReadSome(fd, buf, remaining()) != ReadStatus::kData) {
      return std::nullopt;
    }
  }
  res.body = buf->substr(0, length);
  buf->erase(0, length);
  return res;
}

// True if the peer closes the connection within `timeout` (other data is discarded).
bool WaitClosed(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string ignored;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (ReadSome(fd, &ignored, std::max(left, 1ms)) == ReadStatus::kClosed) return true;
  }
  return false;
}

nlohmann::json ParseStatus(const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  CHECK(j["kind"] == "Status");
  CHECK(j["apiVersion"] == "v1");
  CHECK(j["status"] == "Failure");
  CHECK(j["metadata"].is_object());
  return j;
}

// ----- parsing ---------------------------------------------------------------------------------

TEST_CASE("ListenAddress::Parse accepts unix, loopback http and https") {
  auto u = Addr("unix:/run/edgevirt/api.sock");
  CHECK(u.kind == ListenAddress::Kind::kUnix);
  CHECK(u.path == "/run/edgevirt/api.sock");
  CHECK(u.ToString() == "unix:/run/edgevirt/api.sock");
  CHECK(Addr("unix:///run/x.sock").path == "/run/x.sock");

  auto h = Addr("http://127.0.0.1:8080");
  CHECK(h.kind == ListenAddress::Kind::kHttp);
  CHECK(h.host == "127.0.0.1");
  CHECK(h.port == 8080);
  CHECK(h.ToString() == "http://127.0.0.1:8080");
  CHECK(Addr("http://127.8.9.10:1").host == "127.8.9.10");  // all of 127.0.0.0/8
  auto v6 = Addr("http://[::1]:0");
  CHECK(v6.host == "::1");
  CHECK(v6.port == 0);
  CHECK(v6.ToString() == "http://[::1]:0");
  CHECK(Addr("http://localhost:65535").host == "localhost");
  CHECK(Addr("http://LocalHost:80/").host == "localhost");

  auto s = Addr("https://0.0.0.0:6443");
  CHECK(s.kind == ListenAddress::Kind::kHttps);
  CHECK(s.ToString() == "https://0.0.0.0:6443");
  CHECK(Addr("https://[2001:db8::1]:443").host == "2001:db8::1");
}

TEST_CASE("ListenAddress::Parse refuses non-loopback http and malformed addresses") {
  auto open = ListenAddress::Parse("http://0.0.0.0:8080");
  REQUIRE_FALSE(open.has_value());
  CHECK(open.error().code == Code::kInvalid);
  CHECK(open.error().message.find("loopback") != std::string::npos);
  CHECK(open.error().message.find("http://0.0.0.0:8080") != std::string::npos);
  for (const char* bad :
       {"http://192.168.1.10:80", "http://[::]:80", "http://[2001:db8::1]:80",
        "http://example.com:80", "http://127.0.0.1", "http://127.0.0.1:", "http://127.0.0.1:65536",
        "http://127.0.0.1:80/api", "http://127.0.0.1:8x", "http://::1:80", "http://[::1:80",
        "http://[127.0.0.1]:80", "http://:80", "tcp://127.0.0.1:80", "unix:relative.sock",
        "unix:", "", "127.0.0.1:80"}) {
    INFO(bad);
    auto r = ListenAddress::Parse(bad);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Code::kInvalid);
  }
  std::string long_path = "unix:/" + std::string(107, 'a');
  CHECK_FALSE(ListenAddress::Parse(long_path).has_value());
  CHECK(ListenAddress::Parse("unix:/" + std::string(106, 'a')).has_value());
}

TEST_CASE("request helpers decode paths and query parameters") {
  auto t = internal::SplitTarget("/api/v1/a%20b?x=1%202&y");
  REQUIRE(t);
  CHECK(t->path == "/api/v1/a b");
  CHECK(t->query == "x=1%202&y");
  CHECK(internal::SplitTarget("http://host:1/p?q")->path == "/p");
  CHECK(internal::SplitTarget("http://host:1")->path == "/");
  CHECK(internal::SplitTarget("*")->path == "*");
  CHECK_FALSE(internal::SplitTarget("relative"));
  CHECK_FALSE(internal::SplitTarget("/bad%zz"));
  CHECK_FALSE(internal::SplitTarget("/nul%00"));
  CHECK_FALSE(internal::SplitTarget("/short%2"));

  HttpRequest r;
  r.query = "labelSelector=app%3Dweb&watch=true&verbose&q=a+b&empty=";
  r.headers = {{"content-type", "application/json"}};
  CHECK(r.QueryParam("labelSelector") == "app=web");
  CHECK(r.QueryParam("watch") == "true");
  CHECK(r.QueryParam("verbose") == "");
  CHECK(r.QueryParam("empty") == "");
  CHECK(r.QueryParam("q") == "a b");
  CHECK_FALSE(r.QueryParam("missing").has_value());
  CHECK(r.Header("Content-Type") == "application/json");
  CHECK(r.Header("accept").empty());

  CHECK(internal::HttpDate(std::chrono::system_clock::from_time_t(784111777)) ==
        "Sun, 06 Nov 1994 08:49:37 GMT");
  auto status = ParseStatus(HttpResponse::StatusError(404, "NotFound", "x \"y\" \xff").body);
  CHECK(status["code"] == 404);
  CHECK(status["reason"] == "NotFound");
  CHECK(HttpResponse::StatusError(413, "RequestEntityTooLarge", "m").body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m",)"
        R"("reason":"RequestEntityTooLarge","code":413})");
}

// ----- serving ---------------------------------------------------------------------------------

TEST_CASE("https without a certificate and bad options are refused by Start") {
  ServerOptions o;
  o.listen = {Addr("https://127.0.0.1:0")};
  auto s = HttpServer::Start(o, Echo);
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().code == Code::kInvalid);
  CHECK(s.error().message.find("https needs a certificate and a key") != std::string::npos);

  // A hand-built non-loopback http address is re-checked.
  ListenAddress open;
  open.kind = ListenAddress::Kind::kHttp;
  open.host = "0.0.0.0";
  o.listen = {open};
  s = HttpServer::Start(o, Echo);
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().code == Code::kInvalid);

  o = TcpOptions();
  o.io_threads = 0;
  CHECK(HttpServer::Start(o, Echo).error().code == Code::kInvalid);
  CHECK(HttpServer::Start(TcpOptions(), nullptr).error().code == Code::kInvalid);
}

TEST_CASE("GET and HEAD over TCP with httplib") {
  auto s = StartServer(TcpOptions());
  REQUIRE(s.server->BoundAddresses().size() == 1);
  CHECK(s.server->BoundAddresses()[0] == "http://127.0.0.1:" + std::to_string(s.port));
  CHECK(s.port > 0);

  httplib::Client cli("127.0.0.1", s.port);
  auto res = cli.Get("/api/a%20b?q=x%2By%20z&watch=true", {{"X-Mixed-Case", "V"}});
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->get_header_value("Content-Type") == "application/json");
  CHECK_FALSE(res->get_header_value("Date").empty());
  CHECK(res->get_header_value("Content-Length") == std::to_string(res->body.size()));
  auto j = nlohmann::json::parse(res->body);
  CHECK(j["method"] == "GET");
  CHECK(j["path"] == "/api/a b");
  CHECK(j["target"] == "/api/a%20b?q=x%2By%20z&watch=true");
  CHECK(j["query"] == "q=x%2By%20z&watch=true");
  CHECK(j["q"] == "x+y z");
  CHECK(j["headers"]["x-mixed-case"] == "V");
  CHECK(j["peer_uid"] == -1);  // TCP has no peer credentials

  auto post = cli.Post("/post", "hello body", "text/plain");
  REQUIRE(post);
  CHECK(nlohmann::json::parse(post->body)["body"] == "hello body");

  auto head = cli.Head("/fixed");
  REQUIRE(head);
  CHECK(head->status == 200);
  CHECK(head->body.empty());
  CHECK(head->get_header_value("Content-Length") == "10");  // what GET would send
  CHECK(head->get_header_value("Content-Type") == "text/plain; charset=utf-8");

  auto nc = cli.Get("/no-content");
  REQUIRE(nc);
  CHECK(nc->status == 204);
  CHECK(nc->body.empty());
  s.server->Stop(1s);
}

TEST_CASE("localhost and [::1] listeners report their real ports") {
  ServerOptions o;
  o.listen = {Addr("http://localhost:0"), Addr("http://[::1]:0")};
  auto s = StartServer(o);
  auto bound = s.server->BoundAddresses();
  REQUIRE(bound.size() == 2);
  CHECK(bound[0].rfind("http://127.0.0.1:", 0) == 0);
  CHECK(bound[0] != "http://127.0.0.1:0");
  CHECK(bound[1].rfind("http://[::1]:", 0) == 0);
  CHECK(bound[1] != "http://[::1]:0");
  // Each reported address parses back and serves.
  for (const auto& a : bound) {
    auto parsed = ListenAddress::Parse(a);
    REQUIRE(parsed.has_value());
    httplib::Client cli(parsed->host, parsed->port);
    auto res = cli.Get("/fixed");
    INFO(a);
    REQUIRE(res);
    CHECK(res->body == "fixed body");
  }

  // A port in use fails Start, naming the address.
  ServerOptions taken;
  taken.listen = {Addr(bound[0])};
  auto again = HttpServer::Start(taken, Echo);
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().message.find(bound[0]) != std::string::npos);
}

TEST_CASE("keep-alive serves sequential and pipelined requests on one connection") {
  auto s = StartServer(TcpOptions());
  UniqueFd fd = ConnectTcp(s.port);
  std::string buf;
  for (int i = 0; i < 3; ++i) {
    SendAll(fd.get(), "GET /seq/" + std::to_string(i) + "?q=a+b%2B HTTP/1.1\r\nHost: x\r\n\r\n");
    auto r = ReadResponse(fd.get(), &buf);
    REQUIRE(r);
    CHECK(r->status == 200);
    auto j = nlohmann::json::parse(r->body);
    CHECK(j["path"] == "/seq/" + std::to_string(i));
    CHECK(j["q"] == "a b+");
    CHECK(r->headers.count("connection") == 0);  // HTTP/1.1 default: keep-alive
  }
  // Three requests in one write, one of them HEAD, answered in order.
  SendAll(fd.get(),
          "GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\n"
          "HEAD /p/2 HTTP/1.1\r\nHost: x\r\n\r\n"
          "POST /p/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
  auto r1 = ReadResponse(fd.get(), &buf);
  auto r2 = ReadResponse(fd.get(), &buf, /*head=*/true);
  auto r3 = ReadResponse(fd.get(), &buf);
  REQUIRE((r1 && r2 && r3));
  CHECK(nlohmann::json::parse(r1->body)["path"] == "/p/1");
  CHECK(r2->body.empty());
  CHECK(std::stoul(r2->headers["content-length"]) > 0);
  CHECK(nlohmann::json::parse(r3->body)["body"] == "hello");
  CHECK(buf.empty());

  // HTTP/1.0 without keep-alive, and Connection: close, end the connection after the answer.
  SendAll(fd.get(), "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  auto last = ReadResponse(fd.get(), &buf);
  REQUIRE(last);
  CHECK(last->headers["connection"] == "close");
  CHECK(WaitClosed(fd.get(), 2s));

  UniqueFd fd10 = ConnectTcp(s.port);
  buf.clear();
  SendAll(fd10.get(), "GET /old HTTP/1.0\r\n\r\n");
  auto old = ReadResponse(fd10.get(), &buf);
  REQUIRE(old);
  CHECK(old->status == 200);
  CHECK(WaitClosed(fd10.get(), 2s));

  // A handler can close the connection.
  UniqueFd fd_close = ConnectTcp(s.port);
  buf.clear();
  SendAll(fd_close.get(), "GET /close HTTP/1.1\r\nHost: x\r\n\r\n");
  auto closed = ReadResponse(fd_close.get(), &buf);
  REQUIRE(closed);
  CHECK(closed->body == "bye");
  CHECK(closed->headers["connection"] == "close");
  CHECK(WaitClosed(fd_close.get(), 2s));
}

TEST_CASE("Expect: 100-continue is answered before the body is read") {
  auto s = StartServer(TcpOptions());
  UniqueFd fd = ConnectTcp(s.port);
  SendAll(fd.get(),
          "PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
  std::string buf;
  while (buf.find("\r\n\r\n") == std::string::npos) {
    REQUIRE(ReadSome(fd.get(), &buf, 2000ms) == ReadStatus::kData);
  }
  CHECK(buf == "HTTP/1.1 100 Continue\r\n\r\n");
  buf.clear();
  SendAll(fd.get(), "abc");
  auto r = ReadResponse(fd.get(), &buf);
  REQUIRE(r);
  CHECK(nlohmann::json::parse(r->body)["body"] == "abc");
}

TEST_CASE("unix socket: mode 0600, peer uid, stale file replaced, unlinked by Stop") {
  TempDir dir;
  const std::string path = dir.Path("api.sock");
  {
    // A stale socket file, as a killed daemon leaves behind.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
    ::close(fd);
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    REQUIRE(S_ISSOCK(st.st_mode));
  }
  ServerOptions o;
  o.listen = {Addr("unix:" + path), Addr("http://127.0.0.1:0")};
  auto s = StartServer(o);
  CHECK(s.server->BoundAddresses()[0] == "unix:" + path);

  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0600);

  UniqueFd fd = ConnectUnix(path);
  std::string buf;
  SendAll(fd.get(), "GET /over/unix?q=1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
  auto r = ReadResponse(fd.get(), &buf);
  REQUIRE(r);
  auto j = nlohmann::json::parse(r->body);
  CHECK(j["path"] == "/over/unix");
  CHECK(j["peer_uid"] == static_cast<int64_t>(::getuid()));

  // A second server on the same path: the socket is live, so it is refused and left alone.
  ServerOptions o2;
  o2.listen = {Addr("unix:" + path)};
  auto second = HttpServer::Start(o2, Echo);
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == Code::kAlreadyExists);
  CHECK(second.error().message.find(path) != std::string::npos);
  CHECK(::access(path.c_str(), F_OK) == 0);

  s.server->Stop(1s);
  CHECK(::access(path.c_str(), F_OK) != 0);
  CHECK(WaitClosed(fd.get(), 1s));
  CHECK(ConnectUnixRaw(path) < 0);
}

TEST_CASE("a path that is not a socket is refused and kept") {
  TempDir dir;
  const std::string path = dir.Path("not-a-socket");
  std::ofstream(path) << "precious";
  ServerOptions o;
  o.listen = {Addr("http://127.0.0.1:0"), Addr("unix:" + path)};
  auto s = HttpServer::Start(o, Echo);
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().code == Code::kAlreadyExists);
  CHECK(s.error().message.find("not a socket") != std::string::npos);
  std::ifstream in(path);
  std::string content;
  in >> content;
  CHECK(content == "precious");

  // A bind failure later in the list removes the socket files created before it.
  const std::string good = dir.Path("good.sock");
  o.listen = {Addr("unix:" + good), Addr("unix:" + dir.Path("missing-dir/x.sock"))};
  s = HttpServer::Start(o, Echo);
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().message.find("missing-dir") != std::string::npos);
  CHECK(::access(good.c_str(), F_OK) != 0);
}

TEST_CASE("the destructor stops the server and removes the socket file") {
  TempDir dir;
  const std::string path = dir.Path("d.sock");
  ServerOptions o;
  o.listen = {Addr("unix:" + path)};
  {
    auto s = StartServer(o);
    CHECK(::access(path.c_str(), F_OK) == 0);
  }
  CHECK(::access(path.c_str(), F_OK) != 0);
}

TEST_CASE("bodies over max_body_bytes get 413 with a Status") {
  ServerOptions o = TcpOptions();
  o.max_body_bytes = 1024;
  auto s = StartServer(o);
  httplib::Client cli("127.0.0.1", s.port);
  auto ok = cli.Post("/small", std::string(1024, 'a'), "text/plain");
  REQUIRE(ok);
  CHECK(ok->status == 200);
  auto res = cli.Post("/big", std::string(4096, 'a'), "text/plain");
  REQUIRE(res);
  CHECK(res->status == 413);
  auto j = ParseStatus(res->body);
  CHECK(j["reason"] == "RequestEntityTooLarge");
  CHECK(j["code"] == 413);

  // Chunked bodies are counted as they arrive.
  UniqueFd fd = ConnectTcp(s.port);
  std::string chunk(1000, 'b');
  std::string req = "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 3; ++i) req += "3e8\r\n" + chunk + "\r\n";
  req += "0\r\n\r\n";
  SendAll(fd.get(), req);
  std::string buf;
  auto r = ReadResponse(fd.get(), &buf);
  REQUIRE(r);
  CHECK(r->status == 413);
  CHECK(ParseStatus(r->body)["reason"] == "RequestEntityTooLarge");
  CHECK(WaitClosed(fd.get(), 3s));
}

TEST_CASE("headers over max_header_bytes get 431 with a Status") {
  ServerOptions o = TcpOptions();
  o.max_header_bytes = 2048;
  auto s = StartServer(o);
  UniqueFd fd = ConnectTcp(s.port);
  SendAll(fd.get(), "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(8192, 'h') + "\r\n\r\n");
  std::string buf;
  auto r = ReadResponse(fd.get(), &buf);
  REQUIRE(r);
  CHECK(r->status == 431);
  auto j = ParseStatus(r->body);
  CHECK(j["reason"] == "RequestHeaderFieldsTooLarge");
  CHECK(j["code"] == 431);
  CHECK(WaitClosed(fd.get(), 3s));

  httplib::Client cli("127.0.0.1", s.port);
  auto res = cli.Get("/", {{"X-Big", std::string(4096, 'h')}});
  REQUIRE(res);
  CHECK(res->status == 431);
}

TEST_CASE("malformed requests get 400 and the connection is closed") {
  auto s = StartServer(TcpOptions());
  for (std::string bad :
       {"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", "GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", "\x01\x02\x03 / HTTP/1.1\r\n\r\n",
        "GET relative HTTP/1.1\r\nHost: x\r\n\r\n", "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n" /* no Host */}) {
    INFO(bad);
    UniqueFd fd = ConnectTcp(s.port);
    SendAll(fd.get(), bad);
    std::string buf;
    auto r = ReadResponse(fd.get(), &buf);
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(ParseStatus(r->body)["reason"] == "BadRequest");
    CHECK(WaitClosed(fd.get(), 3s));
  }
  // The server still serves.
  httplib::Client cli("127.0.0.1", s.port);
  auto res = cli.Get("/after");
  REQUIRE(res);
  CHECK(res->status == 200);
}

TEST_CASE("slowloris: a request that does not arrive within read_timeout is cut off") {
  ServerOptions o = TcpOptions();
  o.read_timeout = 1s;
  o.idle_timeout = 30s;
  auto s = StartServer(o);
  UniqueFd fd = ConnectTcp(s.port);
  const auto start = Clock::now();
  SendAll(fd.get(), "GET / HTTP/1.1\r\nHost: x\r\n");
  // Trickle a header byte every 100 ms; the deadline is for the whole request.
  bool closed = false;
  std::string ignored;
  while (Clock::now() - start < 4s) {
    if (::send(fd.get(), "X", 1, MSG_NOSIGNAL) != 1 ||
        ReadSome(fd.get(), &ignored, 100ms) == ReadStatus::kClosed) {
      closed = true;
      break;
    }
  }
  const auto elapsed = Clock::now() - start;
  CHECK(closed);
  CHECK(elapsed >= 900ms);
  CHECK(elapsed < 3s);

  // A connection that sends nothing at all is closed after read_timeout too.
  UniqueFd silent = ConnectTcp(s.port);
  CHECK(WaitClosed(silent.get(), 3s));
}

TEST_CASE("an idle keep-alive connection is closed after idle_timeout") {
  ServerOptions o = TcpOptions();
  o.read_timeout = 30s;
  o.idle_timeout = 1s;
  auto s = StartServer(o);
  UniqueFd fd = ConnectTcp(s.port);
  std::string buf;
  SendAll(fd.get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(ReadResponse(fd.get(), &buf));
  const auto start = Clock::now();
  CHECK(WaitClosed(fd.get(), 4s));
  const auto elapsed = Clock::now() - start;
  CHECK(elapsed >= 900ms);
  CHECK(elapsed < 3s);
}

TEST_CASE("connections beyond max_connections get 503 and are closed") {
  ServerOptions o = TcpOptions();
  o.max_connections = 2;
  auto s = StartServer(o);
  std::string buf;
  UniqueFd a = ConnectTcp(s.port);
  UniqueFd b = ConnectTcp(s.port);
  for (int fd : {a.get(), b.get()}) {  // make sure both are admitted
    SendAll(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    buf.clear();
    REQUIRE(ReadResponse(fd, &buf));
  }
  UniqueFd c = ConnectTcp(s.port);
  buf.clear();
  auto r = ReadResponse(c.get(), &buf);
  REQUIRE(r);
  CHECK(r->status == 503);
  CHECK(ParseStatus(r->body)["reason"] == "ServiceUnavailable");
  CHECK(WaitClosed(c.get(), 2s));

  // Closing one admitted connection frees its slot.
  a.reset();
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {
    UniqueFd d = ConnectTcp(s.port);
    SendAll(d.get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    buf.clear();
    auto rd = ReadResponse(d.get(), &buf);
    served = rd && rd->status == 200;
    if (!served) std::this_thread::sleep_for(20ms);
  }
  CHECK(served);
}

TEST_CASE("an exception from the handler is a 500 Status, and serving goes on") {
  auto s = StartServer(TcpOptions());
  httplib::Client cli("127.0.0.1", s.port);
  for (const char* path : {"/throw", "/throw-int"}) {
    auto res = cli.Get(path);
    REQUIRE(res);
    CHECK(res->status == 500);
    auto j = ParseStatus(res->body);
    CHECK(j["reason"] == "InternalError");
    CHECK(j["code"] == 500);
    CHECK(j["message"].get<std::string>().find("boom") == std::string::npos);  // not leaked
  }
  auto res = cli.Get("/fine");
  REQUIRE(res);
  CHECK(res->status == 200);

  // Header injection through a response header value is refused.
  auto evil = cli.Get("/bad-header");
  REQUIRE(evil);
  CHECK_FALSE(evil->has_header("Set-Cookie"));
  CHECK_FALSE(evil->has_header("X-Evil"));
  CHECK(evil->get_header_value("X-Good") == "fine");
}

TEST_CASE("Stop lets in-flight requests finish, closes idle connections, refuses new ones") {
  TempDir dir;
  ServerOptions o = TcpOptions();
  o.listen.push_back(Addr("unix:" + dir.Path("s.sock")));
  auto s = StartServer(o);

  UniqueFd idle = ConnectTcp(s.port);
  std::string idle_buf;
  SendAll(idle.get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(ReadResponse(idle.get(), &idle_buf));

  UniqueFd busy = ConnectTcp(s.port);
  SendAll(busy.get(), "GET /sleep?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n");
  std::this_thread::sleep_for(100ms);  // the handler is running now

  const auto start = Clock::now();
  s.server->Stop(5s);
  const auto elapsed = Clock::now() - start;
  CHECK(elapsed < 3s);

  std::string buf;
  auto r = ReadResponse(busy.get(), &buf);
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->body == "slept");
  CHECK(r->headers["connection"] == "close");
  CHECK(WaitClosed(busy.get(), 1s));
  CHECK(WaitClosed(idle.get(), 1s));

  UniqueFd refused(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(s.port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(::connect(refused.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0);
  CHECK(::access(dir.Path("s.sock").c_str(), F_OK) != 0);
  s.server->Stop(1s);  // idempotent
}

TEST_CASE("Stop closes a request that outlives the grace period") {
  auto s = StartServer(TcpOptions());
  UniqueFd busy = ConnectTcp(s.port);
  SendAll(busy.get(), "GET /sleep?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n");
  std::this_thread::sleep_for(100ms);
  const auto start = Clock::now();
  s.server->Stop(100ms);
  CHECK(Clock::now() - start < 3s);
  // Whether the late answer got out before the close is a race; the close is not.
  CHECK(WaitClosed(busy.get(), 1s));
}

// A handler that defers "/defer/..." to the blocking pool, where each request waits at a
// barrier until `release` is set (a stand-in for a durable commit shared by many writers).
struct DeferHarness {
  std::mutex mu;
  std::condition_variable cv;
  int waiting = 0;
  int max_waiting = 0;
  bool release = false;

  Handler MakeHandler() {
    return [this](const HttpRequest& r) -> HttpResponse {
      if (r.path == "/defer/throw") {
        return HttpResponse::Deferred(
            [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("boom"); });
      }
      if (r.path == "/defer/again") {
        return HttpResponse::Deferred(
            [](const HttpRequest&) { return HttpResponse::Deferred(Echo); });
      }
      if (r.path == "/defer/stream") {
        return HttpResponse::Deferred([](const HttpRequest&) {
          HttpResponse res = HttpResponse::Text(200, "first\n");
          res.stream = [](std::shared_ptr<ResponseStream> s) {
            s->Write("second\n");
            s->Finish();
          };
          return res;
        });
      }
      if (r.path.rfind("/defer/", 0) == 0) {
        return HttpResponse::Deferred([this](const HttpRequest& req) {
          std::unique_lock lock(mu);
          ++waiting;
          max_waiting = std::max(max_waiting, waiting);
          cv.notify_all();
          cv.wait(lock, [&] { return release; });
          --waiting;
          // The request (with its body) reaches the deferred function intact.
          return HttpResponse::Text(201, req.method + " " + req.path + " " + req.body);
        });
      }
      return Echo(r);
    };
  }
  bool WaitForWaiting(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return waiting >= n; });
  }
  void Release() {
    std::lock_guard lock(mu);
    release = true;
    cv.notify_all();
  }
};

TEST_CASE("deferred handlers run on the blocking pool, not on an io thread") {
  DeferHarness h;
  ServerOptions o = TcpOptions();
  o.io_threads = 1;
  o.blocking_threads = 16;
  auto s = StartServer(o, h.MakeHandler());

  // 16 writers wait at once although there is a single io thread...
  constexpr int kWriters = 16;
  std::vector<UniqueFd> fds;
  for (int i = 0; i < kWriters; ++i) {
    fds.push_back(ConnectTcp(s.port));
    const std::string body = "body-" + std::to_string(i);
    SendAll(fds.back().get(), "POST /defer/" + std::to_string(i) +
                                  " HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                  std::to_string(body.size()) + "\r\n\r\n" + body);
  }
  REQUIRE(h.WaitForWaiting(kWriters, 10s));
  // ...and the io thread still answers other requests meanwhile.
  httplib::Client cli("127.0.0.1", s.port);
  auto res = cli.Get("/fine");
  REQUIRE(res);
  CHECK(res->status == 200);

  h.Release();
  for (int i = 0; i < kWriters; ++i) {
    std::string buf;
    auto r = ReadResponse(fds[i].get(), &buf);
    REQUIRE(r);
    CHECK(r->status == 201);
    CHECK(r->body == "POST /defer/" + std::to_string(i) + " body-" + std::to_string(i));
    // Keep-alive works after a deferred answer.
    SendAll(fds[i].get(), "GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    std::string buf2;
    auto again = ReadResponse(fds[i].get(), &buf2);
    REQUIRE(again);
    CHECK(again->status == 200);
  }
  CHECK(h.max_waiting == kWriters);
}

TEST_CASE("more deferred requests than blocking threads queue, and all are answered") {
  DeferHarness h;
  ServerOptions o = TcpOptions();
  o.blocking_threads = 2;
  auto s = StartServer(o, h.MakeHandler());
  std::vector<UniqueFd> fds;
  for (int i = 0; i < 6; ++i) {
    fds.push_back(ConnectTcp(s.port));
    SendAll(fds.back().get(), "POST /defer/q HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  }
  REQUIRE(h.WaitForWaiting(2, 10s));
  std::this_thread::sleep_for(100ms);
  {
    std::lock_guard lock(h.mu);
    CHECK(h.waiting == 2);  // the pool bounds the concurrency
  }
  h.Release();
  for (auto& fd : fds) {
    std::string buf;
    auto r = ReadResponse(fd.get(), &buf);
    REQUIRE(r);
    CHECK(r->status == 201);
  }
}

TEST_CASE("deferred handlers: exceptions, a second deferral, a stream") {
  DeferHarness h;
  auto s = StartServer(TcpOptions(), h.MakeHandler());
  httplib::Client cli("127.0.0.1", s.port);
  for (const char* path : {"/defer/throw", "/defer/again"}) {
    auto res = cli.Post(path, "", "application/json");
    REQUIRE(res);
    CHECK(res->status == 500);
    CHECK(ParseStatus(res->body)["reason"] == "InternalError");
    CHECK(res->body.find("boom") == std::string::npos);
  }
  auto res = cli.Post("/defer/stream", "", "application/json");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->body == "first\nsecond\n");
  auto fine = cli.Get("/fine");
  REQUIRE(fine);
  CHECK(fine->status == 200);
}

TEST_CASE("Stop waits for a running deferred handler; a closed client drops its answer") {
  DeferHarness h;
  ServerOptions o = TcpOptions();
  auto s = StartServer(o, h.MakeHandler());
  UniqueFd gone = ConnectTcp(s.port);
  SendAll(gone.get(), "POST /defer/gone HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  UniqueFd busy = ConnectTcp(s.port);
  SendAll(busy.get(), "POST /defer/busy HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  REQUIRE(h.WaitForWaiting(2, 10s));
  gone.reset();  // the client gives up while its handler runs
  std::thread releaser([&] {
    std::this_thread::sleep_for(300ms);
    h.Release();
  });
  const auto start = Clock::now();
  s.server->Stop(5s);
  const auto elapsed = Clock::now() - start;
  releaser.join();
  CHECK(elapsed >= 250ms);  // it waited for the handlers
  CHECK(elapsed < 4s);
  std::string buf;
  auto r = ReadResponse(busy.get(), &buf);
  REQUIRE(r);
  CHECK(r->status == 201);
  CHECK(r->headers["connection"] == "close");
  CHECK(WaitClosed(busy.get(), 1s));
}

TEST_CASE("50 concurrent clients x 100 requests") {
  ServerOptions o = TcpOptions();
  o.io_threads = 4;
  auto s = StartServer(
      o, [](const HttpRequest& r) { return HttpResponse::Text(200, r.path + "|" + r.body); });
  std::atomic<int> ok{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 50; ++c) {
    clients.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", s.port);
      cli.set_keep_alive(true);
      for (int i = 0; i < 100; ++i) {
        std::string path = "/c" + std::to_string(c) + "/" + std::to_string(i);
        auto res = (i % 2 == 0) ? cli.Get(path) : cli.Post(path, "body", "text/plain");
        std::string want = path + "|" + (i % 2 == 0 ? "" : "body");
        if (res && res->status == 200 && res->body == want) {
          ++ok;
        } else {
          ++failed;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  CHECK(failed == 0);
  CHECK(ok == 5000);
}

// ----- streamed responses ----------------------------------------------------------------------

// Takes one chunk of a chunked body off the front of `buf`, reading more as needed: its data,
// "" for the last chunk (whose empty trailer section is consumed too), nullopt on timeout or
// close.
std::optional<std::string> ReadChunk(int fd, std::string* buf,
                                     std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = Clock::now() + timeout;
  auto fill = [&](size_t want) {
    while (buf->size() < want) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left <= 0ms || ReadSome(fd, buf, left) != ReadStatus::kData) return false;
    }
    return true;
  };
  size_t eol;
  while ((eol = buf->find("\r\n")) == std::string::npos) {
    if (!fill(buf->size() + 1)) return std::nullopt;
  }
  const std::string size_line = buf->substr(0, eol);
  REQUIRE_FALSE(size_line.empty());
  REQUIRE(size_line.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos);
  const size_t size = std::stoul(size_line, nullptr, 16);
  const size_t total = eol + 2 + size + 2;
  if (!fill(total)) return std::nullopt;
  std::string data = buf->substr(eol + 2, size);
  CHECK(buf->substr(eol + 2 + size, 2) == "\r\n");
  buf->erase(0, total);
  return data;
}

// Reads until the peer closes (at most `timeout`); everything read is appended to `buf`.
bool ReadToClose(int fd, std::string* buf, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (ReadSome(fd, buf, std::max(left, 1ms)) == ReadStatus::kClosed) return true;
  }
  return false;
}

// Serves streamed responses and keeps the ResponseStreams it hands out, as a watch would.
//   /watch?id=X[&first]  200, application/json, streamed; `first`: a body, sent as first chunk
//   /watch-throw         streamed, but the stream callback throws
//   /watch-204           a streamed 204 (not allowed)
// Everything else: Echo. Declare it before the server, which calls back into it.
class StreamHub {
 public:
  Handler MakeHandler() {
    return [this](const HttpRequest& r) -> HttpResponse {
      if (r.path != "/watch" && r.path != "/watch-throw" && r.path != "/watch-204") return Echo(r);
      HttpResponse res = HttpResponse::Json(r.path == "/watch-204" ? 204 : 200,
                                            r.QueryParam("first") ? "{\"first\":1}\n" : "");
      res.stream = [this, id = r.QueryParam("id").value_or(""),
                    throws = r.path == "/watch-throw"](std::shared_ptr<ResponseStream> s) {
        ++calls;
        // Captures the stream itself: the server must break that cycle (LSan checks).
        s->OnClosed([this, s] {
          std::lock_guard lock(mu_);
          ++closed_;
          cv_.notify_all();
        });
        if (throws) throw std::runtime_error("feed failed");
        std::lock_guard lock(mu_);
        streams_.emplace_back(id, std::move(s));
        cv_.notify_all();
      };
      return res;
    };
  }

  // The `n` first streams, in arrival order, once they are there.
  std::vector<std::pair<std::string, std::shared_ptr<ResponseStream>>> Wait(
      size_t n, std::chrono::milliseconds timeout = 5000ms) {
    std::unique_lock lock(mu_);
    REQUIRE(cv_.wait_for(lock, timeout, [&] { return streams_.size() >= n; }));
    return {streams_.begin(), streams_.begin() + static_cast<ptrdiff_t>(n)};
  }
  std::shared_ptr<ResponseStream> WaitOne() { return Wait(1)[0].second; }

  // True once `n` OnClosed callbacks ran.
  bool WaitClosed(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return closed_ >= n; });
  }
  int Closed() {
    std::lock_guard lock(mu_);
    return closed_;
  }

  std::atomic<int> calls{0};  // of the stream callback

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<std::string, std::shared_ptr<ResponseStream>>> streams_;
  int closed_ = 0;
};

// Sends a watch request and reads the header of the streamed answer.
RawResponse OpenWatch(int fd, std::string* buf, std::string target = "/watch") {
  SendAll(fd, "GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n");
  auto r = ReadResponse(fd, buf, /*head=*/true);  // the header only; chunks follow
  REQUIRE(r);
  return *r;
}

TEST_CASE("a streamed response is chunked, flushed per event, and ended by Finish") {
  StreamHub hub;
  auto s = StartServer(TcpOptions(), hub.MakeHandler());
  UniqueFd fd = ConnectTcp(s.port);
  std::string buf;
  RawResponse head = OpenWatch(fd.get(), &buf, "/watch?first");
  CHECK(head.status == 200);
  CHECK(head.headers["transfer-encoding"] == "chunked");
  CHECK(head.headers["connection"] == "close");
  CHECK(head.headers["content-type"] == "application/json");
  CHECK(head.headers.count("content-length") == 0);
  CHECK_FALSE(head.headers["date"].empty());
  CHECK(ReadChunk(fd.get(), &buf) == "{\"first\":1}\n");  // the body, as first chunk

  auto w = hub.WaitOne();
  CHECK_FALSE(w->closed());
  CHECK(w->Write("{\"type\":\"ADDED\"}\n"));
  // The first event is readable before the second one is even written.
  CHECK(ReadChunk(fd.get(), &buf, 2000ms) == "{\"type\":\"ADDED\"}\n");
  CHECK(ReadSome(fd.get(), &buf, 100ms) == ReadStatus::kTimeout);

  // Writes from another thread (as the store's committer would); an empty Write sends nothing.
  std::atomic<int> accepted{0};
  std::thread([&] {
    accepted += w->Write("e2\n");
    accepted += w->Write("");
    accepted += w->Write(std::string(100000, 'x') + "\n");
  }).join();
  CHECK(accepted == 3);
  CHECK(ReadChunk(fd.get(), &buf) == "e2\n");
  CHECK(ReadChunk(fd.get(), &buf) == std::string(100000, 'x') + "\n");
  CHECK(hub.Closed() == 0);

  w->Finish();
  CHECK(w->closed());
  CHECK_FALSE(w->Write("late\n"));
  CHECK(ReadChunk(fd.get(), &buf) == "");  // the last chunk
  CHECK(buf.empty());
  CHECK(WaitClosed(fd.get(), 2s));
  CHECK(hub.WaitClosed(1, 2s));
  w->Finish();  // idempotent

  // A callback registered after the end runs at once.
  bool ran = false;
  w->OnClosed([&] { ran = true; });
  CHECK(ran);
  CHECK(hub.Closed() == 1);  // exactly once

  // A stream kept after the server is gone is harmless.
  fd.reset();
  s.server.reset();
  CHECK_FALSE(w->Write("x\n"));
  CHECK(w->closed());
}

TEST_CASE("a streaming client hanging up closes the stream") {
  StreamHub hub;
  auto s = StartServer(TcpOptions(), hub.MakeHandler());
  UniqueFd fd = ConnectTcp(s.port);
  std::string buf;
  OpenWatch(fd.get(), &buf);
  auto w = hub.WaitOne();
  REQUIRE(w->Write("e1\n"));
  REQUIRE(ReadChunk(fd.get(), &buf) == "e1\n");
  // Bytes sent by the client while streaming are ignored.
  SendAll(fd.get(), "GET /ignored HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(w->Write("e2\n"));
  REQUIRE(ReadChunk(fd.get(), &buf) == "e2\n");
  CHECK(hub.Closed() == 0);

  fd.reset();
  CHECK(hub.WaitClosed(1, 2s));
  CHECK(w->closed());
  CHECK_FALSE(w->Write("e3\n"));
  w->Finish();
  CHECK(hub.Closed() == 1);
}

TEST_CASE("a streaming client that does not read is cut off") {
  SECTION("by the queue bound") {
    ServerOptions o = TcpOptions();
    o.stream_queue_bytes = 256 << 10;
    StreamHub hub;
    auto s = StartServer(o, hub.MakeHandler());
    UniqueFd fd = ConnectTcp(s.port, /*rcvbuf=*/4096);
    std::string buf;
    OpenWatch(fd.get(), &buf);
    auto w = hub.WaitOne();
    // The kernel buffers take a few MiB, then the queue fills up.
    const std::string chunk(64 << 10, 'x');
    int accepted = 0;
    bool refused = false;
    for (const auto start = Clock::now(); Clock::now() - start < 10s;) {
      if (!w->Write(chunk)) {
        refused = true;
        break;
      }
      ++accepted;
    }
    INFO("accepted " << accepted);
    CHECK(refused);
    CHECK(w->closed());
    CHECK(hub.WaitClosed(1, 2s));
    // The client gets what was sent, then the close, without a last chunk.
    CHECK(ReadToClose(fd.get(), &buf, 5s));
    CHECK(buf.size() < accepted * (chunk.size() + 10));
    CHECK(buf.find("\r\n0\r\n\r\n") == std::string::npos);
  }
  SECTION("by write_timeout") {
    ServerOptions o = TcpOptions();
    o.write_timeout = 1s;
    StreamHub hub;
    auto s = StartServer(o, hub.MakeHandler());
    UniqueFd fd = ConnectTcp(s.port, /*rcvbuf=*/4096);
    std::string buf;
    OpenWatch(fd.get(), &buf);
    auto w = hub.WaitOne();
    // More than the kernel buffers hold (tcp_wmem max is 4 MiB by default), less than the queue
    // bound: the write stalls.
    const auto start = Clock::now();
    REQUIRE(w->Write(std::string(12 << 20, 'y')));
    CHECK(hub.WaitClosed(1, 4s));
    const auto elapsed = Clock::now() - start;
    CHECK(elapsed >= 900ms);
    CHECK(elapsed < 3s);
    CHECK_FALSE(w->Write("z\n"));
  }
}

TEST_CASE("Stop ends streams: the last chunk to readers, a close for the stuck") {
  StreamHub hub;
  auto s = StartServer(TcpOptions(), hub.MakeHandler());
  UniqueFd reader = ConnectTcp(s.port);
  std::string buf;
  OpenWatch(reader.get(), &buf, "/watch?id=reader");
  UniqueFd stuck = ConnectTcp(s.port, /*rcvbuf=*/4096);
  std::string stuck_buf;
  OpenWatch(stuck.get(), &stuck_buf, "/watch?id=stuck");
  auto streams = hub.Wait(2);
  std::map<std::string, std::shared_ptr<ResponseStream>> by_id(streams.begin(), streams.end());
  REQUIRE(by_id["reader"]->Write("e1\n"));
  REQUIRE(ReadChunk(reader.get(), &buf) == "e1\n");
  REQUIRE(by_id["stuck"]->Write(std::string(12 << 20, 'y')));  // stalls: nobody reads

  std::atomic<int64_t> stop_ms{-1};
  std::thread stopper([&] {
    const auto start = Clock::now();
    s.server->Stop(1500ms);
    stop_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  });
  // The reader gets the end of the stream at once (its watch would re-list).
  const auto start = Clock::now();
  CHECK(ReadChunk(reader.get(), &buf, 1000ms) == "");
  CHECK(Clock::now() - start < 500ms);
  CHECK(WaitClosed(reader.get(), 1s));
  stopper.join();
  // The stuck stream is closed when the grace ends.
  CHECK(stop_ms >= 1400);
  CHECK(stop_ms < 3000);
  CHECK(hub.Closed() == 2);
  CHECK_FALSE(by_id["reader"]->Write("e2\n"));
  CHECK(by_id["stuck"]->closed());
}

TEST_CASE("100 concurrent streams x 100 events, written from several threads") {
  ServerOptions o = TcpOptions();
  o.io_threads = 4;
  StreamHub hub;
  auto s = StartServer(o, hub.MakeHandler());
  constexpr int kStreams = 100;
  constexpr int kEvents = 100;
  std::atomic<int> clients_ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kStreams; ++c) {
    clients.emplace_back([&, c] {
      UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_in sa{};
      sa.sin_family = AF_INET;
      sa.sin_port = htons(static_cast<uint16_t>(s.port));
      sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) return;
      const std::string id = std::to_string(c);
      std::string req = "GET /watch?id=" + id + " HTTP/1.1\r\nHost: x\r\n\r\n";
      if (::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(req.size())) {
        return;
      }
      // No Catch assertions off the main thread: parse by hand, count successes.
      std::string buf;
      const auto deadline = Clock::now() + 10s;
      size_t header_end;
      while ((header_end = buf.find("\r\n\r\n")) == std::string::npos) {
        if (Clock::now() > deadline || ReadSome(fd.get(), &buf, 1000ms) == ReadStatus::kClosed) {
          return;
        }
      }
      if (buf.find("Transfer-Encoding: chunked") == std::string::npos) return;
      buf.erase(0, header_end + 4);
      std::string expected;
      for (int i = 0; i < kEvents; ++i) {
        std::string event = id + ":" + std::to_string(i) + "\n";
        char hex[16];
        std::snprintf(hex, sizeof(hex), "%zx", event.size());
        expected += std::string(hex) + "\r\n" + event + "\r\n";
      }
      expected += "0\r\n\r\n";
      while (buf.size() < expected.size()) {
        if (Clock::now() > deadline || ReadSome(fd.get(), &buf, 1000ms) == ReadStatus::kClosed) {
          break;
        }
      }
      if (buf == expected && WaitClosed(fd.get(), 2s)) ++clients_ok;
    });
  }
  auto streams = hub.Wait(kStreams, 10s);
  // Four writer threads, each owning a quarter of the streams, interleaving their events.
  std::atomic<int> refused{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < kEvents; ++i) {
        for (size_t k = t; k < streams.size(); k += 4) {
          const auto& [id, w] = streams[k];
          if (!w->Write(id + ":" + std::to_string(i) + "\n")) ++refused;
        }
      }
      for (size_t k = t; k < streams.size(); k += 4) streams[k].second->Finish();
    });
  }
  for (auto& t : writers) t.join();
  for (auto& t : clients) t.join();
  CHECK(refused == 0);
  CHECK(clients_ok == kStreams);
  CHECK(hub.WaitClosed(kStreams, 5s));
  // Every client has read its last chunk and closed: no connection lingers on (a linger read
  // issued after the hang-up read saw EOF used to wait for its 1 s timeout).
  const auto start = Clock::now();
  s.server->Stop(5s);
  CHECK(Clock::now() - start < 700ms);
}

TEST_CASE("a quiet stream outlives read_timeout and idle_timeout") {
  ServerOptions o = TcpOptions();
  o.read_timeout = 1s;
  o.idle_timeout = 1s;
  StreamHub hub;
  auto s = StartServer(o, hub.MakeHandler());
  UniqueFd fd = ConnectTcp(s.port);
  std::string buf;
  OpenWatch(fd.get(), &buf);
  auto w = hub.WaitOne();
  CHECK(ReadSome(fd.get(), &buf, 2500ms) == ReadStatus::kTimeout);  // neither data nor close
  CHECK_FALSE(w->closed());
  CHECK(w->Write("still here\n"));
  CHECK(ReadChunk(fd.get(), &buf) == "still here\n");
  CHECK(hub.Closed() == 0);
}

TEST_CASE("streamed responses: HEAD, HTTP/1.0, bad status, a throwing callback, the cap") {
  ServerOptions o = TcpOptions();
  o.max_connections = 2;
  StreamHub hub;
  auto s = StartServer(o, hub.MakeHandler());
  std::string buf;

  // HEAD: the header GET would get, no body, the stream callback never called.
  {
    UniqueFd fd = ConnectTcp(s.port);
    SendAll(fd.get(), "HEAD /watch HTTP/1.1\r\nHost: x\r\n\r\n");
    auto r = ReadResponse(fd.get(), &buf, /*head=*/true);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->headers["transfer-encoding"] == "chunked");
    CHECK(r->headers.count("content-length") == 0);
    CHECK(ReadToClose(fd.get(), &buf, 2s));
    CHECK(buf.empty());
    CHECK(hub.calls == 0);
  }
  // HTTP/1.0 has no chunked coding: the body is the events, ended by the close.
  {
    UniqueFd fd = ConnectTcp(s.port);
    buf.clear();
    SendAll(fd.get(), "GET /watch HTTP/1.0\r\n\r\n");
    auto r = ReadResponse(fd.get(), &buf, /*head=*/true);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->headers.count("transfer-encoding") == 0);
    auto w = hub.WaitOne();
    CHECK(w->Write("a\n"));
    CHECK(w->Write("b\n"));
    w->Finish();
    CHECK(ReadToClose(fd.get(), &buf, 2s));
    CHECK(buf == "a\nb\n");
    CHECK(hub.WaitClosed(1, 2s));
  }
  // A streamed 204 is a handler bug: 500, and the callback is never called.
  {
    UniqueFd fd = ConnectTcp(s.port);
    buf.clear();
    SendAll(fd.get(), "GET /watch-204 HTTP/1.1\r\nHost: x\r\n\r\n");
    auto r = ReadResponse(fd.get(), &buf);
    REQUIRE(r);
    CHECK(r->status == 500);
    CHECK(ParseStatus(r->body)["reason"] == "InternalError");
    CHECK(hub.calls == 1);
  }
  // A callback that throws: the stream is cut (no last chunk) and OnClosed runs.
  {
    UniqueFd fd = ConnectTcp(s.port);
    buf.clear();
    RawResponse head = OpenWatch(fd.get(), &buf, "/watch-throw");
    CHECK(head.status == 200);
    CHECK(ReadToClose(fd.get(), &buf, 2s));
    CHECK(buf.empty());
    CHECK(hub.WaitClosed(2, 2s));
  }
  // Streams count against max_connections.
  {
    // The connections above may take a moment to be gone on the server side.
    auto open_stream = [&](const std::string& id) {
      for (int i = 0; i < 100; ++i) {
        UniqueFd fd = ConnectTcp(s.port);
        std::string b;
        if (OpenWatch(fd.get(), &b, "/watch?id=" + id).status == 200) return fd;
        std::this_thread::sleep_for(20ms);
      }
      FAIL("no slot for stream " << id);
      return UniqueFd();
    };
    UniqueFd a = open_stream("a");
    UniqueFd b = open_stream("b");
    hub.Wait(3);  // the HTTP/1.0 one, a, b
    UniqueFd c = ConnectTcp(s.port);
    buf.clear();
    auto r = ReadResponse(c.get(), &buf);
    REQUIRE(r);
    CHECK(r->status == 503);
  }
}

// ----- health ----------------------------------------------------------------------------------

HttpRequest Get(std::string path, std::string query = "") {
  HttpRequest r;
  r.method = "GET";
  r.path = std::move(path);
  r.query = std::move(query);
  return r;
}

TEST_CASE("ServeHealth answers /healthz, /livez, /readyz like kube-apiserver") {
  std::atomic<bool> ready{false};
  HealthChecks checks;
  checks.live.push_back({"store", [] { return true; }});
  checks.ready.push_back(HealthCheck::Flag("startup", ready));

  CHECK_FALSE(ServeHealth(Get("/api"), checks).has_value());
  CHECK_FALSE(ServeHealth(Get("/readyz/extra"), checks).has_value());
  for (const char* path : {"/healthz", "/livez"}) {
    auto r = ServeHealth(Get(path), checks);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body == "ok");
  }
  auto not_ready = ServeHealth(Get("/readyz"), checks);
  REQUIRE(not_ready);
  CHECK(not_ready->status == 503);
  CHECK(not_ready->body == "not ready");
  auto verbose = ServeHealth(Get("/readyz", "verbose"), checks);
  CHECK(verbose->status == 503);
  CHECK(verbose->body ==
        "[+]ping ok\n[+]store ok\n[-]startup failed: reason withheld\nreadyz check failed\n");
  auto excluded = ServeHealth(Get("/readyz", "verbose&exclude=startup"), checks);
  CHECK(excluded->status == 200);
  CHECK(excluded->body ==
        "[+]ping ok\n[+]store ok\n[+]startup excluded: ok\nreadyz check passed\n");

  ready = true;
  auto r = ServeHealth(Get("/readyz"), checks);
  CHECK(r->status == 200);
  CHECK(r->body == "ok");
  CHECK(ServeHealth(Get("/livez", "verbose=1"), checks)->body ==
        "[+]ping ok\n[+]store ok\nlivez check passed\n");

  checks.live.push_back({"throws", []() -> bool { throw std::runtime_error("x"); }});
  auto live = ServeHealth(Get("/livez"), checks);
  CHECK(live->status == 503);
  CHECK(live->body == "not live");

  HttpRequest post = Get("/healthz");
  post.method = "POST";
  auto method = ServeHealth(post, checks);
  CHECK(method->status == 405);
  CHECK(ParseStatus(method->body)["reason"] == "MethodNotAllowed");
}

TEST_CASE("health endpoints through the server, readyz flips") {
  std::atomic<bool> ready{false};
  HealthChecks checks;
  checks.ready.push_back(HealthCheck::Flag("startup", ready));
  auto s = StartServer(TcpOptions(), [&](const HttpRequest& r) {
    if (auto h = ServeHealth(r, checks)) return std::move(*h);
    return HttpResponse::StatusError(404, "NotFound", "the server could not find " + r.path);
  });
  httplib::Client cli("127.0.0.1", s.port);
  auto healthz = cli.Get("/healthz");
  REQUIRE(healthz);
  CHECK(healthz->status == 200);
  CHECK(healthz->body == "ok");
  auto head = cli.Head("/livez");
  REQUIRE(head);
  CHECK(head->status == 200);
  CHECK(head->get_header_value("Content-Length") == "2");

  auto before = cli.Get("/readyz");
  REQUIRE(before);
  CHECK(before->status == 503);
  CHECK(before->body == "not ready");
  ready = true;
  auto after = cli.Get("/readyz?verbose");
  REQUIRE(after);
  CHECK(after->status == 200);
  CHECK(after->body == "[+]ping ok\n[+]startup ok\nreadyz check passed\n");
  auto missing = cli.Get("/nope");
  REQUIRE(missing);
  CHECK(missing->status == 404);
  s.server->Stop(1s);
}

}  // namespace
}  // namespace edgevirt::api
