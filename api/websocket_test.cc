// Tests of the WebSocket upgrades of api/'s HTTP server (HttpResponse::websocket), with an
// in-memory device (api/pipe_stream_for_test.h) and the test client of
// tests/support/websocket_client.h: handshake and subprotocol, frames both ways, pings, close
// codes, back-pressure both ways, datagram boundaries, deadlines, Stop and max_connections.
// Hermetic: loopback TCP on port 0, unix sockets in a temp dir.
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "api/http_server.h"
#include "api/pipe_stream_for_test.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"
#include "tests/support/websocket_client.h"

namespace edgevirt::api {
namespace {

using namespace std::chrono_literals;
using edgevirt::testing::TempDir;
using edgevirt::testing::WebSocketClient;
using testing::PipeStream;

// Hands out the stream for each /ws request (made by `make`) and keeps it for the test.
class Devices {
 public:
  std::function<std::shared_ptr<PipeStream>(const HttpRequest&)> make = [](const HttpRequest&) {
    return std::make_shared<PipeStream>();
  };
  WebSocketOptions options{.subprotocol = "plain.kubevirt.io"};

  Handler MakeHandler() {
    return [this](const HttpRequest& r) -> HttpResponse {
      if (r.path == "/missing") return HttpResponse::StatusError(404, "NotFound", "no such vmi");
      if (r.path == "/get") return HttpResponse::Json(200, "{\"kind\":\"Thing\"}");
      if (r.path == "/auth") {
        // The upgrade request's headers reach the handler like any request's.
        if (r.Header("authorization") != "Bearer good") {
          return HttpResponse::StatusError(401, "Unauthorized", "Unauthorized");
        }
      }
      HttpResponse res;
      auto s = make(r);
      {
        std::lock_guard lock(mu_);
        streams_.push_back(s);
      }
      res.websocket = s;
      res.websocket_options = options;
      if (r.path == "/deferred") {
        return HttpResponse::Deferred([res](const HttpRequest&) { return res; });
      }
      return res;
    };
  }
  std::shared_ptr<PipeStream> Last() {
    std::lock_guard lock(mu_);
    return streams_.empty() ? nullptr : streams_.back();
  }
  size_t Count() {
    std::lock_guard lock(mu_);
    return streams_.size();
  }

 private:
  std::mutex mu_;
  std::vector<std::shared_ptr<PipeStream>> streams_;
};

struct Server {
  std::unique_ptr<HttpServer> server;
  std::string address;
};

Server StartServer(Handler h, ServerOptions o = {}) {
  if (o.listen.empty()) o.listen.push_back(*ListenAddress::Parse("http://127.0.0.1:0"));
  auto s = HttpServer::Start(std::move(o), std::move(h));
  REQUIRE(s.has_value());
  Server out{std::move(*s), ""};
  out.address = out.server->BoundAddresses().front();
  return out;
}

// Waits for `pred` up to `timeout`.
template <class P>
bool Eventually(P pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

TEST_CASE("WebSocket: handshake echoes plain.kubevirt.io, binary frames both ways") {
  Devices d;
  auto s = StartServer(d.MakeHandler());

  WebSocketClient c;
  REQUIRE(c.Connect(s.address, "/ws"));
  CHECK(c.status() == 101);
  CHECK(c.subprotocol() == "plain.kubevirt.io");
  auto dev = d.Last();
  REQUIRE(dev);
  REQUIRE(Eventually([&] { return dev->started(); }));

  // client → device: one Write per binary message, bytes intact (NUL and high bytes too).
  const std::string bin("a\0b\xff\n", 5);
  REQUIRE(c.SendBinary(bin));
  REQUIRE(c.SendBinary("second"));
  REQUIRE(dev->WaitWrites(2, 5s));
  CHECK(dev->Take() == std::vector<std::string>{bin, "second"});

  // device → client: one binary message per on_data.
  dev->Emit("login: ");
  dev->Emit(std::string(100000, 'z'));
  auto m = c.Receive(5s);
  REQUIRE(m);
  CHECK(m->binary);
  CHECK(m->data == "login: ");
  m = c.Receive(5s);
  REQUIRE(m);
  CHECK(m->data == std::string(100000, 'z'));

  // Text frames from the client are ignored; the next binary one still arrives.
  REQUIRE(c.SendText("ignored"));
  REQUIRE(c.SendBinary("after"));
  REQUIRE(dev->WaitWrites(1, 5s));
  CHECK(dev->Take() == std::vector<std::string>{"after"});

  // The client's close: the server answers it with the same code and closes the device.
  REQUIRE(c.Close(1000));
  CHECK(c.close_code() == 1000);
  CHECK(dev->WaitClosed(5s));
}

TEST_CASE("WebSocket: no subprotocol unless offered; deferred handlers and unix sockets") {
  TempDir dir;
  Devices d;
  ServerOptions o;
  o.listen.push_back(*ListenAddress::Parse("unix:" + (dir.path() / "ws.sock").string()));
  auto s = StartServer(d.MakeHandler(), o);

  WebSocketClient plain;
  REQUIRE(plain.Connect(s.address, "/ws", {}, {}));
  CHECK(plain.subprotocol().empty());

  WebSocketClient other;
  REQUIRE(other.Connect(s.address, "/ws", {}, {"base64.channel.k8s.io", "plain.kubevirt.io"}));
  CHECK(other.subprotocol() == "plain.kubevirt.io");

  WebSocketClient deferred;
  REQUIRE(deferred.Connect(s.address, "/deferred"));
  auto dev = d.Last();
  REQUIRE(dev);
  REQUIRE(Eventually([&] { return dev->started(); }));
  dev->Emit("hi");
  auto m = deferred.Receive(5s);
  REQUIRE(m);
  CHECK(m->data == "hi");
}

TEST_CASE("WebSocket: a refused upgrade is a Status; a plain GET of a WebSocket resource is 400") {
  Devices d;
  auto s = StartServer(d.MakeHandler());

  WebSocketClient c;
  CHECK_FALSE(c.Connect(s.address, "/missing"));
  CHECK(c.status() == 404);
  auto status = nlohmann::json::parse(c.body());  // what a Go client decodes
  CHECK(status["kind"] == "Status");
  CHECK(status["code"] == 404);
  CHECK(status["reason"] == "NotFound");
  CHECK(status["message"] == "no such vmi");

  // Auth headers on the upgrade request are seen by the handler like any request's.
  WebSocketClient bad;
  CHECK_FALSE(bad.Connect(s.address, "/auth", {{"Authorization", "Bearer bad"}}));
  CHECK(bad.status() == 401);
  WebSocketClient good;
  CHECK(good.Connect(s.address, "/auth", {{"Authorization", "Bearer good"}}));

  const size_t before = d.Count();
  httplib::Client http(s.address);
  auto r = http.Get("/ws");
  REQUIRE(r);
  CHECK(r->status == 400);
  CHECK(nlohmann::json::parse(r->body)["message"] == "this resource needs a WebSocket upgrade");
  // The stream the handler opened anyway was closed.
  REQUIRE(d.Count() == before + 1);
  CHECK(d.Last()->closed());
}

TEST_CASE("WebSocket: close codes for the device's end") {
  Devices d;
  auto s = StartServer(d.MakeHandler());

  SECTION("end of file: 1000") {
    WebSocketClient c;
    REQUIRE(c.Connect(s.address, "/ws"));
    auto dev = d.Last();
    dev->Emit("bye");
    dev->End("");
    auto m = c.Receive(5s);
    REQUIRE(m);
    CHECK(m->data == "bye");
    CHECK(c.WaitClosed(5s));
    CHECK(c.close_code() == 1000);
  }
  SECTION("device error: 1011 with the reason") {
    WebSocketClient c;
    REQUIRE(c.Connect(s.address, "/ws"));
    d.Last()->End("serial port vanished");
    CHECK(c.WaitClosed(5s));
    CHECK(c.close_code() == 1011);
    CHECK(c.close_reason() == "serial port vanished");
  }
  SECTION("replaced by a newer session: what was queued, then 1001 (virtctl stops retrying)") {
    WebSocketClient c;
    REQUIRE(c.Connect(s.address, "/ws"));
    auto dev = d.Last();
    for (int i = 0; i < 50; ++i) dev->Emit(std::string(10000, static_cast<char>('a' + i % 26)));
    dev->End("a new console connection replaced this one");
    size_t got = 0;
    while (auto m = c.Receive(5s)) got += m->data.size();
    CHECK(got == 500000);
    CHECK(c.closed());
    INFO("reason: " << c.close_reason() << " got " << got);
    CHECK(c.close_code() == 1001);
    CHECK(c.close_reason() == "a new console connection replaced this one");
  }
}

TEST_CASE("WebSocket: pings both ways, and the read deadline") {
  Devices d;
  d.options.ping_interval = 100ms;
  auto s = StartServer(d.MakeHandler());

  WebSocketClient c;
  REQUIRE(c.Connect(s.address, "/ws"));
  // The server pings every ping_interval; the client answers while it reads.
  (void)c.Receive(450ms);
  CHECK(c.pings() >= 2);
  // The client's ping is answered.
  REQUIRE(c.Ping());
  (void)c.Receive(300ms);
  CHECK(c.pongs() >= 1);
  CHECK_FALSE(c.closed());

  // A client that answers nothing for read_timeout is dropped (no close frame).
  d.options.read_timeout = 300ms;
  WebSocketClient silent;
  REQUIRE(silent.Connect(s.address, "/ws"));
  auto dev = d.Last();
  CHECK(dev->WaitClosed(3s));
  CHECK(silent.WaitClosed(2s));
  CHECK(silent.close_code() == 0);
}

TEST_CASE("WebSocket: a slow client pauses the device instead of growing the queue") {
  Devices d;
  d.options.send_queue_bytes = 256 << 10;
  auto s = StartServer(d.MakeHandler());

  WebSocketClient c;
  REQUIRE(c.Connect(s.address, "/ws"));
  auto dev = d.Last();
  REQUIRE(Eventually([&] { return dev->started(); }));
  // 64 MiB, far more than the socket buffers and the 256 KiB queue hold.
  constexpr int kChunks = 1024;
  constexpr size_t kChunk = 64 << 10;
  for (int i = 0; i < kChunks; ++i) dev->Emit(std::string(kChunk, static_cast<char>(i % 251)));
  // The client reads nothing: the device is paused with most of the data not taken from it.
  REQUIRE(dev->WaitPaused(10s));
  std::this_thread::sleep_for(200ms);
  CHECK(dev->paused());
  CHECK(dev->pending_emits() > kChunks / 2);

  // Reading resumes the device; everything arrives, in order.
  size_t total = 0;
  int index = 0;
  bool in_order = true;
  while (total < kChunks * kChunk) {
    auto m = c.Receive(10s);
    if (!m) break;
    for (size_t off = 0; off < m->data.size();) {
      const size_t pos = total % kChunk;
      const size_t n = std::min(kChunk - pos, m->data.size() - off);
      if (m->data.find_first_not_of(static_cast<char>(index % 251), off) < off + n)
        in_order = false;
      off += n;
      total += n;
      if (total % kChunk == 0) ++index;
    }
  }
  CHECK(total == kChunks * kChunk);
  CHECK(in_order);
  CHECK(dev->resumes() >= 1);
}

TEST_CASE("WebSocket: a device that refuses writes stops the socket reads") {
  Devices d;
  d.make = [](const HttpRequest&) { return std::make_shared<PipeStream>(100); };
  auto s = StartServer(d.MakeHandler());

  WebSocketClient c;
  REQUIRE(c.Connect(s.address, "/ws"));
  auto dev = d.Last();
  for (int i = 0; i < 5; ++i) REQUIRE(c.SendBinary(std::string(60, static_cast<char>('0' + i))));
  REQUIRE(dev->WaitWrites(1, 5s));
  std::this_thread::sleep_for(200ms);
  // Only the first fits; the second was refused and is held (not dropped, not re-ordered).
  auto got = dev->Take();  // makes room and calls on_writable
  REQUIRE(got.size() == 1);
  CHECK(got[0] == std::string(60, '0'));
  CHECK(dev->refusals() >= 1);
  for (int i = 1; i < 5; ++i) {
    INFO("message " << i << ", refusals " << dev->refusals());
    REQUIRE(dev->WaitWrites(1, 5s));
    got = dev->Take();
    REQUIRE(got.size() == 1);
    CHECK(got[0] == std::string(60, static_cast<char>('0' + i)));
  }

  // With the device refusing for good, the server stops reading: the client's sends back up
  // into the socket buffers and one times out.
  WebSocketClient flood;
  REQUIRE(flood.Connect(s.address, "/ws"));
  auto full = d.Last();
  REQUIRE(flood.SendBinary(std::string(100, 'x')));  // fills the device's buffer
  bool timed_out = false;
  for (int i = 0; i < 2000 && !timed_out; ++i) {
    timed_out = !flood.SendBinary(std::string(64 << 10, 'y'), 500ms);
  }
  CHECK(timed_out);
  REQUIRE(full->WaitWrites(1, 1s));
  CHECK(full->Take().size() == 1);  // nothing but what fitted was taken
}

TEST_CASE("WebSocket: every message is one Write and every on_data one message (UDP)") {
  Devices d;
  auto s = StartServer(d.MakeHandler());
  WebSocketClient c;
  REQUIRE(c.Connect(s.address, "/ws"));
  auto dev = d.Last();
  for (std::string m : {"a", "bb", "", "ccc"}) REQUIRE(c.SendBinary(m));
  REQUIRE(dev->WaitWrites(4, 5s));
  CHECK(dev->Take() == std::vector<std::string>{"a", "bb", "", "ccc"});
  for (std::string m : {"x", "yy", "zzz"}) dev->Emit(m);
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    auto m = c.Receive(5s);
    REQUIRE(m);
    got.push_back(m->data);
  }
  CHECK(got == std::vector<std::string>{"x", "yy", "zzz"});
}

// One client frame as a client must send it (masked), with the 7/16/64-bit length forms.
std::string ClientFrame(uint8_t opcode, bool fin, std::string_view payload) {
  std::string f;
  f += static_cast<char>((fin ? 0x80 : 0x00) | opcode);
  const size_t n = payload.size();
  if (n < 126) {
    f += static_cast<char>(0x80 | n);
  } else if (n < 65536) {
    f += static_cast<char>(0x80 | 126);
    f += static_cast<char>(n >> 8);
    f += static_cast<char>(n & 0xff);
  } else {
    f += static_cast<char>(0x80 | 127);
    for (int shift = 56; shift >= 0; shift -= 8) f += static_cast<char>((n >> shift) & 0xff);
  }
  const char key[4] = {0x12, 0x34, 0x56, 0x78};
  f.append(key, 4);
  for (size_t i = 0; i < n; ++i) f += static_cast<char>(payload[i] ^ key[i % 4]);
  return f;
}

TEST_CASE("WebSocket: frames that arrive together are split into the right messages") {
  // The server reads up to 64 KiB at once and serves Beast's frame reads from memory
  // (ReadAhead): several messages in one TCP write, a message fragmented around a ping, one
  // message larger than a read, a text message between them (ignored).
  Devices d;
  auto s = StartServer(d.MakeHandler());
  namespace net = boost::asio;
  namespace websocket = boost::beast::websocket;
  net::io_context ioc;
  net::ip::tcp::socket sock(ioc);
  const std::string hostport = s.address.substr(7);
  const size_t colon = hostport.rfind(':');
  sock.connect({net::ip::make_address(hostport.substr(0, colon)),
                static_cast<uint16_t>(std::stoi(hostport.substr(colon + 1)))});
  websocket::stream<net::ip::tcp::socket&> ws(sock);
  ws.handshake(hostport, "/ws");
  auto dev = d.Last();
  REQUIRE(dev);

  std::string big(200 * 1024, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 251);
  std::string burst;
  burst += ClientFrame(0x2, true, "first");
  burst += ClientFrame(0x2, false, "frag-a,");  // a message in three frames, a ping between
  burst += ClientFrame(0x0, false, "frag-b,");
  burst += ClientFrame(0x9, true, "ping");
  burst += ClientFrame(0x0, true, "frag-c");
  burst += ClientFrame(0x1, true, "text is ignored");
  burst += ClientFrame(0x2, true, big);
  burst += ClientFrame(0x2, true, "");
  burst += ClientFrame(0x2, true, "last");
  net::write(sock, net::buffer(burst));

  const std::vector<std::string> want = {"first", "frag-a,frag-b,frag-c", big, "", "last"};
  REQUIRE(dev->WaitWrites(want.size(), 5s));
  std::this_thread::sleep_for(100ms);  // nothing more (the text message) may follow
  const std::vector<std::string> got = dev->Take();
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("message " << i << " of " << got[i].size() << " bytes");
    CHECK(got[i] == want[i]);
  }
  // The ping in the middle was answered, and the connection is still usable both ways.
  bool pong = false;
  ws.control_callback([&](websocket::frame_type kind, boost::beast::string_view payload) {
    if (kind == websocket::frame_type::pong && payload == "ping") pong = true;
  });
  dev->Emit("reply");
  boost::beast::flat_buffer in;
  ws.read(in);
  CHECK(pong);
  CHECK(boost::beast::buffers_to_string(in.data()) == "reply");
}

TEST_CASE("WebSocket: an echo device round-trips many messages") {
  Devices d;
  d.make = [](const HttpRequest&) { return std::make_shared<PipeStream>(1 << 20, true); };
  auto s = StartServer(d.MakeHandler());
  WebSocketClient c;
  REQUIRE(c.Connect(s.address, "/ws"));
  for (int i = 0; i < 200; ++i) {
    const std::string msg = "msg-" + std::to_string(i);
    REQUIRE(c.SendBinary(msg));
    auto m = c.Receive(5s);
    REQUIRE(m);
    CHECK(m->data == msg);
  }
}

TEST_CASE("WebSocket: connections count against max_connections; Stop closes them with 1001") {
  Devices d;
  ServerOptions o;
  o.max_connections = 2;
  auto s = StartServer(d.MakeHandler(), o);

  WebSocketClient a, b;
  REQUIRE(a.Connect(s.address, "/ws"));
  REQUIRE(b.Connect(s.address, "/ws"));
  WebSocketClient third;
  CHECK_FALSE(third.Connect(s.address, "/ws"));
  CHECK(third.status() == 503);

  auto dev = d.Last();
  // b does not read: a large write is in flight when Stop drops the queue behind it.
  for (int i = 0; i < 256; ++i) dev->Emit(std::string(64 << 10, 'q'));
  REQUIRE(dev->WaitPaused(5s));
  std::thread stopper([&] { s.server->Stop(2000ms); });
  CHECK(a.WaitClosed(5s));
  CHECK(b.WaitClosed(5s));
  stopper.join();
  CHECK(a.close_code() == 1001);
  CHECK(b.close_code() == 1001);
  CHECK(dev->closed());
}

TEST_CASE("WebSocket: the client hanging up closes the device") {
  Devices d;
  auto s = StartServer(d.MakeHandler());
  std::shared_ptr<PipeStream> dev;
  {
    WebSocketClient c;
    REQUIRE(c.Connect(s.address, "/ws"));
    dev = d.Last();
  }  // the socket closes without a close frame
  CHECK(dev->WaitClosed(5s));
}

}  // namespace
}  // namespace edgevirt::api
