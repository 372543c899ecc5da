// Load: 200 open WebSockets (each device emitting 20 messages a second, the clients reading and
// answering the server's pings) plus 200 open watches (an event a second... ten a second each)
// while a client does sequential REST GETs: their p99 must stay under 10 ms. Against the real
// HttpServer in-process (two io threads, as edgevirtd), loopback TCP.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <boost/asio/ip/tcp.hpp>

#include "api/http_server.h"
#include "api/pipe_stream_for_test.h"
#include "tests/support/catch.h"
#include "tests/support/websocket_client.h"

namespace edgevirt::api {
namespace {

using namespace std::chrono_literals;
using edgevirt::testing::WebSocketClient;
using testing::PipeStream;

constexpr int kWebSockets = 200;
constexpr int kWatches = 200;
constexpr int kGets = 3000;

class Load {
 public:
  Handler MakeHandler() {
    return [this](const HttpRequest& r) -> HttpResponse {
      if (r.path == "/ws") {
        auto s = std::make_shared<PipeStream>();
        {
          std::lock_guard lock(mu_);
          devices_.push_back(s);
        }
        HttpResponse res;
        res.websocket = s;
        res.websocket_options.subprotocol = "plain.kubevirt.io";
        return res;
      }
      if (r.path == "/watch") {
        HttpResponse res = HttpResponse::Json(200, "");
        res.stream = [this](std::shared_ptr<ResponseStream> w) {
          std::lock_guard lock(mu_);
          watches_.push_back(std::move(w));
        };
        return res;
      }
      return HttpResponse::Json(
          200, R"({"kind":"VirtualMachineInstance","apiVersion":"kubevirt.io/v1","metadata":)"
               R"({"name":"vm1","namespace":"default"},"status":{"phase":"Running"}})");
    };
  }
  // Feeds every device every 50 ms and every watch every 100 ms until `stop`.
  void Feed(const std::atomic<bool>& stop) {
    for (int tick = 0; !stop; ++tick) {
      std::vector<std::shared_ptr<PipeStream>> devices;
      std::vector<std::shared_ptr<ResponseStream>> watches;
      {
        std::lock_guard lock(mu_);
        devices = devices_;
        watches = watches_;
      }
      for (auto& d : devices) d->Emit(std::string(64, 'd'));
      if (tick % 2 == 0) {
        for (auto& w : watches) {
          (void)w->Write(R"({"type":"MODIFIED","object":{"kind":"VirtualMachineInstance"}})"
                         "\n");
        }
      }
      std::this_thread::sleep_for(50ms);
    }
  }
  size_t Devices() {
    std::lock_guard lock(mu_);
    return devices_.size();
  }
  size_t Watches() {
    std::lock_guard lock(mu_);
    return watches_.size();
  }

 private:
  std::mutex mu_;
  std::vector<std::shared_ptr<PipeStream>> devices_;
  std::vector<std::shared_ptr<ResponseStream>> watches_;
};

TEST_CASE("200 WebSockets + 200 watches: REST GET p99 under 10 ms", "[load]") {
  Load load;
  ServerOptions o;
  o.listen.push_back(*ListenAddress::Parse("http://127.0.0.1:0"));
  auto server = HttpServer::Start(o, load.MakeHandler());
  REQUIRE(server);
  const std::string addr = (*server)->BoundAddresses().front();
  const int port = std::stoi(addr.substr(addr.rfind(':') + 1));

  std::vector<std::unique_ptr<WebSocketClient>> clients;
  for (int i = 0; i < kWebSockets; ++i) {
    clients.push_back(std::make_unique<WebSocketClient>());
    REQUIRE(clients.back()->Connect(addr, "/ws"));
  }
  // Watches: raw sockets that send the request and then only receive.
  boost::asio::io_context ioc;
  std::vector<boost::asio::ip::tcp::socket> watch_sockets;
  for (int i = 0; i < kWatches; ++i) {
    watch_sockets.emplace_back(ioc);
    watch_sockets.back().connect(
        {boost::asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
    const std::string req = "GET /watch?watch=true HTTP/1.1\r\nHost: x\r\n\r\n";
    boost::asio::write(watch_sockets.back(), boost::asio::buffer(req));
  }
  REQUIRE(load.Devices() == kWebSockets);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (load.Watches() < kWatches && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(load.Watches() == kWatches);

  std::atomic<bool> stop{false};
  std::thread feeder([&] { load.Feed(stop); });
  // The WebSocket clients read what their devices send (and answer pings) meanwhile.
  std::atomic<long> ws_messages{0};
  std::thread reader([&] {
    while (!stop) {
      for (auto& c : clients) {
        while (auto m = c->Receive(1ms)) ++ws_messages;
      }
    }
  });
  // Watch clients drain their sockets.
  std::thread watch_reader([&] {
    std::vector<char> buf(65536);
    while (!stop) {
      for (auto& s : watch_sockets) {
        while (::recv(s.native_handle(), buf.data(), buf.size(), MSG_DONTWAIT) > 0) {
        }
      }
      std::this_thread::sleep_for(20ms);
    }
  });

  std::this_thread::sleep_for(500ms);  // let the traffic settle in
  httplib::Client http(addr);
  http.set_keep_alive(true);
  std::vector<double> ms;
  ms.reserve(kGets);
  int failures = 0;
  for (int i = 0; i < kGets; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = http.Get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/vm1");
    const auto t1 = std::chrono::steady_clock::now();
    if (!r || r->status != 200) ++failures;
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  stop = true;
  feeder.join();
  reader.join();
  watch_reader.join();

  std::sort(ms.begin(), ms.end());
  const double p50 = ms[ms.size() / 2];
  const double p99 = ms[ms.size() * 99 / 100];
  const double max = ms.back();
  std::printf(
      "REST GET with %d WebSockets + %d watches open: p50 %.3f ms, p99 %.3f ms, max "
      "%.3f ms (%d GETs); WebSocket messages received meanwhile: %ld\n",
      kWebSockets, kWatches, p50, p99, max, kGets, ws_messages.load());
  CHECK(failures == 0);
  CHECK(ws_messages > 0);
  CHECK(p99 < 10.0);
  // Every WebSocket is still open.
  for (auto& c : clients) CHECK_FALSE(c->closed());
  (*server)->Stop(1000ms);
}

}  // namespace
}  // namespace edgevirt::api
