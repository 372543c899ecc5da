// The HTTP server: listeners (TCP, unix), connections (one request at a time, keep-alive,
// timeouts, limits) and the server object that owns the io_context and its threads.
//
// Threading: one io_context run by `io_threads` threads. Every listener and every connection
// has its own strand, so the members of one listener or connection are only touched by one
// thread at a time; what is shared between them (the connection registry, the stop flag) is in
// ServerState behind ServerState::mu_. A streaming response's ResponseStream (StreamChannel) is
// the one object the application touches from its own threads: it has its own mutex and reaches
// the connection only by posting to its strand, through StreamGate.
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
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
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
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "api/http_internal.h"
#include "common/fd.h"
#include "common/log.h"

namespace edgevirt::api {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using DeviceStream = ::edgevirt::api::Stream;
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
constexpr std::string_view kCrlf = "\r\n";
constexpr std::string_view kLastChunk = "0\r\n\r\n";

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
// TLS

// The last OpenSSL error queue entry as text (the queue is cleared).
std::string OpenSslError() {
  unsigned long code = 0;
  unsigned long last = 0;
  while ((code = ERR_get_error()) != 0) last = code;
  if (last == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(last, buf, sizeof(buf));
  return buf;
}

// ALPN: kubectl (Go) offers h2 and http/1.1 and would speak h2 if we chose it; we only serve
// HTTP/1.1, so select it or nothing (a client offering only h2 proceeds without ALPN).
int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  static constexpr unsigned char kHttp11[] = {'h', 't', 't', 'p', '/', '1', '.', '1'};
  for (unsigned int i = 0; i < inlen;) {
    const unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == sizeof(kHttp11) && std::memcmp(in + i + 1, kHttp11, len) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

Result<std::unique_ptr<net::ssl::context>> MakeTlsContext(const TlsOptions& o) {
  auto ctx = std::make_unique<net::ssl::context>(net::ssl::context::tls_server);
  SSL_CTX* native = ctx->native_handle();
  ErrorCode ec;
  ctx->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                       net::ssl::context::no_sslv3 | net::ssl::context::single_dh_use,
                   ec);
  if (ec || SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1) {
    return MakeError(Code::kInternal, "TLS: cannot require TLS 1.2: " + OpenSslError());
  }
  if (ctx->use_certificate_chain_file(o.cert_file, ec); ec) {
    return MakeError(Code::kInvalid, "TLS certificate " + o.cert_file + ": " + OpenSslError());
  }
  if (ctx->use_private_key_file(o.key_file, net::ssl::context::pem, ec); ec) {
    return MakeError(Code::kInvalid, "TLS key " + o.key_file + ": " + OpenSslError());
  }
  if (SSL_CTX_check_private_key(native) != 1) {
    return MakeError(Code::kInvalid,
                     "TLS key " + o.key_file + " does not match certificate " + o.cert_file);
  }
  SSL_CTX_set_alpn_select_cb(native, SelectAlpn, nullptr);
  static constexpr unsigned char kSessionContext[] = "edgevirtd";
  SSL_CTX_set_session_id_context(native, kSessionContext, sizeof(kSessionContext) - 1);
  if (!o.client_ca_file.empty()) {
    if (ctx->load_verify_file(o.client_ca_file, ec); ec) {
      return MakeError(Code::kInvalid, "TLS client CA " + o.client_ca_file + ": " + OpenSslError());
    }
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.client_ca_file.c_str());
    if (names == nullptr) {
      return MakeError(Code::kInvalid,
                       "TLS client CA " + o.client_ca_file + ": no certificate in it");
    }
    SSL_CTX_set_client_CA_list(native, names);  // takes ownership
    // Asked for, verified when sent, not required: token users have none.
    ctx->set_verify_mode(net::ssl::verify_peer, ec);
  } else {
    ctx->set_verify_mode(net::ssl::verify_none, ec);
  }
  ERR_clear_error();
  return ctx;
}

// The verified client certificate's CN and O values, if the client sent one.
std::optional<HttpRequest::ClientCertificate> PeerCertificate(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return std::nullopt;
  HttpRequest::ClientCertificate out;
  const X509_NAME* subject = X509_get_subject_name(cert);
  auto text = [](const X509_NAME_ENTRY* e) {
    const ASN1_STRING* data = X509_NAME_ENTRY_get_data(e);
    unsigned char* utf8 = nullptr;
    const int len = ASN1_STRING_to_UTF8(&utf8, data);
    std::string s = len > 0 ? std::string(reinterpret_cast<char*>(utf8), len) : std::string();
    OPENSSL_free(utf8);
    return s;
  };
  for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;) {
    out.common_name = text(X509_NAME_get_entry(subject, i));
  }
  for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_organizationName, i)) >= 0;) {
    out.organizations.push_back(text(X509_NAME_get_entry(subject, i)));
  }
  if (out.common_name.empty()) return std::nullopt;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Shared state

class ServerState;

// What a ResponseStream needs from the server, in an object of its own: a stream the application
// keeps after its connection (or the whole server) is gone holds only this, not ServerState
// (whose handler may itself hold streams, which would make a cycle).
class StreamGate {
 public:
  bool Stopping() const { return stopping_.load(std::memory_order_acquire); }
  void SetStopping() { stopping_.store(true, std::memory_order_release); }

  // Calls `post` (which posts to the io_context) unless CloseIo was called. Threads that are not
  // io threads post only through here: the io_context is destroyed after Stop returns, and
  // posting into an io_context being destroyed is undefined behaviour.
  template <class F>
  bool Post(F&& post) {
    std::shared_lock lock(mu_);
    if (!io_open_) return false;
    post();
    return true;
  }
  // Called by Stop once the io threads are joined; waits for Posts in progress.
  void CloseIo() {
    std::unique_lock lock(mu_);
    io_open_ = false;
  }

 private:
  std::atomic<bool> stopping_{false};
  std::shared_mutex mu_;
  bool io_open_ = true;  // guarded by mu_
};

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

// Runs deferred handlers (HttpResponse::blocking) on its own threads, so that a handler waiting
// for a durable commit holds neither an io thread nor the other connections it serves.
class BlockingPool {
 public:
  explicit BlockingPool(int threads) {
    threads_.reserve(static_cast<size_t>(threads));
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this, i] { Run(i); });
    }
  }
  ~BlockingPool() { Shutdown(); }
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  // False once Shutdown has begun (the task is destroyed, not run).
  bool Post(std::function<void()> task) {
    {
      std::lock_guard lock(mu_);
      if (shutdown_) return false;
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return true;
  }

  // Drops the tasks not yet started, waits for the running ones and joins the threads.
  // Idempotent; must not be called from a pool thread.
  void Shutdown() {
    std::deque<std::function<void()>> dropped;
    {
      std::lock_guard lock(mu_);
      shutdown_ = true;
      dropped.swap(queue_);
    }
    cv_.notify_all();
    dropped.clear();  // outside the lock: a task's captures may be connections
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void Run(int index) {
    std::string name = "ev-http-blk-" + std::to_string(index);
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return shutdown_ || !queue_.empty(); });
        if (queue_.empty()) return;  // shutdown_
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();  // tasks catch their own exceptions
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ = false;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> threads_;
};

// What the listeners, the connections and the server object share. Outlives all of them (each
// holds a shared_ptr).
class ServerState {
 public:
  ServerState(ServerOptions options, Handler handler)
      : options(std::move(options)),
        handler(std::move(handler)),
        busy_response(BusyResponse()),
        blocking(this->options.blocking_threads) {}

  const ServerOptions options;
  const Handler handler;
  // The HTTPS listeners' context (certificate, key, client CAs); set before any connection.
  std::unique_ptr<net::ssl::context> tls;
  // The whole 503 answer to a connection beyond max_connections, rendered once.
  const std::string busy_response;
  const std::shared_ptr<StreamGate> gate = std::make_shared<StreamGate>();
  // Shut down by HttpServerImpl::Stop once the io threads are joined.
  BlockingPool blocking;

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
    gate->SetStopping();
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
  bool Stopping() const { return gate->Stopping(); }
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
  bool stopping_ = false;       // mirrored, lock-free, by gate->Stopping()
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

HttpResponse CallDeferred(const HttpResponse::DeferredFn& fn, const HttpRequest& req) {
  try {
    HttpResponse r = fn(req);
    if (!r.blocking) return r;
    EV_LOG(kError).Field("HTTP_METHOD", req.method).Field("HTTP_PATH", req.path)
        << "a deferred request handler returned a deferred response";
  } catch (const std::exception& e) {
    EV_LOG(kError).Field("HTTP_METHOD", req.method).Field("HTTP_PATH", req.path)
        << "deferred request handler threw: " << e.what();
  } catch (...) {
    EV_LOG(kError).Field("HTTP_METHOD", req.method).Field("HTTP_PATH", req.path)
        << "deferred request handler threw a non-std exception";
  }
  return HttpResponse::StatusError(500, "InternalError",
                                   "Internal error occurred: the request handler failed");
}

// Status line and the handler's headers, minus the ones the server owns, plus Date. A handler's
// "Connection: close" clears `*keep_alive`.
void SetHead(http::response_header<>& res, const HttpResponse& r, unsigned version,
             bool* keep_alive) {
  res.version(version);
  res.result(static_cast<unsigned>(r.status));
  for (const auto& [name, value] : r.headers) {
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
  SetHead(res, r, version, keep_alive);
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
// Streaming responses

// A status a streamed response may have: one that carries a body.
bool StreamableStatus(int status) {
  return status >= 200 && status <= 599 && status != 204 && status != 304;
}

template <class F>
void RunUserCallback(F& f, std::string_view what) {
  try {
    f();
  } catch (const std::exception& e) {
    EV_LOG(kError) << what << " threw: " << e.what();
  } catch (...) {
    EV_LOG(kError) << what << " threw a non-std exception";
  }
}

// The ResponseStream handed to the application, shared by the application's threads and the
// connection's strand; all of its state is behind mu_. The connection is reached only through
// `wake_` (a post to its strand holding a weak reference), which the connection clears in End()
// before it goes away: the channel never keeps a connection, nor anything of the io_context,
// alive, so a stream kept after its connection died is a few bytes that answer "closed".
//
// Wake-ups are coalesced: `wake_pending_` is true while the connection is known to look at the
// queue soon (a wake-up is posted, or a write is in flight, whose completion takes the queue),
// so a burst of Writes posts once.
class StreamChannel final : public ResponseStream {
 public:
  enum class State {
    kOpen,       // Write accepted
    kFinishing,  // Finish called, or the server stops: the queue drains, then the last chunk
    kCut,        // the queue overflowed (or the io_context is gone): the connection is cut
    kEnded,      // over; OnClosed callbacks have run
  };

  StreamChannel(std::shared_ptr<StreamGate> gate, size_t max_chunks, size_t max_bytes,
                std::function<void()> wake)
      : gate_(std::move(gate)),
        max_chunks_(max_chunks),
        max_bytes_(max_bytes),
        wake_(std::move(wake)) {}

  bool Write(std::string chunk) override {
    if (gate_->Stopping()) return false;
    std::lock_guard lock(mu_);
    if (state_ != State::kOpen) return false;
    // A chunk of size 0 is the end of a chunked body; it is never sent for an empty Write.
    if (chunk.empty()) return true;
    if (chunks_ >= max_chunks_ || chunk.size() > max_bytes_ - bytes_) {
      state_ = State::kCut;
      queue_.clear();
      WakeLocked(/*force=*/true);  // even with a write in flight: that one may be stuck
      return false;
    }
    if (!WakeLocked(/*force=*/false)) return false;
    ++chunks_;
    bytes_ += chunk.size();
    queue_.push_back(std::move(chunk));
    return true;
  }

  void Finish() override {
    std::lock_guard lock(mu_);
    if (state_ != State::kOpen) return;
    state_ = State::kFinishing;
    WakeLocked(/*force=*/false);
  }

  void OnClosed(std::function<void()> callback) override {
    if (!callback) return;
    {
      std::lock_guard lock(mu_);
      if (state_ != State::kEnded) {
        callbacks_.push_back(std::move(callback));
        return;
      }
    }
    RunUserCallback(callback, "ResponseStream::OnClosed callback");
  }

  bool closed() const override {
    if (gate_->Stopping()) return true;
    std::lock_guard lock(mu_);
    return state_ != State::kOpen;
  }

  // --- for the connection, on its strand ---

  // Moves the queued chunks to `out` (empty on entry) and returns the state. The caller writes
  // them, or acts on the state, and takes again when that is done.
  State Take(std::vector<std::string>* out) {
    std::lock_guard lock(mu_);
    wake_pending_ = false;
    out->swap(queue_);
    return state_;
  }
  bool IsCut() const {
    std::lock_guard lock(mu_);
    return state_ == State::kCut;
  }
  // `chunks` chunks of `bytes` bytes taken earlier are now with the kernel.
  void Written(size_t chunks, size_t bytes) {
    std::lock_guard lock(mu_);
    chunks_ -= std::min(chunks, chunks_);
    bytes_ -= std::min(bytes, bytes_);
  }
  // The server stops: no more Writes; what is queued and not yet taken is dropped (a watch
  // client resumes from the last event it got); the last chunk goes out next.
  void Shutdown() {
    std::lock_guard lock(mu_);
    if (state_ == State::kOpen) state_ = State::kFinishing;
    queue_.clear();
  }
  // The stream is over: detaches from the connection, then runs the OnClosed callbacks here and
  // now. Only the first call does anything.
  void End() {
    std::vector<std::function<void()>> callbacks;
    std::function<void()> wake;
    {
      std::lock_guard lock(mu_);
      if (state_ == State::kEnded) return;
      state_ = State::kEnded;
      queue_.clear();
      callbacks.swap(callbacks_);
      wake.swap(wake_);
    }
    wake = nullptr;  // the strand's executor, released before the connection goes
    for (auto& cb : callbacks) {
      RunUserCallback(cb, "ResponseStream::OnClosed callback");
      cb = nullptr;  // what it captured (maybe this stream) is released at once
    }
  }

 private:
  // Makes sure the connection will look at the queue. False if it cannot be reached any more
  // (the io threads are gone): the stream is then cut.
  bool WakeLocked(bool force) {
    if (wake_pending_ && !force) return true;
    if (!wake_ || !gate_->Post(wake_)) {
      if (state_ != State::kEnded) state_ = State::kCut;
      return false;
    }
    wake_pending_ = true;
    return true;
  }

  const std::shared_ptr<StreamGate> gate_;
  const size_t max_chunks_;
  const size_t max_bytes_;
  mutable std::mutex mu_;
  State state_ = State::kOpen;
  std::function<void()> wake_;
  // True at first: the connection takes the queue right after calling `stream`.
  bool wake_pending_ = true;
  std::vector<std::string> queue_;
  size_t chunks_ = 0;  // queued or being written
  size_t bytes_ = 0;
  std::vector<std::function<void()>> callbacks_;
};

// ---------------------------------------------------------------------------------------------
// WebSockets

// What the device side of an upgraded connection (an api::Stream's callbacks, on the stream's
// threads) shares with the connection's strand: the data from the device waiting to be sent, its
// end, and "writable again". Like StreamChannel it reaches the connection only through `wake_`,
// posted via the StreamGate, and never keeps it alive.
class WsChannel {
 public:
  WsChannel(std::shared_ptr<StreamGate> gate, size_t limit, std::function<void()> wake)
      : gate_(std::move(gate)), limit_(limit), wake_(std::move(wake)) {}

  // --- device threads ---
  bool OnData(std::string_view bytes) {
    std::lock_guard lock(mu_);
    if (detached_ || end_) return false;
    queue_.emplace_back(bytes);
    bytes_ += bytes.size();
    WakeLocked();
    if (bytes_ >= limit_) {
      paused_ = true;
      return false;
    }
    return true;
  }
  void OnEnd(std::string reason) {
    std::lock_guard lock(mu_);
    if (detached_ || end_) return;
    end_ = std::move(reason);
    WakeLocked();
  }
  void OnWritable() {
    std::lock_guard lock(mu_);
    if (detached_) return;
    writable_ = true;
    WakeLocked();
  }

  // --- the connection's strand ---
  struct Taken {
    std::deque<std::string> data;
    std::optional<std::string> end;  // set once, with the last Take that has data before it
    bool writable = false;
  };
  Taken Take() {
    std::lock_guard lock(mu_);
    wake_pending_ = false;
    Taken t;
    t.data.swap(queue_);
    t.writable = std::exchange(writable_, false);
    if (end_ && !end_taken_) {
      t.end = *end_;
      end_taken_ = true;
    }
    return t;
  }
  // `n` bytes taken earlier were written to the client. True when the device, paused because
  // the queue was full, should be resumed (the queue is half drained).
  bool Sent(size_t n) {
    std::lock_guard lock(mu_);
    bytes_ -= std::min(n, bytes_);
    if (paused_ && bytes_ <= limit_ / 2) {
      paused_ = false;
      return true;
    }
    return false;
  }
  // Bytes queued or being written (for tests' and logs' sake).
  size_t Pending() const {
    std::lock_guard lock(mu_);
    return bytes_;
  }
  // The connection is gone: further callbacks are dropped.
  void Detach() {
    std::function<void()> wake;
    {
      std::lock_guard lock(mu_);
      detached_ = true;
      queue_.clear();
      wake.swap(wake_);
    }
  }

 private:
  void WakeLocked() {
    if (wake_pending_ || !wake_) return;
    if (gate_->Post(wake_)) wake_pending_ = true;
  }

  const std::shared_ptr<StreamGate> gate_;
  const size_t limit_;
  mutable std::mutex mu_;
  std::function<void()> wake_;
  bool wake_pending_ = false;
  bool detached_ = false;
  bool paused_ = false;
  bool writable_ = false;
  std::deque<std::string> queue_;
  size_t bytes_ = 0;  // queued or being written
  std::optional<std::string> end_;
  bool end_taken_ = false;
};

// The layer under Beast's websocket::stream: reads the connection in pieces of up to
// kWsReadAheadBytes and hands them out from memory. Beast 1.74 reads a frame's header with at
// most 4 KiB of it, then the rest of that one frame, never further: virtctl sends a 32 KiB
// message as four 10 KiB frames (gorilla/websocket's write buffer) in four writes that are
// usually all there when the server wakes, yet they cost it about eight reads, each one a
// completion through the io_context (a syscall, often a wake-up of the other io thread). With
// this layer most of a message is one read. Bounded: it reads only when Beast asks for data, and
// holds at most one read's bytes; a message the device refuses still stops the reading.
// Writes go straight through.
template <class Next>
class ReadAhead {
 public:
  using executor_type = typename Next::executor_type;
  using next_layer_type = Next;

  explicit ReadAhead(Next& next) : next_(next) {}

  executor_type get_executor() noexcept { return next_.get_executor(); }
  Next& next_layer() noexcept { return next_; }

  template <class MutableBuffers, class Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    return net::async_initiate<Handler, void(ErrorCode, size_t)>(
        [this](auto h, const MutableBuffers& b) {
          if (buffered_.size() > 0 || net::buffer_size(b) == 0) {
            // From memory. Posted (to the connection's strand, the executor of Beast's
            // operations): a handler never runs inside the call that started it.
            const size_t n = net::buffer_copy(b, buffered_.data());
            buffered_.consume(n);
            auto ex = net::get_associated_executor(h, get_executor());
            net::post(ex, beast::bind_front_handler(std::move(h), ErrorCode{}, n));
            return;
          }
          next_.async_read_some(buffered_.prepare(kWsReadAheadBytes),
                                [this, b, h = std::move(h)](ErrorCode ec, size_t got) mutable {
                                  buffered_.commit(got);
                                  const size_t n = net::buffer_copy(b, buffered_.data());
                                  buffered_.consume(n);
                                  std::move(h)(n > 0 ? ErrorCode{} : ec, n);
                                });
        },
        handler, buffers);
  }

  template <class ConstBuffers, class Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    return next_.async_write_some(buffers, std::forward<Handler>(handler));
  }

 private:
  static constexpr size_t kWsReadAheadBytes = 64 * 1024;
  Next& next_;
  beast::flat_buffer buffered_;
};

// The WebSocket closing handshake's teardown (found by Beast through ADL): the next layer's.
template <class Next, class Handler>
void async_teardown(beast::role_type role, ReadAhead<Next>& s, Handler&& handler) {
  using websocket::async_teardown;
  async_teardown(role, s.next_layer(), std::forward<Handler>(handler));
}
template <class Next>
void teardown(beast::role_type role, ReadAhead<Next>& s, ErrorCode& ec) {
  using websocket::teardown;
  teardown(role, s.next_layer(), ec);
}

// True if the comma-separated Sec-WebSocket-Protocol offer contains `wanted`.
bool OffersSubprotocol(std::string_view offer, std::string_view wanted) {
  while (!offer.empty()) {
    size_t comma = offer.find(',');
    std::string_view item = offer.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (item == wanted) return true;
    if (comma == std::string_view::npos) break;
    offer.remove_prefix(comma + 1);
  }
  return false;
}

// The close code for the device's end: see HttpResponse::websocket.
websocket::close_reason EndReason(const std::string& reason) {
  websocket::close_reason r;
  // virtctl (console, vnc) reconnects after any close but 1001, on which it says "another user
  // connected to the console of the target vm" and exits: a replaced session must get 1001, or
  // two clients would take the console from each other for ever.
  r.code = reason.empty()                                 ? websocket::close_code::normal
           : reason.find("replaced") != std::string::npos ? websocket::close_code::going_away
                                                          : websocket::close_code::internal_error;
  // A close frame's payload is at most 125 bytes: 2 for the code, the rest for the reason.
  r.reason = reason.substr(0, 123);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Connection

// One accepted connection. Requests are handled strictly one after another: the next request
// is read only once the previous response is written, so pipelined requests simply wait in
// `buffer_`. States and the timer that guards each:
//   kIdle      waiting for the first byte of a request   idle_timeout (read_timeout for the
//                                                         first request, counted from accept)
//   kReading   reading header and body                   read_timeout (whole request)
//   kHandling  a deferred handler runs on the blocking     none
//              pool (HttpResponse::blocking)
//   kWriting   writing the response (or the header of a  write_timeout
//              streamed one)
//   kStreaming a streamed response: chunks are written   write_timeout per write; none between
//              as the application queues them; one read  writes (a quiet watch stays open)
//              stays pending to notice a hang-up
//   kLingering after our last response: discard input    kLingerTimeout
//   kUpgrading the WebSocket handshake (101) is written    write_timeout (Beast's handshake
//                                                         timeout)
//   kWebSocket frames both ways between the socket and   ping every ping_interval, then the
//              the handler's api::Stream                 read_timeout; write_timeout per message
//   kClosed
// A streamed response always ends the connection (kStreaming → kLingering or kClosed), as does
// a WebSocket (kUpgrading → kWebSocket → kClosed).
//
// With kTls the stream is an ssl_stream over the TCP stream: the handshake runs first (under
// read_timeout, in kIdle), timeouts and closing act on the TCP layer, and the lingering close
// sends TLS close_notify (async_shutdown) instead of shutdown(SHUT_WR).
template <class Protocol, bool kTls = false>
class Connection final : public ConnectionBase {
 public:
  using Basic = beast::basic_stream<Protocol, net::any_io_executor, beast::unlimited_rate_policy>;
  using Stream = std::conditional_t<kTls, beast::ssl_stream<Basic>, Basic>;

  Connection(std::shared_ptr<ServerState> server, typename Protocol::socket socket,
             std::optional<uint32_t> peer_uid)
      : ConnectionBase(std::move(server)),
        stream_(MakeStream(std::move(socket), *server_)),
        peer_uid_(peer_uid),
        ws_timer_(stream_.get_executor()) {}

  // Normally the stream ended in Close() already; this covers a connection destroyed without
  // running again (the io_context stopped by Stop's last resort, then destroyed).
  ~Connection() override {
    if (channel_) channel_->End();
    if (ws_channel_) ws_channel_->Detach();
    if (device_) device_->Close();
  }

  void Start() {
    net::dispatch(stream_.get_executor(), [self = Self()] {
      if constexpr (kTls) {
        self->Handshake();
      } else {
        self->WaitForRequest();
      }
    });
  }

  // Called before Start() when the connection is over max_connections: a best-effort 503
  // written without blocking, then close. No asynchronous operation is pending yet, so touching
  // the socket from the acceptor's strand is safe.
  void RejectBusy() {
    if constexpr (!kTls) {  // a TLS client could not read a plain answer: just close
      const std::string& r = server_->busy_response;
      (void)::send(Lowest().socket().native_handle(), r.data(), r.size(),
                   MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    ErrorCode ec;
    Lowest().socket().shutdown(net::socket_base::shutdown_both, ec);
    Lowest().close();
  }

  void Drain() override {
    net::post(stream_.get_executor(), [self = Self()] {
      self->draining_ = true;
      if (self->phase_ == State::kIdle) return self->Close();
      if (self->phase_ == State::kStreaming) {
        // Watch clients re-list/re-watch: end the stream (last chunk) as soon as the write in
        // flight, if any, is done.
        self->channel_->Shutdown();
        self->PumpStream();
      }
      if (self->phase_ == State::kWebSocket) {
        // What is queued is dropped (but the message being written, whose buffer Beast still
        // uses): the client sees 1001 (going away) next.
        while (self->ws_out_.size() > (self->ws_write_in_flight_ ? 1u : 0u)) {
          self->ws_out_.pop_back();
        }
        self->WsClose(websocket::close_reason(websocket::close_code::going_away,
                                              "the server is shutting down"));
      }
    });
  }

  void Abort() override {
    net::post(stream_.get_executor(), [self = Self()] { self->Close(); });
  }

 private:
  enum class State {
    kIdle,
    kReading,
    kHandling,
    kWriting,
    kStreaming,
    kLingering,
    kUpgrading,
    kWebSocket,
    kClosed
  };

  std::shared_ptr<Connection> Self() {
    return std::static_pointer_cast<Connection>(shared_from_this());
  }
  const ServerOptions& opts() const { return server_->options; }

  static Stream MakeStream(typename Protocol::socket socket, ServerState& server) {
    if constexpr (kTls) {
      return Stream(std::move(socket), *server.tls);
    } else {
      return Stream(std::move(socket));
    }
  }
  // The TCP (or unix) stream: timeouts, shutdown, close.
  Basic& Lowest() { return beast::get_lowest_layer(stream_); }

  // TLS: the handshake must complete within read_timeout, like a first request.
  void Handshake() {
    if constexpr (kTls) {
      if (draining_ || server_->Stopping()) return Close();
      phase_ = State::kIdle;
      Lowest().expires_after(opts().read_timeout);
      stream_.async_handshake(net::ssl::stream_base::server,
                              beast::bind_front_handler(&Connection::OnHandshake, Self()));
    }
  }

  void OnHandshake(ErrorCode ec) {
    if (phase_ == State::kClosed) return;
    if (ec) {
      EV_LOG(kDebug) << "TLS handshake failed: " << ec.message();
      return Close();
    }
    if constexpr (kTls) client_certificate_ = PeerCertificate(stream_.native_handle());
    WaitForRequest();
  }

  void WaitForRequest() {
    if (phase_ == State::kClosed) return;
    if (draining_ || server_->Stopping()) return Close();
    if (buffer_.size() > 0) return ReadHeader();  // a pipelined request is already here
    phase_ = State::kIdle;
    Lowest().expires_after(served_ == 0 ? opts().read_timeout : opts().idle_timeout);
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
    if (served_ > 0) Lowest().expires_after(opts().read_timeout);
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
    // Kept for the handshake, should the handler answer with a WebSocket.
    upgrade_msg_.reset();
    if (websocket::is_upgrade(msg)) upgrade_msg_.emplace(msg.base());
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
      req.tls = kTls;
      req.client_certificate = client_certificate_;
      const auto start = std::chrono::steady_clock::now();
      HttpResponse answer = CallHandler(*server_, req);
      if (answer.blocking)
        return Defer(std::move(answer.blocking), std::move(req), msg.version(), head, keep_alive,
                     start);
      return Respond(std::move(answer), req, msg.version(), head, keep_alive, start);
    } catch (const std::exception& e) {
      // Only allocation failures can get here.
      EV_LOG(kError) << "handling the request failed: " << e.what();
      response_ = ServerError(500, "InternalError", "Internal error occurred");
      Write(/*keep_alive=*/false);
    }
  }

  // Runs a deferred handler on the blocking pool, then Respond on this connection's strand.
  void Defer(HttpResponse::DeferredFn fn, HttpRequest req, unsigned version, bool head,
             bool keep_alive, std::chrono::steady_clock::time_point start) {
    phase_ = State::kHandling;
    Lowest().expires_never();
    auto task = [self = Self(), fn = std::move(fn), req = std::move(req), version, head, keep_alive,
                 start]() mutable {
      HttpResponse answer = CallDeferred(fn, req);
      fn = nullptr;  // release its captures on this thread
      auto executor = self->stream_.get_executor();
      net::post(executor, [self = std::move(self), answer = std::move(answer), req = std::move(req),
                           version, head, keep_alive, start]() mutable {
        if (self->phase_ == State::kClosed) return;  // aborted meanwhile; drop the answer
        self->Respond(std::move(answer), req, version, head, keep_alive, start);
      });
    };
    if (!server_->blocking.Post(std::move(task))) Close();  // the server is stopping
  }

  // Sends the handler's answer (a plain response or the start of a stream).
  void Respond(HttpResponse answer, const HttpRequest& req, unsigned version, bool head,
               bool keep_alive, std::chrono::steady_clock::time_point start) {
    try {
      // Stop may have begun while the handler ran; Drain() is queued behind us on the strand.
      if (server_->Stopping() || draining_) keep_alive = false;
      EV_LOG(kDebug) << req.method << " " << req.target << " " << answer.status
                     << (answer.stream      ? " (stream) "
                         : answer.websocket ? " (websocket) "
                                            : " ")
                     << std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now() - start)
                            .count()
                     << "us";
      if (answer.websocket) {
        if (upgrade_msg_ && !draining_ && !server_->Stopping()) {
          return StartWebSocket(std::move(answer));
        }
        answer.websocket->Close();
        answer = draining_ || server_->Stopping()
                     ? HttpResponse::StatusError(503, "ServiceUnavailable",
                                                 "the server is shutting down")
                     : HttpResponse::StatusError(400, "BadRequest",
                                                 "this resource needs a WebSocket upgrade");
        keep_alive = false;
      }
      if (answer.stream) {
        if (StreamableStatus(answer.status)) {
          return StartStream(std::move(answer), version, head);
        }
        EV_LOG(kError) << "request handler returned a streamed response with HTTP status "
                       << answer.status << "; answering 500";
        answer = HttpResponse::StatusError(
            500, "InternalError", "Internal error occurred: invalid streamed response status");
      }
      response_ = ToBeastResponse(std::move(answer), version, head, &keep_alive);
    } catch (const std::exception& e) {
      // Only allocation failures and Beast rejecting a header can get here.
      EV_LOG(kError) << "building the response failed: " << e.what();
      keep_alive = false;
      stream_fn_ = nullptr;
      stream_head_msg_.reset();
      response_ = ServerError(500, "InternalError", "Internal error occurred");
      response_->version(version);
    }
    Write(keep_alive);
  }

  // --- streamed responses ---

  // Sends the header of a streamed response: chunked on HTTP/1.1; on HTTP/1.0 (no chunked
  // coding) the body is delimited by the close. Always "Connection: close".
  void StartStream(HttpResponse r, unsigned version, bool head) {
    http::response<http::empty_body> res;
    bool keep_alive = false;
    SetHead(res, r, version, &keep_alive);
    chunked_ = version >= 11;
    if (chunked_) res.chunked(true);
    res.keep_alive(false);
    stream_head_msg_.emplace(std::move(res));
    stream_fn_ = std::move(r.stream);
    first_chunk_ = std::move(r.body);
    head_only_ = head;
    phase_ = State::kWriting;
    Lowest().expires_after(opts().write_timeout);
    http::async_write_header(stream_, stream_head_msg_->serializer,
                             beast::bind_front_handler(&Connection::OnStreamHeader, Self()));
  }

  void OnStreamHeader(ErrorCode ec, size_t) {
    stream_head_msg_.reset();
    // Called at most once; whatever happens, what it captured is released on return.
    auto stream_fn = std::move(stream_fn_);
    stream_fn_ = nullptr;
    if (phase_ == State::kClosed) return;
    if (ec) return Close();
    if (head_only_) return LingerClose();  // HEAD: the header GET would get, nothing else

    phase_ = State::kStreaming;
    // Runs on the application's threads (through StreamGate::Post): a weak reference only.
    auto wake = [weak = std::weak_ptr<Connection>(Self()), ex = stream_.get_executor()] {
      net::post(ex, [weak] {
        if (auto self = weak.lock()) self->OnStreamWake();
      });
    };
    channel_ = std::make_shared<StreamChannel>(server_->gate, opts().stream_queue_chunks,
                                               opts().stream_queue_bytes, std::move(wake));
    // No read or idle deadline while streaming (expires_never while nothing is pending; later
    // expires_after calls, made with this read pending, only arm the write timer).
    Lowest().expires_never();
    buffer_.clear();  // a pipelined request is never answered: the stream ends the connection
    ReadForHangup();
    if (draining_ || server_->Stopping()) {
      // An empty stream; `stream` is not called.
      channel_->Shutdown();
      return PumpStream();
    }
    if (!first_chunk_.empty()) (void)channel_->Write(std::move(first_chunk_));
    first_chunk_.clear();
    try {
      stream_fn(channel_);
    } catch (const std::exception& e) {
      // The header (200) is out: a cut stream is how the client learns of the failure.
      EV_LOG(kError) << "response stream callback threw: " << e.what() << "; cutting the stream";
      return Close();
    } catch (...) {
      EV_LOG(kError) << "response stream callback threw a non-std exception; cutting the stream";
      return Close();
    }
    PumpStream();
  }

  // One read stays pending while streaming: its completion with an error (EOF, reset) is how a
  // client hanging up is noticed. What a client sends meanwhile is discarded.
  void ReadForHangup() {
    read_pending_ = true;
    stream_.async_read_some(buffer_.prepare(kReadChunk),
                            beast::bind_front_handler(&Connection::OnHangupRead, Self()));
  }

  void OnHangupRead(ErrorCode ec, size_t) {
    read_pending_ = false;
    if (phase_ == State::kClosed) return;
    if (phase_ == State::kLingering) {
      // LingerClose cancelled this read, or the client's FIN or data beat the cancel. After EOF
      // there is nothing to linger for; reading again would even hang until the linger timeout
      // (Asio's epoll reactor marks a descriptor exhausted after a short read, and edge-triggered
      // epoll reports the FIN only once).
      if (ec && ec != net::error::operation_aborted) return Close();
      return StartLinger();
    }
    if (ec) {
      EV_LOG(kDebug) << "streaming client went away: " << ec.message();
      return Close();
    }
    ReadForHangup();
  }

  void OnStreamWake() {
    if (phase_ != State::kStreaming) return;
    if (channel_->IsCut()) return CutStream();
    PumpStream();
  }

  // Starts the next write if none is in flight: the queued chunks, else the last chunk once the
  // stream is finishing.
  void PumpStream() {
    if (phase_ != State::kStreaming || write_in_flight_) return;
    const StreamChannel::State st = channel_->Take(&writing_);
    if (st == StreamChannel::State::kCut) return CutStream();
    if (!writing_.empty()) return WriteChunks();
    if (st == StreamChannel::State::kFinishing) return WriteLastChunk();
  }

  void CutStream() {
    EV_LOG(kWarning) << "streaming client too slow: more than " << opts().stream_queue_chunks
                     << " chunks or " << opts().stream_queue_bytes
                     << " bytes waiting; closing the connection";
    Close();
  }

  // All queued chunks in one gathered write: "<hex size>\r\n<data>\r\n" each (just <data> on
  // HTTP/1.0).
  void WriteChunks() {
    framing_.clear();
    write_buffers_.clear();
    written_bytes_ = 0;
    std::vector<std::pair<size_t, size_t>> heads;  // offset and length of each size line
    if (chunked_) {
      heads.reserve(writing_.size());
      for (const std::string& c : writing_) {
        char hex[24];
        auto [end, ec] = std::to_chars(hex, hex + sizeof(hex), c.size(), 16);
        (void)ec;  // cannot fail: 24 digits hold any size_t
        heads.emplace_back(framing_.size(), static_cast<size_t>(end - hex) + 2);
        framing_.append(hex, end).append(kCrlf);
      }
    }
    write_buffers_.reserve(writing_.size() * (chunked_ ? 3 : 1));
    for (size_t i = 0; i < writing_.size(); ++i) {
      if (chunked_) write_buffers_.emplace_back(framing_.data() + heads[i].first, heads[i].second);
      write_buffers_.emplace_back(writing_[i].data(), writing_[i].size());
      if (chunked_) write_buffers_.emplace_back(kCrlf.data(), kCrlf.size());
      written_bytes_ += writing_[i].size();
    }
    write_in_flight_ = true;
    Lowest().expires_after(opts().write_timeout);
    net::async_write(stream_, write_buffers_,
                     beast::bind_front_handler(&Connection::OnStreamWritten, Self()));
  }

  void WriteLastChunk() {
    last_chunk_ = true;
    if (!chunked_) return EndStream();  // HTTP/1.0: the close ends the body
    write_in_flight_ = true;
    Lowest().expires_after(opts().write_timeout);
    net::async_write(stream_, net::buffer(kLastChunk.data(), kLastChunk.size()),
                     beast::bind_front_handler(&Connection::OnStreamWritten, Self()));
  }

  void OnStreamWritten(ErrorCode ec, size_t) {
    write_in_flight_ = false;
    if (phase_ == State::kClosed) return;
    if (ec) {
      // write_timeout (a client that stopped reading), reset, or Abort.
      EV_LOG(kDebug) << "streamed response write failed: " << ec.message();
      return Close();
    }
    if (last_chunk_) return EndStream();
    channel_->Written(writing_.size(), written_bytes_);
    writing_.clear();
    PumpStream();
  }

  // The whole stream is out: close (lingering, so the last chunk is not lost to a RST).
  void EndStream() {
    LingerClose();
    channel_->End();
  }

  void Write(bool keep_alive) {
    phase_ = State::kWriting;
    Lowest().expires_after(opts().write_timeout);
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
    // TLS: close_notify goes out first (StartLinger); the TCP FIN follows with the close.
    if constexpr (!kTls) {
      Lowest().socket().shutdown(net::socket_base::shutdown_send, ec);
      if (ec) return Close();
    }
    if (read_pending_) {
      // A streamed response's hang-up read has no deadline; cancel it, and OnHangupRead starts
      // the lingering read with one.
      Lowest().socket().cancel(ec);
      return;
    }
    StartLinger();
  }

  void StartLinger() {
    buffer_.clear();
    Lowest().expires_after(std::min<std::chrono::seconds>(kLingerTimeout, opts().read_timeout));
    if constexpr (kTls) {
      // Sends close_notify and waits (at most the linger time) for the client's, which Go and
      // curl send when they close: the client has read our answer by then.
      stream_.async_shutdown([self = Self()](ErrorCode) { self->Close(); });
    } else {
      Discard();
    }
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
    Lowest().close();  // cancels pending operations and the timer; noexcept
    if (channel_) channel_->End();
    ws_timer_.cancel();
    if (ws_channel_) ws_channel_->Detach();
    if (device_) {
      device_->Close();
      device_.reset();
    }
  }

  // --- WebSockets ---

  void StartWebSocket(HttpResponse answer) {
    phase_ = State::kUpgrading;
    device_ = std::move(answer.websocket);
    ws_opts_ = answer.websocket_options;
    Lowest().expires_never();  // the websocket stream keeps its own timers
    buffer_.clear();
    ws_.emplace(stream_);
    websocket::stream_base::timeout timeout{};
    timeout.handshake_timeout = opts().write_timeout;
    timeout.idle_timeout = websocket::stream_base::none();
    timeout.keep_alive_pings = false;
    ws_->set_option(timeout);
    std::string protocol;
    if (!ws_opts_.subprotocol.empty() &&
        OffersSubprotocol(Sv((*upgrade_msg_)[http::field::sec_websocket_protocol]),
                          ws_opts_.subprotocol)) {
      protocol = ws_opts_.subprotocol;
    }
    ws_->set_option(websocket::stream_base::decorator([protocol](websocket::response_type& res) {
      if (!protocol.empty()) res.set(http::field::sec_websocket_protocol, protocol);
    }));
    ws_->read_message_max(ws_opts_.max_message_bytes);
    ws_->auto_fragment(false);
    ws_->binary(true);
    // Runs inside our reads, on the strand: pings and pongs are activity.
    ws_->control_callback([this](websocket::frame_type, beast::string_view) {
      last_read_ = std::chrono::steady_clock::now();
    });
    ws_->async_accept(*upgrade_msg_, beast::bind_front_handler(&Connection::OnWsAccepted, Self()));
  }

  void OnWsAccepted(ErrorCode ec) {
    upgrade_msg_.reset();
    if (phase_ == State::kClosed) return;
    if (ec) {
      EV_LOG(kDebug) << "WebSocket handshake failed: " << ec.message();
      return Close();
    }
    phase_ = State::kWebSocket;
    last_read_ = std::chrono::steady_clock::now();
    auto wake = [weak = std::weak_ptr<Connection>(Self()), ex = stream_.get_executor()] {
      net::post(ex, [weak] {
        if (auto self = weak.lock()) self->OnWsWake();
      });
    };
    ws_channel_ = std::make_shared<WsChannel>(
        server_->gate, std::max<size_t>(1, ws_opts_.send_queue_bytes), std::move(wake));
    if (draining_ || server_->Stopping()) {
      return WsClose(websocket::close_reason(websocket::close_code::going_away,
                                             "the server is shutting down"));
    }
    // The callbacks hold the channel only, never the connection.
    device_->OnWritable([ch = ws_channel_] { ch->OnWritable(); });
    device_->Start([ch = ws_channel_](std::string_view bytes) { return ch->OnData(bytes); },
                   [ch = ws_channel_](std::string reason) { ch->OnEnd(std::move(reason)); });
    WsRead();
    WsTick();
  }

  void WsRead() {
    ws_.value().async_read(ws_in_, beast::bind_front_handler(&Connection::OnWsRead, Self()));
  }

  void OnWsRead(ErrorCode ec, size_t) {
    if (phase_ == State::kClosed) return;
    if (ec) {
      // The client's close (answered by Beast), a reset, or a protocol error (Beast sent the
      // close frame for that, e.g. 1009 for a too large message).
      if (ec != websocket::error::closed) EV_LOG(kDebug) << "WebSocket read: " << ec.message();
      return Close();
    }
    last_read_ = std::chrono::steady_clock::now();
    if (!ws_->got_binary() || ws_closing_) {
      ws_in_.consume(ws_in_.size());  // text messages are ignored, as by virt-handler
      return WsRead();
    }
    // Straight from the read buffer: copied (into ws_pending_in_) only when the device
    // refuses it for now.
    const auto in = ws_in_.data();
    const bool taken =
        device_->Write(std::string_view(static_cast<const char*>(in.data()), in.size()));
    if (!taken) {
      ws_pending_in_ = beast::buffers_to_string(in);
    }
    ws_in_.consume(ws_in_.size());
    if (taken) WsRead();  // else on_writable → OnWsWake → WsDeliver retries, then reads
  }

  // Hands the client's refused message to the device again; reads the next one once it was
  // taken.
  void WsDeliver() {
    if (!device_->Write(*ws_pending_in_)) return;  // on_writable → OnWsWake retries
    ws_pending_in_.reset();
    WsRead();
  }

  void OnWsWake() {
    if (phase_ != State::kWebSocket) return;
    WsChannel::Taken t = ws_channel_->Take();
    if (!ws_closing_) {
      for (auto& d : t.data) ws_out_.push_back(std::move(d));
    }
    if (t.end) ws_end_ = std::move(t.end);
    if (t.writable && ws_pending_in_ && !ws_closing_) {
      WsDeliver();
    }
    WsPump();
  }

  // One message at a time; the close after the last one once the device has ended.
  void WsPump() {
    if (phase_ != State::kWebSocket || ws_write_in_flight_ || ws_closing_) return;
    if (!ws_out_.empty()) {
      ws_write_in_flight_ = true;
      ws_write_started_ = std::chrono::steady_clock::now();
      ws_->binary(true);
      ws_->async_write(net::buffer(ws_out_.front()),
                       beast::bind_front_handler(&Connection::OnWsWritten, Self()));
      return;
    }
    if (ws_end_) WsClose(EndReason(*ws_end_));
  }

  void OnWsWritten(ErrorCode ec, size_t) {
    ws_write_in_flight_ = false;
    if (phase_ == State::kClosed) return;
    if (ec) return Close();
    const size_t n = ws_out_.front().size();
    ws_out_.pop_front();
    if (ws_channel_->Sent(n) && device_) device_->Resume();
    WsPump();
  }

  // Sends a close frame (once); the connection closes when the client answers it, or after
  // kLingerTimeout.
  void WsClose(websocket::close_reason reason) {
    if (ws_closing_ || phase_ != State::kWebSocket) return;
    ws_closing_ = true;
    ws_close_started_ = std::chrono::steady_clock::now();
    if (ws_channel_) ws_channel_->Detach();
    if (device_) {
      device_->Close();
      device_.reset();
    }
    ws_->async_close(reason, [self = Self()](ErrorCode ec) {
      if (ec && self->phase_ != State::kClosed) self->Close();
      // Else the pending read completes with the client's close frame, or WsTick gives up.
    });
    WsTick();
  }

  // Periodic: pings, the read deadline, a stuck write, a close the client does not answer.
  void WsTick() {
    if (phase_ != State::kWebSocket) return;
    const auto now = std::chrono::steady_clock::now();
    if (ws_closing_) {
      if (now - ws_close_started_ >= kLingerTimeout) return Close();
      ws_timer_.expires_after(kLingerTimeout);
    } else {
      if (ws_opts_.read_timeout.count() > 0 && now - last_read_ >= ws_opts_.read_timeout) {
        EV_LOG(kDebug) << "WebSocket client silent for " << ws_opts_.read_timeout.count()
                       << "ms; closing";
        return Close();
      }
      if (ws_write_in_flight_ && now - ws_write_started_ >= opts().write_timeout) {
        EV_LOG(kDebug) << "WebSocket client did not take a message within "
                       << opts().write_timeout.count() << "s; closing";
        return Close();
      }
      // A safety net for a Resume that raced with the on_data call that returned false: with
      // nothing queued the device may always read (Resume is idempotent).
      if (!ws_write_in_flight_ && ws_out_.empty() && ws_channel_->Pending() == 0 && device_) {
        device_->Resume();
      }
      if (ws_opts_.ping_interval.count() > 0 && !ws_ping_in_flight_) {
        ws_ping_in_flight_ = true;
        ws_->async_ping({}, [self = Self()](ErrorCode ec) {
          self->ws_ping_in_flight_ = false;
          if (ec && self->phase_ == State::kWebSocket && !self->ws_closing_) self->Close();
        });
      }
      auto period = ws_opts_.ping_interval.count() > 0
                        ? std::chrono::milliseconds(ws_opts_.ping_interval)
                        : std::chrono::milliseconds(1000);
      ws_timer_.expires_after(period);
    }
    // The timer holds the connection: while the device refuses a message no read is pending,
    // and nothing else would (Close cancels it).
    ws_timer_.async_wait([self = Self()](ErrorCode ec) {
      if (!ec) self->WsTick();
    });
  }

  // The header of a streamed response with its serializer (which refers to the message).
  struct StreamHead {
    explicit StreamHead(http::response<http::empty_body> m)
        : message(std::move(m)), serializer(message) {}
    http::response<http::empty_body> message;
    http::response_serializer<http::empty_body> serializer;
  };

  State phase_ = State::kIdle;
  Stream stream_;
  const std::optional<uint32_t> peer_uid_;
  std::optional<HttpRequest::ClientCertificate> client_certificate_;  // TLS, after the handshake
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<BeastResponse> response_;
  uint64_t served_ = 0;
  bool draining_ = false;

  // Streamed response (kWriting of its header, kStreaming).
  std::optional<StreamHead> stream_head_msg_;
  std::function<void(std::shared_ptr<ResponseStream>)> stream_fn_;  // until called
  std::string first_chunk_;  // HttpResponse::body of a streamed response
  bool head_only_ = false;
  bool chunked_ = true;  // false on HTTP/1.0
  std::shared_ptr<StreamChannel> channel_;
  bool read_pending_ = false;         // the hang-up read
  bool write_in_flight_ = false;      // chunks or the last chunk
  bool last_chunk_ = false;           // the write in flight (or done) is the end of the stream
  std::vector<std::string> writing_;  // chunks of the write in flight
  size_t written_bytes_ = 0;          // their total size
  std::string framing_;               // their size lines
  std::vector<net::const_buffer> write_buffers_;

  // WebSocket (kUpgrading, kWebSocket).
  std::optional<http::request<http::empty_body>> upgrade_msg_;  // until the handshake
  std::optional<websocket::stream<ReadAhead<Stream>>> ws_;
  std::shared_ptr<DeviceStream> device_;
  std::shared_ptr<WsChannel> ws_channel_;
  WebSocketOptions ws_opts_;
  net::steady_timer ws_timer_;
  beast::flat_buffer ws_in_;
  std::optional<std::string> ws_pending_in_;  // a client message the device has not taken yet
  std::deque<std::string> ws_out_;            // device data to send, one message each
  std::optional<std::string> ws_end_;
  bool ws_write_in_flight_ = false;
  bool ws_ping_in_flight_ = false;
  bool ws_closing_ = false;
  std::chrono::steady_clock::time_point last_read_;
  std::chrono::steady_clock::time_point ws_write_started_;
  std::chrono::steady_clock::time_point ws_close_started_;
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

template <class Protocol, bool kTls = false>
class Listener final : public ListenerBase,
                       public std::enable_shared_from_this<Listener<Protocol, kTls>> {
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
    auto conn = std::make_shared<Connection<Protocol, kTls>>(state_, std::move(socket), peer_uid);
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

  // The HTTPS context, when some listener needs it.
  Status SetUpTls() {
    const auto& o = state_->options;
    if (std::none_of(o.listen.begin(), o.listen.end(), [](const ListenAddress& a) {
          return a.kind == ListenAddress::Kind::kHttps;
        })) {
      return Ok();
    }
    ASSIGN_OR_RETURN(state_->tls, MakeTlsContext(o.tls));
    return Ok();
  }

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
    // Deferred handlers still running finish here; their answers go nowhere.
    state_->blocking.Shutdown();
    // From now on ResponseStream::Write cannot post into the io_context (destroyed with us).
    state_->gate->CloseIo();
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
    if (a.kind == ListenAddress::Kind::kHttps) {
      listeners_.push_back(
          std::make_shared<Listener<tcp, true>>(ioc_, state_, std::move(acceptor), bound_.back()));
    } else {
      listeners_.push_back(
          std::make_shared<Listener<tcp>>(ioc_, state_, std::move(acceptor), bound_.back()));
    }
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
  if (o.blocking_threads < 1 || o.blocking_threads > 1024) {
    return bad("blocking_threads must be 1-1024");
  }
  if (o.stream_queue_chunks < 1 || o.stream_queue_bytes < 1) {
    return bad("stream_queue_chunks and stream_queue_bytes must be at least 1");
  }
  for (const ListenAddress& a : o.listen) {
    // Re-checks addresses built without Parse (e.g. a non-loopback kHttp).
    ASSIGN_OR_RETURN(ListenAddress parsed, ListenAddress::Parse(a.ToString()));
    if (parsed.kind == ListenAddress::Kind::kHttps &&
        (o.tls.cert_file.empty() || o.tls.key_file.empty())) {
      return MakeError(Code::kInvalid,
                       "listen " + a.ToString() + ": https needs a certificate and a key");
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
    RETURN_IF_ERROR(server->SetUpTls());
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
