// daemon/streams against real sockets on loopback: TCP and UDP port-forward to local echo
// servers (datagram boundaries kept), a VNC relay against a unix socket server that speaks
// first like QEMU's (the RFB banner), back-pressure in both directions, errors before anything
// is opened, Close idempotent, and the one-session-per-VMI registry.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "daemon/streams.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::daemon {
namespace {

using namespace std::chrono_literals;

// What a stream delivered: bytes (or datagrams), the end and its reason.
class Sink {
 public:
  std::function<bool(std::string_view)> OnData(std::function<bool()> accept = nullptr) {
    return [this, accept](std::string_view d) {
      std::lock_guard lock(mu_);
      bytes_.append(d);
      chunks_.emplace_back(d);
      ++calls_;
      cv_.notify_all();
      return accept ? accept() : true;
    };
  }
  std::function<void(std::string)> OnEnd() {
    return [this](std::string reason) {
      std::lock_guard lock(mu_);
      ++ends_;
      reason_ = std::move(reason);
      cv_.notify_all();
    };
  }
  bool WaitBytes(size_t n, std::chrono::milliseconds t = 10s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, t, [&] { return bytes_.size() >= n; });
  }
  bool WaitChunks(size_t n, std::chrono::milliseconds t = 10s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, t, [&] { return chunks_.size() >= n; });
  }
  bool WaitEnd(std::chrono::milliseconds t = 10s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, t, [&] { return ends_ > 0; });
  }
  std::string bytes() {
    std::lock_guard lock(mu_);
    return bytes_;
  }
  std::vector<std::string> chunks() {
    std::lock_guard lock(mu_);
    return chunks_;
  }
  int calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  int ends() {
    std::lock_guard lock(mu_);
    return ends_;
  }
  std::string reason() {
    std::lock_guard lock(mu_);
    return reason_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string bytes_;
  std::vector<std::string> chunks_;
  int calls_ = 0;
  int ends_ = 0;
  std::string reason_;
};

uint16_t PortOf(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  return ntohs(a.sin_port);
}

UniqueFd Listen(int type) {
  UniqueFd fd(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  if (type == SOCK_STREAM) REQUIRE(::listen(fd.get(), 16) == 0);
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(size_t(n));
  }
  return true;
}

// A TCP server on 127.0.0.1 that hands each accepted connection to `serve` on a thread.
class TcpServer {
 public:
  explicit TcpServer(std::function<void(int)> serve) : fd_(Listen(SOCK_STREAM)) {
    port_ = PortOf(fd_.get());
    thread_ = std::thread([this, serve] {
      for (;;) {
        int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;
        conns_.emplace_back([c, serve] {
          serve(c);
          ::close(c);
        });
      }
    });
  }
  ~TcpServer() {
    ::shutdown(fd_.get(), SHUT_RDWR);
    thread_.join();
    for (auto& t : conns_) t.join();
  }
  uint16_t port() const { return port_; }

 private:
  UniqueFd fd_;
  uint16_t port_ = 0;
  std::thread thread_;
  std::vector<std::thread> conns_;
};

void Echo(int c) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(c, buf, sizeof buf, 0);
    if (n <= 0 || !SendAll(c, std::string_view(buf, size_t(n)))) return;
  }
}

// What a test server receives on one connection, for the test thread to wait on.
struct Received {
  std::mutex mu;
  std::condition_variable cv;
  std::string text;

  // Reads `c` until the peer ends it, appending to text.
  void ReadAll(int c) {
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      std::lock_guard lock(mu);
      text.append(buf, size_t(n));
      cv.notify_all();
    }
  }
  // True once `done(text)` holds, false if `timeout` passes first.
  template <class Pred>
  bool WaitFor(std::chrono::milliseconds timeout, Pred done) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return done(text); });
  }
};

TEST_CASE("TCP port-forward round-trips bytes through an echo server") {
  TcpServer server(Echo);
  auto s = OpenTcpStream("127.0.0.1", server.port());
  if (!s) FAIL(s.error().ToString());
  Sink sink;
  (*s)->OnWritable([] {});
  (*s)->Start(sink.OnData(), sink.OnEnd());
  std::string sent;
  for (int i = 0; i < 100; ++i) {
    std::string piece = "line " + std::to_string(i) + "\n";
    REQUIRE((*s)->Write(piece));
    sent += piece;
  }
  REQUIRE(sink.WaitBytes(sent.size()));
  CHECK(sink.bytes() == sent);
  CHECK(sink.ends() == 0);
  (*s)->Close();
  (*s)->Close();            // idempotent
  CHECK(sink.ends() == 0);  // no on_end after Close
}

TEST_CASE("TCP port-forward ends with an empty reason when the server closes") {
  TcpServer server([](int c) { SendAll(c, "bye"); });
  auto s = OpenTcpStream("127.0.0.1", server.port());
  REQUIRE(s);
  Sink sink;
  (*s)->Start(sink.OnData(), sink.OnEnd());
  REQUIRE(sink.WaitEnd());
  CHECK(sink.bytes() == "bye");
  CHECK(sink.reason().empty());
  CHECK(sink.ends() == 1);
}

TEST_CASE("opening a stream refuses bad addresses and reports refused connections") {
  auto bad = OpenTcpStream("not-an-ip", 80);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == Code::kInvalid);
  auto zero = OpenUdpStream("127.0.0.1", 0);
  REQUIRE_FALSE(zero);
  CHECK(zero.error().code == Code::kInvalid);
  // A port nobody listens on: take one, then close it.
  uint16_t port;
  {
    UniqueFd l = Listen(SOCK_STREAM);
    port = PortOf(l.get());
  }
  auto refused = OpenTcpStream("127.0.0.1", port);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Code::kUnavailable);
  auto rel = OpenUnixStream("relative/vnc.sock");
  REQUIRE_FALSE(rel);
  CHECK(rel.error().code == Code::kInvalid);
  auto missing = OpenUnixStream("/nonexistent-edgevirt-dir/vnc.sock");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == Code::kUnavailable);
}

TEST_CASE("UDP port-forward keeps datagram boundaries both ways") {
  UniqueFd server = Listen(SOCK_DGRAM);
  const uint16_t port = PortOf(server.get());
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    char buf[65536];
    while (!stop) {
      pollfd p{server.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      sockaddr_storage from{};
      socklen_t len = sizeof from;
      ssize_t n =
          ::recvfrom(server.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) continue;
      ::sendto(server.get(), buf, size_t(n), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  });
  auto s = OpenUdpStream("127.0.0.1", port);
  REQUIRE(s);
  Sink sink;
  (*s)->Start(sink.OnData(), sink.OnEnd());
  std::vector<std::string> sent = {"a", std::string(1400, 'b'), "ccc", std::string(9000, 'd')};
  for (const auto& d : sent) REQUIRE((*s)->Write(d));
  REQUIRE(sink.WaitChunks(sent.size()));
  CHECK(sink.chunks() == sent);  // loopback keeps order; each datagram one on_data
  stop = true;
  echo.join();
}

TEST_CASE("UDP port-forward ends with a reason when nothing listens (ICMP port unreachable)") {
  uint16_t port;
  {
    UniqueFd u = Listen(SOCK_DGRAM);
    port = PortOf(u.get());
  }
  auto s = OpenUdpStream("127.0.0.1", port);
  REQUIRE(s);
  Sink sink;
  (*s)->Start(sink.OnData(), sink.OnEnd());
  REQUIRE((*s)->Write("ping"));
  REQUIRE(sink.WaitEnd(5s));
  CHECK(sink.reason() == "recv: Connection refused");
  CHECK(sink.ends() == 1);
}

// A unix socket server that greets like QEMU's VNC server, then echoes.
TEST_CASE("VNC relay reads the RFB banner and relays both ways over the unix socket") {
  edgevirt::testing::TempDir dir("edgevirt-streams");
  const std::string path = (dir.path() / "vnc.sock").string();
  UniqueFd l(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  REQUIRE(::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(l.get(), 4) == 0);
  std::thread server([&] {
    int c = ::accept(l.get(), nullptr, nullptr);
    if (c < 0) return;
    SendAll(c, "RFB 003.008\n");
    Echo(c);
    ::close(c);
  });
  auto s = OpenUnixStream(path);
  if (!s) FAIL(s.error().ToString());
  Sink sink;
  (*s)->Start(sink.OnData(), sink.OnEnd());
  REQUIRE(sink.WaitBytes(12));
  CHECK(sink.bytes() == "RFB 003.008\n");
  REQUIRE((*s)->Write("RFB 003.008\n"));
  REQUIRE((*s)->Write(std::string("\x01", 1)));  // security type None
  REQUIRE(sink.WaitBytes(25));
  CHECK(sink.bytes() == "RFB 003.008\nRFB 003.008\n\x01");
  s->reset();  // the destructor closes
  server.join();
  CHECK(sink.ends() == 0);
}

TEST_CASE("fd streams: on_data returning false holds the device back until Resume") {
  constexpr size_t kTotal = 4u << 20;
  std::string pattern(kTotal, '\0');
  for (size_t i = 0; i < kTotal; ++i) pattern[i] = char('a' + (i * 7 + i / 4096) % 26);
  TcpServer server([&](int c) { SendAll(c, pattern); });
  auto s = OpenTcpStream("127.0.0.1", server.port());
  REQUIRE(s);
  Sink sink;
  std::atomic<bool> accept{false};
  (*s)->Start(sink.OnData([&] { return accept.load(); }), sink.OnEnd());
  REQUIRE(sink.WaitChunks(1));
  std::this_thread::sleep_for(300ms);
  CHECK(sink.calls() == 1);  // paused after the first chunk: nothing more read
  CHECK(sink.bytes().size() < kTotal);
  accept = true;
  (*s)->Resume();
  REQUIRE(sink.WaitEnd(30s));
  CHECK(sink.bytes().size() == kTotal);
  CHECK(sink.bytes() == pattern);  // nothing lost, nothing reordered
  CHECK(sink.reason().empty());
}

TEST_CASE("fd streams: Write sends on the caller's thread when nothing is buffered") {
  // Before Start there is no stream thread: the bytes can only reach the peer if Write itself
  // sent them (the relay's common case: no wake-up of the stream's thread per message).
  Received received;
  TcpServer server([&](int c) { received.ReadAll(c); });
  auto s = OpenTcpStream("127.0.0.1", server.port());
  REQUIRE(s);
  REQUIRE((*s)->Write("sent at once"));
  CHECK(received.WaitFor(5s, [](const std::string& t) { return t == "sent at once"; }));
  (*s)->Close();
}

TEST_CASE("fd streams: Write refuses when the buffer is full and on_writable fires later") {
  Received received;
  bool go = false;  // guarded by received.mu
  TcpServer server([&](int c) {
    {
      std::unique_lock lock(received.mu);
      received.cv.wait(lock, [&] { return go; });
    }
    received.ReadAll(c);
  });
  auto s = OpenTcpStream("127.0.0.1", server.port());
  REQUIRE(s);
  std::atomic<int> writable{0};
  (*s)->OnWritable([&] { ++writable; });
  Sink sink;
  (*s)->Start(sink.OnData(), sink.OnEnd());
  // The server does not read: the socket buffers fill, then ours.
  const std::string block(16 * 1024, 'x');
  size_t taken = 0;
  bool refused = false;
  for (int i = 0; i < 100000 && !refused; ++i) {
    if ((*s)->Write(block)) {
      taken += block.size();
    } else {
      refused = true;
    }
    if (i % 64 == 0) std::this_thread::sleep_for(1ms);
  }
  REQUIRE(refused);
  CHECK(writable.load() == 0);
  {
    std::lock_guard lock(received.mu);
    go = true;
    received.cv.notify_all();
  }
  REQUIRE(received.WaitFor(20s, [&](const std::string& t) { return t.size() == taken; }));
  CHECK(writable.load() == 1);  // once, after the refusal
  CHECK((*s)->Write(block));
}

TEST_CASE("SessionRegistry: a second session of a VMI and kind ends the first") {
  TcpServer server(Echo);
  SessionRegistry reg;
  auto open = [&] {
    auto s = OpenTcpStream("127.0.0.1", server.port());
    REQUIRE(s);
    return std::move(*s);
  };
  Sink first, second, other;
  auto s1 = reg.Adopt("uid-1", "console", open());
  s1->Start(first.OnData(), first.OnEnd());
  auto o = reg.Adopt("uid-1", "vnc", open());  // another kind: unaffected
  o->Start(other.OnData(), other.OnEnd());
  CHECK(reg.size() == 2);
  REQUIRE(s1->Write("one"));
  REQUIRE(first.WaitBytes(3));

  auto s2 = reg.Adopt("uid-1", "console", open());
  REQUIRE(first.WaitEnd());
  CHECK(first.reason() == "a new console connection replaced this one");
  CHECK(first.ends() == 1);
  s2->Start(second.OnData(), second.OnEnd());
  REQUIRE(s2->Write("two"));
  REQUIRE(second.WaitBytes(3));
  CHECK(second.bytes() == "two");
  CHECK(reg.size() == 2);
  // The replaced stream is closed: writes go nowhere, Close is harmless.
  s1->Write("lost");
  s1->Close();
  s1.reset();
  CHECK(first.bytes() == "one");
  CHECK(reg.size() == 2);  // closing the replaced one leaves the new one registered
  CHECK(other.ends() == 0);

  s2->Close();
  s2->Close();
  CHECK(second.ends() == 0);
  CHECK(reg.size() == 1);
  o.reset();
  CHECK(reg.size() == 0);
  CHECK(other.ends() == 0);
}

TEST_CASE("SessionRegistry: a session replaced before Start gets on_end at Start") {
  TcpServer server(Echo);
  SessionRegistry reg;
  auto a = OpenTcpStream("127.0.0.1", server.port());
  auto b = OpenTcpStream("127.0.0.1", server.port());
  REQUIRE(a);
  REQUIRE(b);
  auto s1 = reg.Adopt("uid", "vnc", std::move(*a));
  auto s2 = reg.Adopt("uid", "vnc", std::move(*b));
  Sink sink;
  s1->Start(sink.OnData(), sink.OnEnd());
  REQUIRE(sink.WaitEnd(1s));
  CHECK(sink.reason() == "a new vnc connection replaced this one");
}

TEST_CASE("SessionRegistry::Open ends the old session before the device is opened") {
  TcpServer server(Echo);
  SessionRegistry reg;
  Sink first, second;
  auto opened = reg.Open("uid-1", "console", [&]() -> Result<std::unique_ptr<api::Stream>> {
    return OpenTcpStream("127.0.0.1", server.port());
  });
  REQUIRE(opened);
  auto s1 = std::move(*opened);
  s1->Start(first.OnData(), first.OnEnd());
  REQUIRE(s1->Write("one"));
  REQUIRE(first.WaitBytes(3));

  // Like libvirt's VIR_DOMAIN_CONSOLE_FORCE, opening the device would end the old session with
  // a plain end of file; its client must have been told "replaced" before that.
  int ends_at_open = -1;
  std::string reason_at_open;
  opened = reg.Open("uid-1", "console", [&]() -> Result<std::unique_ptr<api::Stream>> {
    ends_at_open = first.ends();
    reason_at_open = first.reason();
    return OpenTcpStream("127.0.0.1", server.port());
  });
  REQUIRE(opened);
  CHECK(ends_at_open == 1);
  CHECK(reason_at_open == SessionRegistry::ReplacedReason("console"));
  auto s2 = std::move(*opened);
  s2->Start(second.OnData(), second.OnEnd());
  REQUIRE(s2->Write("two"));
  REQUIRE(second.WaitBytes(3));
  CHECK(reg.size() == 1);
  s1.reset();  // the replaced stream leaves the new one registered
  CHECK(reg.size() == 1);
  CHECK(first.ends() == 1);

  // A device that cannot be opened: its error, and the old session is ended all the same.
  auto refused = reg.Open("uid-1", "console", []() -> Result<std::unique_ptr<api::Stream>> {
    return MakeError(Code::kUnavailable, "no console today");
  });
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Code::kUnavailable);
  CHECK(refused.error().message == "no console today");
  REQUIRE(second.WaitEnd());
  CHECK(second.reason() == SessionRegistry::ReplacedReason("console"));
  CHECK(reg.size() == 0);
  CHECK(second.ends() == 1);
}

TEST_CASE("OpenSerialConsole: a unix console is QEMU's socket, no console is kNotFound") {
  // A hypervisor on libvirt's test driver (no QEMU): only the unix and none paths are used.
  vmm::HypervisorOptions opts;
  opts.uri = "test:///default";
  auto hv = vmm::Hypervisor::Open(opts);
  if (!hv) FAIL(hv.error().ToString());
  vmm::ConsoleSpec none;
  auto r = OpenSerialConsole(**hv, "test", none);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Code::kNotFound);

  edgevirt::testing::TempDir dir("edgevirt-streams");
  const std::string path = (dir.path() / "serial0.sock").string();
  UniqueFd l(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  REQUIRE(::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(l.get(), 4) == 0);
  std::thread server([&] {
    int c = ::accept(l.get(), nullptr, nullptr);
    if (c < 0) return;
    Echo(c);
    ::close(c);
  });
  vmm::ConsoleSpec unix_console{vmm::ConsoleKind::kUnix, path, ""};
  auto s = OpenSerialConsole(**hv, "test", unix_console);
  if (!s) FAIL(s.error().ToString());
  Sink sink;
  (*s)->Start(sink.OnData(), sink.OnEnd());
  REQUIRE((*s)->Write("echo $((6*7))\n"));
  REQUIRE(sink.WaitBytes(14));
  CHECK(sink.bytes() == "echo $((6*7))\n");
  (*s)->Close();
  server.join();
}

}  // namespace
}  // namespace edgevirt::daemon
