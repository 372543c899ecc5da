// A small synchronous WebSocket client (Boost.Beast) for tests and benchmarks of edgevirtd's
// WebSocket subresources (console, vnc, portforward). No Catch2 dependency.
//
// Connects over TCP ("http://127.0.0.1:8080") or a unix socket ("unix:/run/x.sock"), sends the
// upgrade with extra headers and the offered subprotocols (plain.kubevirt.io by default) and,
// when the server refuses the upgrade, keeps its HTTP status and body (a metav1.Status). Every
// call takes a timeout and never blocks longer. Reads are not cancelled on a timeout: the read
// stays pending and the next Receive continues it, so a timed-out Receive loses nothing. The
// client reads only inside Receive/ReadUntil/Close/Pump (a client that does not call them does
// not read its socket, which is how tests make a slow client). Pump joins the WebSocket to two
// file descriptors full duplex (what `virtctl port-forward --stdio=true` does with its stdin and
// stdout; tests/support/virtctl_pf_stdio.cc).
//
// Not thread-safe: one thread uses one client.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <functional>

#include <boost/asio/connect.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

namespace edgevirt::testing {

class WebSocketClient {
 public:
  using Headers = std::vector<std::pair<std::string, std::string>>;
  using Ms = std::chrono::milliseconds;
  // virtctl's gorilla/websocket write buffer (kubecli.WebsocketMessageBufferSize): the largest
  // frame it sends; longer messages are fragmented.
  static constexpr size_t kVirtctlWriteBufferBytes = 10240;

  struct Message {
    bool binary = true;
    std::string data;
  };

  WebSocketClient() : socket_(ioc_), ws_(std::make_unique<Ws>(socket_)) {}
  ~WebSocketClient() {
    boost::system::error_code ec;
    socket_.close(ec);
  }
  WebSocketClient(const WebSocketClient&) = delete;
  WebSocketClient& operator=(const WebSocketClient&) = delete;

  // Connects to `address` and upgrades `target` ("/apis/subresources.kubevirt.io/v1/..."). True
  // on 101. False otherwise: status() and body() are the server's answer (0 and "" if there was
  // none), error() says what failed.
  bool Connect(const std::string& address, const std::string& target, const Headers& headers = {},
               const std::vector<std::string>& subprotocols = {"plain.kubevirt.io"},
               Ms timeout = Ms(10000)) {
    namespace net = boost::asio;
    boost::system::error_code ec;
    std::string host = "localhost";
    if (address.rfind("unix:", 0) == 0) {
      std::string path = address.substr(5);
      if (path.rfind("//", 0) == 0) path = path.substr(2);
      net::local::stream_protocol::endpoint ep(path);
      socket_.connect(net::generic::stream_protocol::endpoint(ep), ec);
    } else if (address.rfind("http://", 0) == 0) {
      std::string hostport = address.substr(7);
      size_t colon = hostport.rfind(':');
      if (colon == std::string::npos) return Fail("bad address " + address);
      host = hostport;
      std::string ip = hostport.substr(0, colon);
      if (ip.size() > 1 && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
      net::ip::tcp::endpoint ep(net::ip::make_address(ip, ec),
                                static_cast<uint16_t>(std::stoi(hostport.substr(colon + 1))));
      if (!ec) socket_.connect(net::generic::stream_protocol::endpoint(ep), ec);
      if (!ec) socket_.set_option(net::ip::tcp::no_delay(true), ec);
    } else {
      return Fail("bad address " + address);
    }
    if (ec) return Fail("connect " + address + ": " + ec.message());

    namespace websocket = boost::beast::websocket;
    ws_->set_option(
        websocket::stream_base::decorator([headers, subprotocols](websocket::request_type& req) {
          std::string offer;
          for (const auto& p : subprotocols) offer += (offer.empty() ? "" : ", ") + p;
          if (!offer.empty()) req.set(boost::beast::http::field::sec_websocket_protocol, offer);
          for (const auto& [n, v] : headers) req.set(n, v);
        }));
    ws_->read_message_max(64 << 20);
    // As virtctl writes (kubecli.Dial: gorilla/websocket with WriteBufferSize 10240): a message
    // goes out in frames of at most 10240 bytes, one write each. Beast's default (one frame
    // masked and written 4 KiB at a time) made the server take twice as many reads per message
    // as virtctl's frames do.
    ws_->auto_fragment(true);
    ws_->write_buffer_bytes(kVirtctlWriteBufferBytes);
    ws_->control_callback([this](websocket::frame_type kind, boost::beast::string_view) {
      if (kind == websocket::frame_type::pong) ++pongs_;
      if (kind == websocket::frame_type::ping) ++pings_;
    });
    bool done = false;
    ws_->async_handshake(response_, host, target, [&](boost::system::error_code hec) {
      done = true;
      ec = hec;
    });
    if (!RunUntil([&] { return done; }, timeout)) return Fail("upgrade: timed out");
    status_ = static_cast<int>(response_.result_int());
    body_ = response_.body();
    if (ec) return Fail("upgrade: " + ec.message());
    subprotocol_ = std::string(response_[boost::beast::http::field::sec_websocket_protocol]);
    ws_->binary(true);
    connected_ = true;
    return true;
  }

  int status() const { return status_; }
  const std::string& body() const { return body_; }
  const std::string& error() const { return error_; }
  // The subprotocol the server selected ("" for none).
  const std::string& subprotocol() const { return subprotocol_; }
  // Pings and pongs received so far (counted while reading).
  int pings() const { return pings_; }
  int pongs() const { return pongs_; }

  bool SendBinary(std::string_view data, Ms timeout = Ms(10000)) {
    return Send(data, true, timeout);
  }
  bool SendText(std::string_view data, Ms timeout = Ms(10000)) {
    return Send(data, false, timeout);
  }

  // Sends a ping (the pong is counted by pongs() during a later read).
  bool Ping(Ms timeout = Ms(10000)) {
    if (!connected_ || closed_) return false;
    bool done = false;
    boost::system::error_code ec;
    ws_->async_ping({}, [&](boost::system::error_code e) {
      done = true;
      ec = e;
    });
    if (!RunUntil([&] { return done; }, timeout)) return Fail("ping: timed out");
    return !ec || Fail("ping: " + ec.message());
  }

  // The next message (text ones included), or nullopt on timeout or when the connection is over
  // (closed() then says so, close_code() has the peer's code).
  std::optional<Message> Receive(Ms timeout = Ms(10000)) {
    if (inbox_.empty() && connected_ && !closed_) {
      StartRead();
      RunUntil([&] { return !inbox_.empty() || closed_; }, timeout);
    }
    if (inbox_.empty()) return std::nullopt;
    Message m = std::move(inbox_.front());
    inbox_.pop_front();
    return m;
  }

  // Binary data received until it contains `needle` (text messages are skipped); what was read
  // is returned, also on timeout (check with find). Data after the needle stays in the result.
  std::string ReadUntil(std::string_view needle, Ms timeout = Ms(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string out;
    while (out.find(needle) == std::string::npos) {
      auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      auto m = Receive(left);
      if (!m) break;
      if (m->binary) out += m->data;
    }
    return out;
  }

  // Reads (and discards) until the peer closes; true if it did within `timeout`.
  bool WaitClosed(Ms timeout = Ms(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!closed_) {
      auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      (void)Receive(left);
      inbox_.clear();
    }
    return true;
  }

  // Sends a close frame with `code` and waits for the server's.
  bool Close(uint16_t code = 1000, Ms timeout = Ms(10000)) {
    if (!connected_ || closed_) return false;
    bool done = false;
    boost::system::error_code ec;
    ws_->async_close(boost::beast::websocket::close_reason(code), [&](boost::system::error_code e) {
      done = true;
      ec = e;
    });
    if (!RunUntil([&] { return done && (!read_pending_ || closed_); }, timeout)) {
      return Fail("close: timed out");
    }
    closed_ = true;
    close_code_ = ws_->reason().code;
    close_reason_ = std::string(ws_->reason().reason.c_str());
    return !ec || Fail("close: " + ec.message());
  }

  // Why Pump returned.
  enum class PumpEnd {
    kInputEnded,    // end of file on in_fd (or a read error): close frame 1000 sent
    kPeerClosed,    // the server closed the WebSocket (close_code() says how) or the connection
                    // broke
    kOutputFailed,  // a write to out_fd failed (the reader went away): the connection is dropped
    kNotReady,      // not connected, already closed, a Receive that timed out left a read
                    // pending, or a descriptor cannot be polled (error() says which)
  };

  // Joins the connected WebSocket to two file descriptors until either side ends: what is read
  // from `in_fd` goes out as binary messages (one per read, at most `chunk` bytes), binary
  // messages received are written to `out_fd` (text messages are dropped; messages already
  // received by Receive go first). One message is in flight each way, so a side that does not
  // read holds back the other one through the socket and pipe buffers: nothing is queued here.
  // Pings are answered while it runs. The fds must be pollable (pipes, sockets, terminals; not
  // regular files); they stay open, their file status flags are restored on return. Afterwards
  // the client is closed.
  PumpEnd Pump(int in_fd, int out_fd, size_t chunk = 32 * 1024) {
    namespace net = boost::asio;
    using boost::system::error_code;
    if (!connected_ || closed_ || read_pending_) return PumpEnd::kNotReady;
    const int in_flags = ::fcntl(in_fd, F_GETFL);
    const int out_flags = ::fcntl(out_fd, F_GETFL);
    net::posix::stream_descriptor in(ioc_);
    net::posix::stream_descriptor out(ioc_);
    {
      error_code ec;
      const int in_dup = ::fcntl(in_fd, F_DUPFD_CLOEXEC, 3);
      const int out_dup = ::fcntl(out_fd, F_DUPFD_CLOEXEC, 3);
      if (in_dup >= 0) in.assign(in_dup, ec);
      if (!ec && out_dup >= 0) out.assign(out_dup, ec);
      if (in_dup < 0 || out_dup < 0 || ec) {
        if (!in.is_open() && in_dup >= 0) ::close(in_dup);
        if (!out.is_open() && out_dup >= 0) ::close(out_dup);
        Fail("pump: the descriptors cannot be polled" + (ec ? ": " + ec.message() : ""));
        return PumpEnd::kNotReady;
      }
    }
    std::optional<PumpEnd> end;
    auto finish = [&](PumpEnd why) {
      if (!end) end = why;
    };
    for (; !inbox_.empty(); inbox_.pop_front()) {
      error_code ec;
      if (inbox_.front().binary) net::write(out, net::buffer(inbox_.front().data), ec);
      if (ec) finish(PumpEnd::kOutputFailed);
    }
    // in_fd → WebSocket: the next read starts when the previous message is sent.
    std::vector<char> in_buf(chunk);
    std::function<void()> read_input = [&] {
      in.async_read_some(net::buffer(in_buf), [&](error_code ec, size_t n) {
        if (ec) return finish(PumpEnd::kInputEnded);
        ws_->binary(true);
        ws_->async_write(net::buffer(in_buf.data(), n), [&](error_code wec, size_t) {
          if (wec) return finish(PumpEnd::kPeerClosed);
          if (!end) read_input();
        });
      });
    };
    // WebSocket → out_fd: the next message is read when the previous one is written.
    std::function<void()> read_ws = [&] {
      read_pending_ = true;
      ws_->async_read(read_buf_, [&](error_code ec, size_t) {
        read_pending_ = false;
        if (ec) {
          closed_ = true;
          close_code_ = ws_->reason().code;
          close_reason_ = std::string(ws_->reason().reason.c_str());
          return finish(PumpEnd::kPeerClosed);
        }
        if (!ws_->got_binary()) {
          read_buf_.consume(read_buf_.size());
          if (!end) read_ws();
          return;
        }
        net::async_write(out, read_buf_.data(), [&](error_code wec, size_t) {
          read_buf_.consume(read_buf_.size());
          if (wec) return finish(PumpEnd::kOutputFailed);
          if (!end) read_ws();
        });
      });
    };
    if (!end) {
      read_input();
      read_ws();
      if (ioc_.stopped()) ioc_.restart();
      while (!end && ioc_.run_one() > 0) {
      }
      if (!end) finish(PumpEnd::kPeerClosed);  // nothing left to wait for
    }
    // Stop both directions; every handler above must have run before its captures go away.
    error_code ignored;
    in.cancel(ignored);
    out.cancel(ignored);
    if (*end == PumpEnd::kInputEnded && !closed_) {
      // As virtctl does on its end of input: the stream is over; say so with a close frame.
      bool done = false;
      ws_->async_close(boost::beast::websocket::close_reason(1000),
                       [&](error_code) { done = true; });
      RunUntil([&] { return done && !read_pending_; }, Ms(5000));
    }
    closed_ = true;
    socket_.close(ignored);
    ioc_.restart();
    ioc_.run();
    in.close(ignored);
    out.close(ignored);
    if (in_flags >= 0) ::fcntl(in_fd, F_SETFL, in_flags);
    if (out_flags >= 0) ::fcntl(out_fd, F_SETFL, out_flags);
    return *end;
  }

  bool closed() const { return closed_; }
  // The peer's close code (1000, 1001, 1011...), or 0 if no close frame came (1006 in browser
  // terms: the connection simply ended).
  int close_code() const { return close_code_; }
  const std::string& close_reason() const { return close_reason_; }

 private:
  using Socket = boost::asio::basic_stream_socket<boost::asio::generic::stream_protocol>;
  using Ws = boost::beast::websocket::stream<Socket&>;

  bool Fail(std::string e) {
    error_ = std::move(e);
    return false;
  }

  template <class Pred>
  bool RunUntil(Pred done, Ms timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      if (ioc_.stopped()) ioc_.restart();
      if (ioc_.run_one_for(deadline - now) == 0 && ioc_.stopped() && !done()) {
        // Nothing left to run (no operation pending): waiting longer cannot help.
        return done();
      }
    }
    return true;
  }

  void StartRead() {
    if (read_pending_) return;
    read_pending_ = true;
    ws_->async_read(read_buf_, [this](boost::system::error_code ec, size_t) {
      read_pending_ = false;
      if (ec) {
        closed_ = true;
        close_code_ = ws_->reason().code;
        close_reason_ = std::string(ws_->reason().reason.c_str());
        return;
      }
      inbox_.push_back(
          Message{ws_->got_binary(), boost::beast::buffers_to_string(read_buf_.data())});
      read_buf_.consume(read_buf_.size());
    });
  }

  bool Send(std::string_view data, bool binary, Ms timeout) {
    if (!connected_ || closed_) return Fail("not connected");
    ws_->binary(binary);
    bool done = false;
    boost::system::error_code ec;
    ws_->async_write(boost::asio::buffer(data.data(), data.size()),
                     [&](boost::system::error_code e, size_t) {
                       done = true;
                       ec = e;
                     });
    if (!RunUntil([&] { return done; }, timeout)) {
      // A write cannot be resumed: the connection is unusable now.
      boost::system::error_code ignored;
      socket_.close(ignored);
      closed_ = true;
      RunUntil([&] { return done; }, Ms(1000));
      return Fail("send: timed out");
    }
    return !ec || Fail("send: " + ec.message());
  }

  boost::asio::io_context ioc_;
  Socket socket_;
  std::unique_ptr<Ws> ws_;
  boost::beast::websocket::response_type response_;
  boost::beast::flat_buffer read_buf_;
  std::deque<Message> inbox_;
  bool read_pending_ = false;
  bool connected_ = false;
  bool closed_ = false;
  int status_ = 0;
  std::string body_;
  std::string error_;
  std::string subprotocol_;
  int close_code_ = 0;
  std::string close_reason_;
  int pings_ = 0;
  int pongs_ = 0;
};

}  // namespace edgevirt::testing
