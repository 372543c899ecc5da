// Unit tests of the systemd notification, the watchdog thread, signal waiting, the stop
// deadline and the self-probe, against real sockets.
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "api/api.h"
#include "common/fd.h"
#include "daemon/notify.h"
#include "daemon/probe.h"
#include "daemon/signals.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::daemon {
namespace {

using namespace std::chrono_literals;

using edgevirt::testing::TempDir;

sockaddr_un UnixAddress(const std::filesystem::path& p) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(p.string().size() < sizeof(addr.sun_path));
  std::strcpy(addr.sun_path, p.c_str());
  return addr;
}

// A datagram socket standing in for the service manager; sets NOTIFY_SOCKET while alive.
class FakeServiceManager {
 public:
  explicit FakeServiceManager(const std::filesystem::path& path) {
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd_.valid());
    sockaddr_un addr = UnixAddress(path);
    REQUIRE(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  }
  ~FakeServiceManager() { ::unsetenv("NOTIFY_SOCKET"); }

  // The next datagram, or "" after `timeout`.
  std::string Receive(std::chrono::milliseconds timeout) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return "";
    char buf[4096];
    ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }

 private:
  UniqueFd fd_;
};

TEST_CASE("Notifier sends sd_notify datagrams to NOTIFY_SOCKET") {
  TempDir tmp;
  {
    ::unsetenv("NOTIFY_SOCKET");
    Notifier n;
    CHECK_FALSE(Notifier::Enabled());
    CHECK(n.Ready().has_value());  // no service manager: nothing to do, no error
  }
  FakeServiceManager sm(tmp.path() / "notify.sock");
  Notifier n;
  CHECK(Notifier::Enabled());
  REQUIRE(n.SetStatus("Opening state").has_value());
  CHECK(sm.Receive(1s) == "STATUS=Opening state");
  REQUIRE(n.Ready().has_value());
  CHECK(sm.Receive(1s) == "READY=1");
  REQUIRE(n.Stopping().has_value());
  CHECK(sm.Receive(1s) == "STOPPING=1");
  REQUIRE(n.Ping().has_value());
  CHECK(sm.Receive(1s) == "WATCHDOG=1");
}

TEST_CASE("Notifier reports an unreachable socket") {
  TempDir tmp;
  ::setenv("NOTIFY_SOCKET", (tmp.path() / "nobody-listens").c_str(), 1);
  Notifier n;
  Status s = n.Ready();
  ::unsetenv("NOTIFY_SOCKET");
  CHECK_FALSE(s.has_value());
}

TEST_CASE("WatchdogPingInterval is half of WATCHDOG_USEC") {
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("WATCHDOG_PID");
  CHECK_FALSE(WatchdogPingInterval().has_value());
  ::setenv("WATCHDOG_USEC", "400000", 1);
  auto interval = WatchdogPingInterval();
  REQUIRE(interval.has_value());
  CHECK(*interval == 200ms);
  // WATCHDOG_PID names another process: the watchdog is not ours.
  ::setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
  CHECK_FALSE(WatchdogPingInterval().has_value());
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  CHECK(WatchdogPingInterval().has_value());
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("WATCHDOG_PID");
}

TEST_CASE("Watchdog pings while the check passes, stops while it fails") {
  TempDir tmp;
  FakeServiceManager sm(tmp.path() / "notify.sock");
  Notifier n;
  std::atomic<bool> healthy{true};
  std::atomic<int> checks{0};
  Watchdog w(n, 50ms, [&]() -> Status {
    ++checks;
    if (healthy) return Ok();
    return MakeError(Code::kUnavailable, "store does not answer");
  });

  int pings = 0;
  auto until = std::chrono::steady_clock::now() + 2s;
  while (pings < 3 && std::chrono::steady_clock::now() < until) {
    if (sm.Receive(500ms) == "WATCHDOG=1") ++pings;
  }
  CHECK(pings == 3);

  healthy = false;
  int checks_before = checks;
  // Drain a ping that may have been in flight when the check flipped.
  sm.Receive(120ms);
  CHECK(sm.Receive(300ms).empty());
  CHECK(checks > checks_before);  // still checking, just not pinging

  // While stopping, it pings without checking.
  w.EnterShutdown();
  CHECK(sm.Receive(1s) == "WATCHDOG=1");
  w.Stop();
  sm.Receive(100ms);  // one ping may race with Stop
  CHECK(sm.Receive(200ms).empty());
  CHECK(w.pings() >= 4);
}

TEST_CASE("SignalWaiter receives blocked signals synchronously") {
  auto waiter = SignalWaiter::Create({SIGUSR1});
  REQUIRE(waiter.has_value());
  auto none = waiter->Wait(50ms);
  REQUIRE(none.has_value());
  CHECK_FALSE(none->has_value());

  // Blocked, so it stays pending instead of killing the test, and the fd reports it.
  REQUIRE(::pthread_kill(::pthread_self(), SIGUSR1) == 0);
  auto got = waiter->Wait(1s);
  REQUIRE(got.has_value());
  REQUIRE(got->has_value());
  CHECK(**got == SIGUSR1);
}

TEST_CASE("Deadline fires once when not disarmed, never when disarmed") {
  std::atomic<int> fired{0};
  {
    Deadline d(30ms, [&] { ++fired; });
    std::this_thread::sleep_for(200ms);
  }
  CHECK(fired == 1);
  {
    Deadline d(300ms, [&] { ++fired; });
    d.Disarm();
  }
  std::this_thread::sleep_for(400ms);
  CHECK(fired == 1);
}

// A one-connection HTTP server on a unix socket: reads the request, answers `reply` (or never
// answers when `reply` is empty).
class OneShotServer {
 public:
  OneShotServer(const std::filesystem::path& path, std::string reply) {
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd_.valid());
    sockaddr_un addr = UnixAddress(path);
    REQUIRE(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(fd_.get(), 4) == 0);
    thread_ = std::thread([this, reply = std::move(reply)] {
      UniqueFd conn(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!conn) return;
      std::string req;
      char buf[1024];
      while (req.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::recv(conn.get(), buf, sizeof(buf), 0);
        if (n <= 0) return;
        req.append(buf, static_cast<size_t>(n));
      }
      request_ = req;
      if (reply.empty()) {
        ::recv(conn.get(), buf, sizeof(buf), 0);  // wait for the client to give up
        return;
      }
      (void)!::send(conn.get(), reply.data(), reply.size(), MSG_NOSIGNAL);
    });
  }
  ~OneShotServer() {
    ::shutdown(fd_.get(), SHUT_RDWR);  // wakes accept() if no client came
    if (thread_.joinable()) thread_.join();
  }
  // The request the server read (waits for the exchange to end).
  std::string request() {
    if (thread_.joinable()) thread_.join();
    return request_;
  }

 private:
  UniqueFd fd_;
  std::thread thread_;
  std::string request_;
};

TEST_CASE("ProbeHttp returns the status code and honours the timeout") {
  TempDir tmp;
  const auto sock = tmp.path() / "probe.sock";
  {
    OneShotServer server(sock, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
    auto status = ProbeHttp("unix:" + sock.string(), "/livez", 2s);
    REQUIRE(status.has_value());
    CHECK(*status == 204);
    CHECK_THAT(server.request(), Catch::StartsWith("GET /livez HTTP/1.1\r\n"));
  }
  std::filesystem::remove(sock);
  {
    OneShotServer server(sock, "");  // accepts, never answers
    auto start = std::chrono::steady_clock::now();
    auto status = ProbeHttp("unix:" + sock.string(), "/livez", 200ms);
    auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(status.has_value());
    CHECK(status.error().code == Code::kTimeout);
    CHECK(took < 2s);
  }
  auto refused = ProbeHttp("unix:" + (tmp.path() / "none.sock").string(), "/livez", 200ms);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Code::kUnavailable);
}

TEST_CASE("ProbeHttp on an HTTPS listener: the close after the failed handshake is the answer") {
  TempDir tmp;
  api::PkiPaths pki{tmp.path() / "pki"};
  REQUIRE(api::EnsureServerPki(pki, api::HostSans({})).has_value());
  api::ServerOptions o;
  o.listen.push_back(*api::ListenAddress::Parse("https://127.0.0.1:0"));
  o.tls = {pki.ServerCert().string(), pki.ServerKey().string(), ""};
  auto server = api::HttpServer::Start(
      o, [](const api::HttpRequest&) { return api::HttpResponse::Text(200, "ok"); });
  REQUIRE(server.has_value());
  const std::string bound = (*server)->BoundAddresses().at(0);
  auto status = ProbeHttp(bound, "/livez", 2s);
  REQUIRE(status.has_value());
  CHECK(*status == 0);
  // The wildcard form of the same port is probed on loopback.
  const std::string port = bound.substr(bound.rfind(':') + 1);
  status = ProbeHttp("https://0.0.0.0:" + port, "/livez", 2s);
  REQUIRE(status.has_value());
  (*server)->Stop(std::chrono::milliseconds(100));
  auto gone = ProbeHttp(bound, "/livez", 500ms);
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error().code == Code::kUnavailable);
}

}  // namespace
}  // namespace edgevirt::daemon
