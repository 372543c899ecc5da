// The HTTP server: listeners (TCP, unix), connections (one request at a time, keep-alive,
// timeouts, limits) and the server object that owns the io_context and its threads.
//
// Threading: one io_context run by `io_threads` threads. Every listener and every connection
// has its own strand, so the members of one listener or connection are only touched by one
// thread at a time; what is shared between them (the connection registry, the stop flag) is in
// ServerState behind ServerState::mu.
#include "api/http_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "api/http_internal.h"
#include "common/fd.h"
#include "common/log.h"

namespace edgevirt::api {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using unix_stream = net::local::stream_protocol;
using ErrorCode = boost::system::error_code;

// How long a connection we close keeps reading (and discarding) what the client still sends, so
// that our last response is not destroyed by a TCP RST (the "lingering close" of RFC 9112 9.6).
constexpr std::chrono::seconds kLingerTimeout{1};
// Pause before accepting again after accept() failed (EMFILE, ENFILE, ENOBUFS...), so that a
// full fd table does not turn the accept loop into a busy loop.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};
// How long Stop waits, after forcing connections closed, for their handlers to finish before
// stopping the io_context outright.
constexpr std::chrono::seconds kAbortWait{2};
constexpr std::chrono::milliseconds kDestructorGrace{1000};
constexpr size_t kReadChunk = 4096;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

// Beast 1.74 uses boost::string_view.
std::string_view Sv(beast::string_view s) { return {s.data(), s.size()}; }

Error SystemError(std::string_view context, const ErrorCode& ec) {
  if (ec.category() == boost::system::system_category()) return ErrnoError(context, ec.value());
  return MakeError(Code::kInternal, std::string(context) + ": " + ec.message());
}

// Asio opens sockets without SOCK_CLOEXEC; the daemon spawns helpers (qemu-img, dnsmasq) that
// must not inherit them.
void SetCloexec(int fd) {
  int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

std::optional<uint32_t> PeerUid(int fd) {
  struct ucred cred {};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return std::nullopt;
  return static_cast<uint32_t>(cred.uid);
}

// ---------------------------------------------------------------------------------------------
// Shared state

class ServerState;

class ConnectionBase : public std::enable_shared_from_this<ConnectionBase> {
 public:
  explicit ConnectionBase(std::shared_ptr<ServerState> server) : server_(std::move(server)) {}
  ConnectionBase(const ConnectionBase&) = delete;
  ConnectionBase& operator=(const ConnectionBase&) = delete;
  virtual ~ConnectionBase();

  // Both thread-safe (they post to the connection's strand).
  // Closes the connection now if it waits for a request, else after the response in progress.
  virtual void Drain() = 0;
  // Closes the connection now (after the handler returns, if one runs).
  virtual void Abort() = 0;

 protected:
  friend class ServerState;
  const std::shared_ptr<ServerState> server_;
  uint64_t id_ = 0;  // 0 = not registered; set by ServerState::Register
};

// What the listeners, the connections and the server object share. Outlives all of them (each
// holds a shared_ptr).
class ServerState {
 public:
  ServerState(ServerOptions options, Handler handler)
      : options(std::move(options)), handler(std::move(handler)), busy_response(BusyResponse()) {}

  const ServerOptions options;
  const Handler handler;
  // The whole 503 answer to a connection beyond max_connections, rendered once.
  const std::string busy_response;

  enum class Admission { kAdmitted, kFull, kStopping };
  Admission Register(const std::shared_ptr<ConnectionBase>& c) {
    std::lock_guard lock(mu_);
    if (stopping_) return Admission::kStopping;
    if (connections_.size() >= options.max_connections) return Admission::kFull;
    c->id_ = next_id_++;
    connections_.emplace(c->id_, c);
    return Admission::kAdmitted;
  }
  void Unregister(uint64_t id) {
    std::lock_guard lock(mu_);
    connections_.erase(id);
    if (connections_.empty()) cv_.notify_all();
  }
  // Sets the stop flag (no connection is admitted afterwards) and returns the live connections.
  std::vector<std::shared_ptr<ConnectionBase>> BeginStop() {
    std::lock_guard lock(mu_);
    stopping_ = true;
    stopping_flag_.store(true, std::memory_order_release);
    return LiveLocked();
  }
  std::vector<std::shared_ptr<ConnectionBase>> Live() {
    std::lock_guard lock(mu_);
    return LiveLocked();
  }
  // True if every connection is gone before `deadline`.
  bool WaitNoConnections(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mu_);
    return cv_.wait_until(lock, deadline, [&] { return connections_.empty(); });
  }
  // Lock-free read of the stop flag, for connections deciding whether to keep alive.
  bool Stopping() const { return stopping_flag_.load(std::memory_order_acquire); }
  size_t Count() {
    std::lock_guard lock(mu_);
    return connections_.size();
  }

 private:
  static std::string BusyResponse() {
    std::string body =
        internal::StatusJson(503, "ServiceUnavailable", "too many open connections; retry later");
    return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           "Content-Length: " +
           std::to_string(body.size()) + "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + body;
  }
  std::vector<std::shared_ptr<ConnectionBase>> LiveLocked() {
    std::vector<std::shared_ptr<ConnectionBase>> out;
    for (auto& [id, weak] : connections_) {
      if (auto c = weak.lock()) out.push_back(std::move(c));
    }
    return out;
  }

  std::mutex mu_;
  std::condition_variable cv_;  // notified when connections_ becomes empty
  bool stopping_ = false;
  std::atomic<bool> stopping_flag_{false};  // mirrors stopping_
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::weak_ptr<ConnectionBase>> connections_;
};

ConnectionBase::~ConnectionBase() {
  if (id_ != 0) server_->Unregister(id_);
}

// ---------------------------------------------------------------------------------------------
// Responses

using BeastRequest = http::request<http::string_body>;
using BeastResponse = http::response<http::string_body>;

HttpResponse CallHandler(const ServerState& state, const HttpRequest& req) {
  try {
    return state.handler(req);
  } catch (const std::exception& e) {
    EV_LOG(kError).Field("HTTP_METHOD", req.method).Field("HTTP_PATH", req.path)
        << "request handler threw: " << e.what();
  } catch (...) {
    EV_LOG(kError).Field("HTTP_METHOD", req.method).Field("HTTP_PATH", req.path)
        << "request handler threw a non-std exception";
  }
  return HttpResponse::StatusError(500, "InternalError",
                                   "Internal error occurred: the request handler failed");
}

// Turns a handler's answer into the message put on the wire. `keep_alive` is in/out: false on
// entry forces "Connection: close"; the handler can force it too.
BeastResponse ToBeastResponse(HttpResponse r, unsigned version, bool head, bool* keep_alive) {
  if (r.status < 200 || r.status > 599) {
    // 1xx is the server's business (100 Continue; 101 will come with WebSocket upgrades).
    EV_LOG(kError) << "request handler returned HTTP status " << r.status << "; answering 500";
    r = HttpResponse::StatusError(500, "InternalError",
                                  "Internal error occurred: invalid response status");
  }
  BeastResponse res;
  res.version(version);
  res.result(static_cast<unsigned>(r.status));
  for (auto& [name, value] : r.headers) {
    if (!internal::IsValidHeaderName(name) || !internal::IsValidHeaderValue(value)) {
      EV_LOG(kWarning) << "dropping invalid response header " << name.substr(0, 64);
      continue;
    }
    using internal::EqualsIgnoreCase;
    if (EqualsIgnoreCase(name, "content-length") || EqualsIgnoreCase(name, "transfer-encoding") ||
        EqualsIgnoreCase(name, "date")) {
      continue;
    }
    if (EqualsIgnoreCase(name, "connection")) {
      if (internal::ToLowerAscii(value).find("close") != std::string::npos) *keep_alive = false;
      continue;
    }
    res.insert(name, value);
  }
  res.set(http::field::date, internal::HttpDate(std::chrono::system_clock::now()));
  // 204 and 304 carry no body (RFC 9110 15.3.5, 15.4.5); for 304 a Content-Length would have to
  // describe the representation, which we do not know, so it is left out as well.
  const bool bodiless = r.status == 204 || r.status == 304;
  if (!bodiless) res.content_length(r.body.size());
  // HEAD: the headers GET would send (Content-Length included), no body.
  if (!head && !bodiless) res.body() = std::move(r.body);
  res.keep_alive(*keep_alive);
  return res;
}

// A response built without the handler (errors found by the server itself).
BeastResponse ServerError(int status, std::string_view reason, std::string_view message) {
  bool keep_alive = false;
  return ToBeastResponse(HttpResponse::StatusError(status, reason, message), 11, false,
                         &keep_alive);
}

// ---------------------------------------------------------------------------------------------
// Connection

// One accepted connection. Requests are handled strictly one after another: the next request
// is read only once the previous response is written, so pipelined requests simply wait in
// `buffer_`. States and the timer that guards each:
//   kIdle      waiting for the first byte of a request   idle_timeout (read_timeout for the
//                                                         first request, counted from accept)
//   kReading   reading header and body                   read_timeout (whole request)
//   kWriting   writing the response                      write_timeout
//   kLingering after our last response: discard input    kLingerTimeout
//   kClosed
// Extension point: streaming responses and WebSocket upgrades become further states entered
// from Handle() (see README.md).
template <class Protocol>
class Connection final : public ConnectionBase {
 public:
  using Stream = beast::basic_stream<Protocol, net::any_io_executor, beast::unlimited_rate_policy>;

  Connection(std::shared_ptr<ServerState> server, typename Protocol::socket socket,
             std::optional<uint32_t> peer_uid)
      : ConnectionBase(std::move(server)), stream_(std::move(socket)), peer_uid_(peer_uid) {}

  void Start() {
    net::dispatch(stream_.get_executor(), [self = Self()] { self->WaitForRequest(); });
  }

  // Called before Start() when the connection is over max_connections: a best-effort 503
  // written without blocking, then close. No asynchronous operation is pending yet, so touching
  // the socket from the acceptor's strand is safe.
  void RejectBusy() {
    const std::string& r = server_->busy_response;
    (void)::send(stream_.socket().native_handle(), r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ErrorCode ec;
    stream_.socket().shutdown(net::socket_base::shutdown_both, ec);
    stream_.close();
  }

  void Drain() override {
    net::post(stream_.get_executor(), [self = Self()] {
      self->draining_ = true;
      if (self->phase_ == State::kIdle) self->Close();
    });
  }

  void Abort() override {
    net::post(stream_.get_executor(), [self = Self()] { self->Close(); });
  }

 private:
  enum class State { kIdle, kReading, kWriting, kLingering, kClosed };

  std::shared_ptr<Connection> Self() {
    return std::static_pointer_cast<Connection>(shared_from_this());
  }
  const ServerOptions& opts() const { return server_->options; }

  void WaitForRequest() {
    if (phase_ == State::kClosed) return;
    if (draining_ || server_->Stopping()) return Close();
    if (buffer_.size() > 0) return ReadHeader();  // a pipelined request is already here
    phase_ = State::kIdle;
    stream_.expires_after(served_ == 0 ? opts().read_timeout : opts().idle_timeout);
    stream_.async_read_some(buffer_.prepare(kReadChunk),
                            beast::bind_front_handler(&Connection::OnFirstBytes, Self()));
  }

  void OnFirstBytes(ErrorCode ec, size_t n) {
    if (phase_ == State::kClosed) return;
    if (ec) return Close();  // idle timeout, EOF, reset, or Drain
    buffer_.commit(n);
    ReadHeader();
  }

  void ReadHeader() {
    phase_ = State::kReading;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(
        std::min<size_t>(opts().max_header_bytes, std::numeric_limits<uint32_t>::max())));
    parser_->body_limit(opts().max_body_bytes);
    // The first request's clock started at accept; later ones start at their first byte.
    if (served_ > 0) stream_.expires_after(opts().read_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Connection::OnHeader, Self()));
  }

  void OnHeader(ErrorCode ec, size_t) {
    if (phase_ == State::kClosed) return;
    if (ec) return OnReadError(ec);
    const auto& msg = parser_->get();
    if (!parser_->is_done() && msg.version() >= 11 &&
        internal::EqualsIgnoreCase(Sv(msg[http::field::expect]), "100-continue")) {
      // curl waits a second for this before sending a body; limits were checked on the header.
      net::async_write(stream_, net::buffer(kContinue.data(), kContinue.size()),
                       beast::bind_front_handler(&Connection::OnContinueSent, Self()));
      return;
    }
    ReadBody();
  }

  void OnContinueSent(ErrorCode ec, size_t) {
    if (phase_ == State::kClosed) return;
    if (ec) return Close();
    ReadBody();
  }

  void ReadBody() {
    if (parser_->is_done()) return Handle();
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Connection::OnBody, Self()));
  }

  void OnBody(ErrorCode ec, size_t) {
    if (phase_ == State::kClosed) return;
    if (ec) return OnReadError(ec);
    Handle();
  }

  void OnReadError(ErrorCode ec) {
    if (ec == http::error::body_limit) {
      return SendError(
          413, "RequestEntityTooLarge",
          "the request body is larger than " + std::to_string(opts().max_body_bytes) + " bytes");
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      return SendError(431, "RequestHeaderFieldsTooLarge",
                       "the request header is larger than " +
                           std::to_string(opts().max_header_bytes) + " bytes");
    }
    if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return SendError(400, "BadRequest", "malformed HTTP request: " + ec.message());
    }
    // Timeout (slowloris), EOF, reset, shutdown: nothing useful to answer.
    if (ec == beast::error::timeout) {
      EV_LOG(kDebug) << "closing a connection whose request did not arrive within "
                     << opts().read_timeout.count() << "s";
    }
    Close();
  }

  void SendError(int status, std::string_view reason, std::string message) {
    EV_LOG(kDebug) << "answering " << status << ": " << message;
    const unsigned version = parser_ && parser_->is_header_done() ? parser_->get().version() : 11;
    parser_.reset();
    response_ = ServerError(status, reason, message);
    response_->version(version);
    response_->keep_alive(false);
    Write(/*keep_alive=*/false);
  }

  void Handle() {
    ++served_;
    BeastRequest msg = parser_->release();
    parser_.reset();
    bool keep_alive = msg.keep_alive() && !draining_;
    const bool head = msg.method() == http::verb::head;
    try {
      HttpRequest req;
      req.method = std::string(msg.method_string());
      req.target = std::string(msg.target());
      auto target = internal::SplitTarget(Sv(msg.target()));
      // RFC 9112 3.2: a HTTP/1.1 request without Host is a 400 (Go's net/http, which serves
      // kube-apiserver, enforces it too).
      const bool host_missing = msg.version() >= 11 && msg.find(http::field::host) == msg.end();
      if (!target || host_missing) {
        response_ =
            ServerError(400, "BadRequest",
                        host_missing ? "missing required Host header" : "malformed request target");
        response_->version(msg.version());
        response_->keep_alive(false);
        return Write(/*keep_alive=*/false);
      }
      req.path = std::move(target->path);
      req.query = std::move(target->query);
      req.headers.reserve(std::distance(msg.begin(), msg.end()));
      for (const auto& field : msg) {
        req.headers.emplace_back(internal::ToLowerAscii(Sv(field.name_string())),
                                 std::string(field.value()));
      }
      req.body = std::move(msg.body());
      req.peer_uid = peer_uid_;
      const auto start = std::chrono::steady_clock::now();
      HttpResponse answer = CallHandler(*server_, req);
      // Stop may have begun while the handler ran; Drain() is queued behind us on the strand.
      if (server_->Stopping()) keep_alive = false;
      EV_LOG(kDebug) << req.method << " " << req.target << " " << answer.status << " "
                     << std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now() - start)
                            .count()
                     << "us";
      response_ = ToBeastResponse(std::move(answer), msg.version(), head, &keep_alive);
    } catch (const std::exception& e) {
      // Only allocation failures and Beast rejecting a header can get here.
      EV_LOG(kError) << "building the response failed: " << e.what();
      keep_alive = false;
      response_ = ServerError(500, "InternalError", "Internal error occurred");
    }
    Write(keep_alive);
  }

  void Write(bool keep_alive) {
    phase_ = State::kWriting;
    stream_.expires_after(opts().write_timeout);
    http::async_write(stream_, *response_,
                      beast::bind_front_handler(&Connection::OnWritten, Self(), keep_alive));
  }

  void OnWritten(bool keep_alive, ErrorCode ec, size_t) {
    response_.reset();
    if (phase_ == State::kClosed) return;
    if (ec) return Close();
    if (!keep_alive) return LingerClose();
    WaitForRequest();
  }

  void LingerClose() {
    phase_ = State::kLingering;
    ErrorCode ec;
    stream_.socket().shutdown(net::socket_base::shutdown_send, ec);
    if (ec) return Close();
    buffer_.clear();
    stream_.expires_after(std::min<std::chrono::seconds>(kLingerTimeout, opts().read_timeout));
    Discard();
  }

  void Discard() {
    stream_.async_read_some(buffer_.prepare(kReadChunk),
                            beast::bind_front_handler(&Connection::OnDiscarded, Self()));
  }

  void OnDiscarded(ErrorCode ec, size_t) {
    if (phase_ == State::kClosed) return;
    if (ec) return Close();  // EOF: the client read our answer and closed
    Discard();
  }

  void Close() {
    if (phase_ == State::kClosed) return;
    phase_ = State::kClosed;
    stream_.close();  // cancels pending operations and the timer; noexcept
  }

  State phase_ = State::kIdle;
  Stream stream_;
  const std::optional<uint32_t> peer_uid_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<BeastResponse> response_;
  uint64_t served_ = 0;
  bool draining_ = false;
};

// ---------------------------------------------------------------------------------------------
// Listener

class ListenerBase {
 public:
  virtual ~ListenerBase() = default;
  virtual void Start() = 0;
  // Thread-safe: stops accepting (posts to the listener's strand).
  virtual void Close() = 0;
};

template <class Protocol>
class Listener final : public ListenerBase,
                       public std::enable_shared_from_this<Listener<Protocol>> {
 public:
  Listener(net::io_context& ioc, std::shared_ptr<ServerState> state,
           typename Protocol::acceptor acceptor, std::string name)
      : ioc_(ioc),
        state_(std::move(state)),
        acceptor_(std::move(acceptor)),
        retry_timer_(acceptor_.get_executor()),
        name_(std::move(name)) {}

  void Start() override {
    net::dispatch(acceptor_.get_executor(), [self = this->shared_from_this()] { self->Accept(); });
  }

  void Close() override {
    net::post(acceptor_.get_executor(), [self = this->shared_from_this()] {
      self->closed_ = true;
      ErrorCode ec;
      self->acceptor_.close(ec);
      self->retry_timer_.cancel();
    });
  }

 private:
  void Accept() {
    if (closed_) return;
    acceptor_.async_accept(
        net::make_strand(ioc_),
        beast::bind_front_handler(&Listener::OnAccept, this->shared_from_this()));
  }

  void OnAccept(ErrorCode ec, typename Protocol::socket socket) {
    if (closed_ || ec == net::error::operation_aborted) return;
    if (ec) {
      EV_LOG(kWarning) << name_ << ": accept failed: " << ec.message() << "; retrying";
      retry_timer_.expires_after(kAcceptRetryDelay);
      retry_timer_.async_wait([self = this->shared_from_this()](ErrorCode wait_ec) {
        if (!wait_ec) self->Accept();
      });
      return;
    }
    SetCloexec(socket.native_handle());
    std::optional<uint32_t> peer_uid;
    if constexpr (std::is_same_v<Protocol, tcp>) {
      ErrorCode opt_ec;
      socket.set_option(tcp::no_delay(true), opt_ec);
    } else {
      peer_uid = PeerUid(socket.native_handle());
    }
    auto conn = std::make_shared<Connection<Protocol>>(state_, std::move(socket), peer_uid);
    switch (state_->Register(conn)) {
      case ServerState::Admission::kAdmitted:
        conn->Start();
        break;
      case ServerState::Admission::kFull:
        if (!warned_full_) {
          EV_LOG(kWarning) << name_ << ": " << state_->options.max_connections
                           << " connections open; refusing more with 503";
        }
        warned_full_ = true;
        conn->RejectBusy();
        break;
      case ServerState::Admission::kStopping:
        break;  // `conn` goes out of scope and closes the socket
    }
    if (state_->Count() < state_->options.max_connections) warned_full_ = false;
    Accept();
  }

  net::io_context& ioc_;
  const std::shared_ptr<ServerState> state_;
  typename Protocol::acceptor acceptor_;
  net::steady_timer retry_timer_;
  const std::string name_;
  bool closed_ = false;
  bool warned_full_ = false;  // log "full" once per episode, not once per connection
};

// ---------------------------------------------------------------------------------------------
// Server

// A unix socket file this server created; removed by Stop if it is still the same inode.
struct SocketFile {
  std::string path;
  dev_t dev = 0;
  ino_t ino = 0;
};

// True if some process accepts connections on the unix socket at `path`.
bool UnixSocketIsLive(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return false;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.c_str(), std::min(path.size() + 1, sizeof(sa.sun_path) - 1));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) return true;
  // A full backlog answers EAGAIN: someone is listening.
  return errno == EAGAIN || errno == EINPROGRESS;
}

class HttpServerImpl final : public HttpServer {
 public:
  HttpServerImpl(ServerOptions options, Handler handler)
      : state_(std::make_shared<ServerState>(std::move(options), std::move(handler))),
        ioc_(std::max(1, state_->options.io_threads)) {}

  ~HttpServerImpl() override { Stop(kDestructorGrace); }

  Status Bind() {
    for (const ListenAddress& a : state_->options.listen) {
      Status s = a.kind == ListenAddress::Kind::kUnix ? BindUnix(a) : BindTcp(a);
      if (!s) return std::move(s).error().Wrap("listen " + a.ToString());
    }
    return Ok();
  }

  Status Run() {
    work_.emplace(ioc_.get_executor());
    for (int i = 0; i < state_->options.io_threads; ++i) {
      threads_.emplace_back([this, i] { IoThread(i); });
    }
    for (auto& l : listeners_) l->Start();
    return Ok();
  }

  std::vector<std::string> BoundAddresses() const override { return bound_; }

  void Stop(std::chrono::milliseconds grace) override {
    std::lock_guard lock(stop_mu_);
    if (stopped_) return;
    for (const auto& t : threads_) {
      if (t.get_id() == std::this_thread::get_id()) {
        EV_LOG(kError) << "HttpServer::Stop called from an io thread (a handler); ignored";
        return;
      }
    }
    stopped_ = true;
    const auto deadline = std::chrono::steady_clock::now() + grace;
    {
      auto live = state_->BeginStop();
      for (auto& l : listeners_) l->Close();
      for (auto& c : live) c->Drain();
    }  // drop our references, or the connections could never go away
    if (!state_->WaitNoConnections(deadline)) {
      auto live = state_->Live();
      EV_LOG(kInfo) << "HTTP server: grace period over; closing " << live.size()
                    << " connection(s)";
      for (auto& c : live) c->Abort();
    }
    work_.reset();
    if (!state_->WaitNoConnections(std::chrono::steady_clock::now() + kAbortWait)) {
      EV_LOG(kWarning) << "HTTP server: connections still open after abort; stopping io";
      ioc_.stop();
    }
    for (auto& t : threads_) t.join();
    threads_.clear();
    RemoveSocketFiles();
  }

 private:
  void IoThread(int index) {
    std::string name = "ev-http-" + std::to_string(index);
    pthread_setname_np(pthread_self(), name.c_str());
    for (;;) {
      try {
        ioc_.run();
        return;
      } catch (const std::exception& e) {
        // Handlers catch what they call; this is a last line, and run() may be resumed.
        EV_LOG(kError) << "HTTP io thread: unexpected exception: " << e.what();
      } catch (...) {
        EV_LOG(kError) << "HTTP io thread: unexpected non-std exception";
      }
    }
  }

  Status BindTcp(const ListenAddress& a) {
    ErrorCode ec;
    net::ip::address ip = a.host == "localhost" ? net::ip::address(net::ip::address_v4::loopback())
                                                : net::ip::make_address(a.host, ec);
    if (ec) return MakeError(Code::kInvalid, "bad address " + a.host);
    const tcp::endpoint ep(ip, a.port);
    tcp::acceptor acceptor(net::make_strand(ioc_));
    if (acceptor.open(ep.protocol(), ec); ec) return SystemError("socket", ec);
    SetCloexec(acceptor.native_handle());
    // Lets a restarted daemon bind while old connections sit in TIME_WAIT.
    if (acceptor.set_option(net::socket_base::reuse_address(true), ec); ec) {
      return SystemError("SO_REUSEADDR", ec);
    }
    if (ip.is_v6()) acceptor.set_option(net::ip::v6_only(true), ec);
    if (acceptor.bind(ep, ec); ec) return SystemError("bind", ec);
    if (acceptor.listen(net::socket_base::max_listen_connections, ec); ec) {
      return SystemError("listen", ec);
    }
    tcp::endpoint local = acceptor.local_endpoint(ec);
    if (ec) return SystemError("getsockname", ec);
    ListenAddress bound = a;
    bound.host = local.address().to_string();
    bound.port = local.port();
    bound_.push_back(bound.ToString());
    listeners_.push_back(
        std::make_shared<Listener<tcp>>(ioc_, state_, std::move(acceptor), bound_.back()));
    return Ok();
  }

  Status BindUnix(const ListenAddress& a) {
    const std::string& path = a.path;
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return MakeError(Code::kAlreadyExists,
                         path + " exists and is not a socket; refusing to replace it");
      }
      if (UnixSocketIsLive(path)) {
        return MakeError(Code::kAlreadyExists, path + " is in use: another process listens on it");
      }
      // A stale socket from a previous run (kill -9 leaves it behind).
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        return ErrnoError("remove stale socket " + path, errno);
      }
    } else if (errno != ENOENT) {
      return ErrnoError("stat " + path, errno);
    }

    ErrorCode ec;
    unix_stream::acceptor acceptor(net::make_strand(ioc_));
    if (acceptor.open(unix_stream(), ec); ec) return SystemError("socket", ec);
    SetCloexec(acceptor.native_handle());
    if (acceptor.bind(unix_stream::endpoint(path), ec); ec) return SystemError("bind", ec);
    if (::lstat(path.c_str(), &st) != 0) return ErrnoError("stat " + path, errno);
    socket_files_.push_back(SocketFile{path, st.st_dev, st.st_ino});
    // Before listen(): until then every connect() is refused, so the umask-derived mode the file
    // was created with is never usable by anyone.
    if (::chmod(path.c_str(), 0600) != 0) return ErrnoError("chmod 0600 " + path, errno);
    if (acceptor.listen(net::socket_base::max_listen_connections, ec); ec) {
      return SystemError("listen", ec);
    }
    bound_.push_back(a.ToString());
    listeners_.push_back(
        std::make_shared<Listener<unix_stream>>(ioc_, state_, std::move(acceptor), a.ToString()));
    return Ok();
  }

  void RemoveSocketFiles() {
    for (const SocketFile& f : socket_files_) {
      struct stat st {};
      if (::lstat(f.path.c_str(), &st) != 0) continue;
      if (st.st_dev != f.dev || st.st_ino != f.ino) {
        EV_LOG(kWarning) << f.path << " was replaced by someone else; leaving it";
        continue;
      }
      if (::unlink(f.path.c_str()) != 0 && errno != ENOENT) {
        EV_LOG(kWarning) << "remove " << f.path << ": " << std::strerror(errno);
      }
    }
    socket_files_.clear();
  }

  // Declaration order matters for destruction: ioc_ (and the handlers it still holds) goes
  // after the listeners that use its executors.
  const std::shared_ptr<ServerState> state_;
  net::io_context ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::vector<std::shared_ptr<ListenerBase>> listeners_;
  std::vector<std::string> bound_;
  std::vector<SocketFile> socket_files_;
  std::vector<std::thread> threads_;
  std::mutex stop_mu_;  // serializes Stop
  bool stopped_ = false;
};

Status ValidateOptions(const ServerOptions& o) {
  auto bad = [](std::string why) { return MakeError(Code::kInvalid, "HTTP server: " + why); };
  if (o.listen.empty()) return bad("no listen address");
  if (o.io_threads < 1 || o.io_threads > 256) return bad("io_threads must be 1-256");
  if (o.max_connections < 1) return bad("max_connections must be at least 1");
  if (o.max_header_bytes < 1024 || o.max_header_bytes > (size_t{1} << 30)) {
    return bad("max_header_bytes must be 1 KiB - 1 GiB");
  }
  if (o.read_timeout.count() <= 0 || o.idle_timeout.count() <= 0 || o.write_timeout.count() <= 0) {
    return bad("timeouts must be positive");
  }
  for (const ListenAddress& a : o.listen) {
    // Re-checks addresses built without Parse (e.g. a non-loopback kHttp).
    ASSIGN_OR_RETURN(ListenAddress parsed, ListenAddress::Parse(a.ToString()));
    if (parsed.kind == ListenAddress::Kind::kHttps) {
      return MakeError(Code::kUnsupported, "listen " + a.ToString() +
                                               ": TLS is not available yet; use http:// on a "
                                               "loopback address or a unix: socket");
    }
  }
  return Ok();
}

}  // namespace

Result<std::unique_ptr<HttpServer>> HttpServer::Start(ServerOptions options, Handler handler) {
  if (!handler) return MakeError(Code::kInvalid, "HTTP server: no handler");
  RETURN_IF_ERROR(ValidateOptions(options));
  try {
    auto server = std::make_unique<HttpServerImpl>(std::move(options), std::move(handler));
    // On error `server` is destroyed: listeners close and created socket files are removed.
    RETURN_IF_ERROR(server->Bind());
    RETURN_IF_ERROR(server->Run());
    for (const auto& a : server->BoundAddresses()) EV_LOG(kInfo) << "serving HTTP on " << a;
    return std::unique_ptr<HttpServer>(std::move(server));
  } catch (const std::exception& e) {
    // std::thread creation (system_error), allocation failures.
    return MakeError(Code::kInternal, std::string("HTTP server start: ") + e.what());
  }
}

}  // namespace edgevirt::api
