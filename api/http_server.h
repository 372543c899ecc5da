// The HTTP listener of edgevirtd (Boost.Beast on Asio): plain HTTP/1.1 on unix sockets and on
// loopback TCP, with chunked streaming responses (the transport of Kubernetes watches). The
// Kubernetes API machinery (issue "KubeVirt API machinery") is built on top. HTTPS listeners
// (TLS 1.2+, ALPN http/1.1 only, optional client certificates) serve the same connections.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/stream.h"
#include "common/result.h"

namespace edgevirt::api {

// One `api.listen` entry: "unix:/run/edgevirt/edgevirtd.sock", "http://127.0.0.1:8080",
// "http://[::1]:8080", "https://0.0.0.0:8443". Plain HTTP is accepted on loopback addresses only;
// HTTPS on any address (it needs ServerOptions::tls).
struct ListenAddress {
  enum class Kind { kUnix, kHttp, kHttps };
  Kind kind = Kind::kUnix;
  std::string path;   // kUnix: an absolute path (at most 107 bytes, the sun_path limit)
  std::string host;   // kHttp/kHttps: a literal IPv4/IPv6 address (no brackets) or "localhost"
  uint16_t port = 0;  // 0 = pick a free port (tests)
  // "unix:/path", "http://127.0.0.1:8080", "http://[::1]:8080"; Parse(ToString()) round-trips.
  std::string ToString() const;

  // Accepts "unix:/abs/path" (also "unix:///abs/path"), "http://HOST:PORT" and
  // "https://HOST:PORT" where HOST is an IPv4 literal, a bracketed IPv6 literal or "localhost"
  // and PORT is 0-65535. kInvalid, with the reason, for anything else, and for plain http:// on
  // an address that is not loopback (127.0.0.0/8, ::1, localhost).
  static Result<ListenAddress> Parse(std::string_view text);
};

struct HttpRequest {
  std::string method;  // "GET"
  std::string target;  // raw request target: "/apis/kubevirt.io/v1?watch=true"
  std::string path;    // percent-decoded path without the query: "/apis/kubevirt.io/v1"
  std::string query;   // raw query string without '?'
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  // The peer's credentials on a unix socket (SO_PEERCRED); nullopt on TCP.
  std::optional<uint32_t> peer_uid;
  // True on an HTTPS listener.
  bool tls = false;
  // The client certificate of an HTTPS connection, when the client sent one and it verified
  // against ServerOptions::tls.client_ca_file (an unverifiable one fails the handshake).
  struct ClientCertificate {
    std::string common_name;                 // the subject's CN (the user name)
    std::vector<std::string> organizations;  // the subject's O values (the groups)
  };
  std::optional<ClientCertificate> client_certificate;

  // First value of a header (name case-insensitive), or empty.
  std::string_view Header(std::string_view name) const;
  // Value of a query parameter, percent-decoded ('+' is a space, as in Go's url.ParseQuery);
  // "" for a parameter without '=' ("?verbose"); nullopt if absent.
  std::optional<std::string> QueryParam(std::string_view name) const;
};

// The writing end of a chunked streaming response (a Kubernetes watch: one JSON event per line,
// flushed per event, open for minutes or hours). Thread-safe: any thread may call it, e.g. a
// store's committer thread from a watch callback, also while the server runs the `stream`
// callback. Holding it keeps no connection open: once its connection is gone it is a small
// object whose Write returns false, and it may outlive the server.
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  // Queues `chunk` as one HTTP chunk (typically one event line ending in '\n'). Chunks go out in
  // the order of the Write calls, each sent as soon as the previous write completes (never held
  // back waiting for more). Returns false, and queues nothing, once closed() is true, or when
  // queuing it would put more than ServerOptions::stream_queue_chunks chunks or
  // stream_queue_bytes bytes in the queue (counted until the kernel has taken them): the stream
  // is then cut (the connection closed without the last chunk, so the client sees an error) —
  // a slow client is never buffered without limit. The caller should stop writing on false. An
  // empty `chunk` is ignored (a chunk of size 0 would end the body); it returns !closed().
  virtual bool Write(std::string chunk) = 0;
  // Ends the response: what is queued is sent, then the last chunk, then the connection closes
  // (there is no keep-alive after a stream). Write returns false from now on. Idempotent; does
  // nothing once the stream is closed.
  virtual void Finish() = 0;
  // Registers `callback` to run exactly once when the stream ends for any reason: Finish done,
  // client gone (hang-up, reset, write_timeout), queue overflow, the `stream` callback threw,
  // or the server stopping. It runs on an io thread (an exception: if Stop had to abandon a
  // connection whose io thread never ran again, on the thread that destroys the server); if
  // the stream has already ended it runs at once, on the calling thread. Use it to release what
  // feeds the stream (e.g. a store watch); it must not block. It is destroyed right after it
  // ran, so it may capture this stream without making a cycle. Exceptions are logged and
  // swallowed.
  virtual void OnClosed(std::function<void()> callback) = 0;
  // True once Write would return false: Finish was called, the stream was cut or has ended, or
  // the server is stopping.
  virtual bool closed() const = 0;
};

// How the server runs an upgraded WebSocket (HttpResponse::websocket).
struct WebSocketOptions {
  // Echoed in Sec-WebSocket-Protocol when the client offers it ("plain.kubevirt.io"); empty:
  // no subprotocol is selected.
  std::string subprotocol;
  // A ping is sent this often (0: never).
  std::chrono::milliseconds ping_interval{1000};
  // The connection is closed (without a close frame) when nothing (a message, ping or pong)
  // arrived from the client for this long (0: no limit).
  std::chrono::milliseconds read_timeout{0};
  // The bound of the send queue: bytes from the device not yet written to the client. When it
  // is reached the device's on_data returns false; the device is resumed when half drained.
  size_t send_queue_bytes = 1 << 20;
  // Larger messages from the client close the connection with 1009.
  size_t max_message_bytes = 1 << 20;
};

struct HttpResponse {
  int status = 200;
  // Sent as given, except the ones the server owns: Content-Length, Transfer-Encoding, Date and
  // Connection are ignored (a "Connection: close" value makes the server close the connection
  // after this response). Headers with CR, LF or NUL, or invalid names, are dropped and logged.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  // Content-Type "text/plain; charset=utf-8".
  static HttpResponse Text(int status, std::string body);
  // Content-Type "application/json".
  static HttpResponse Json(int status, std::string body);
  // A Kubernetes `Status` failure object (Content-Type application/json):
  // {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":<message>,
  //  "reason":<reason>,"code":<status>}. `reason` is a Kubernetes StatusReason such as
  // "NotFound"; the message is JSON-escaped (invalid UTF-8 is replaced, never thrown on).
  static HttpResponse StatusError(int status, std::string_view reason, std::string_view message);

  // When set, the response is streamed: the server sends the status line and headers with
  // `Transfer-Encoding: chunked` and `Connection: close` (to an HTTP/1.0 client: no chunked
  // coding, the body ends with the connection), then calls `stream` once, on an io thread, with
  // the writing end. A non-empty `body` is sent as the first chunk. Read and idle timeouts do
  // not apply while streaming (write_timeout applies to each write); the connection closes when
  // the stream ends. The status must allow a body (200-599 but not 204 or 304), else the client
  // gets a 500 Status. `stream` is not called, only destroyed with what it captured, for HEAD
  // (the header is sent, nothing else), when the header cannot be sent (client gone), or when
  // the server began stopping (an empty body is sent); so set up what feeds the stream (a store
  // watch) inside `stream`, not in the handler.
  std::function<void(std::shared_ptr<ResponseStream>)> stream;

  // When set, this response is only a placeholder: the server calls `blocking` with the request
  // on one of its blocking threads (ServerOptions::blocking_threads) and sends what it returns
  // (which may itself stream, but may not be deferred again). For handlers that wait on I/O,
  // such as a write that returns once its store commit is durable: on an io thread such a wait
  // would stall every connection the thread serves and cap the number of writes that share one
  // commit at io_threads. No read timeout applies while it runs; if the connection closes
  // meanwhile the result is dropped. An exception escaping it is logged and answered with 500.
  using DeferredFn = std::function<HttpResponse(const HttpRequest&)>;

  // When set, the request is upgraded to a WebSocket (RFC 6455) connected to this stream; the
  // status, headers and body are ignored. Only for a request IsWebSocketUpgrade accepts (else the
  // stream is closed and the client gets a 400 Status); a bad handshake (no Sec-WebSocket-Key,
  // version other than 13) gets Beast's 400. After the 101 the server pumps: each binary
  // message from the client is one Stream::Write (the socket is not read while Write refuses,
  // until on_writable), text messages are ignored, pings answered; each on_data is one binary
  // message to the client, through a queue bounded by WebSocketOptions::send_queue_bytes.
  // Close codes: the client's close is answered and the stream closed; on_end("") → 1000; an
  // on_end reason containing "replaced" (a newer session took the device) → 1001 with the
  // reason, after the queued data (virtctl then stops reconnecting); any other reason → 1011
  // with the reason; server Stop → 1001.
  // The connection counts against max_connections. May come from a deferred handler too.
  std::shared_ptr<Stream> websocket;
  WebSocketOptions websocket_options;
  DeferredFn blocking;

  // A response that runs `fn` on a blocking thread (see `blocking`).
  static HttpResponse Deferred(DeferredFn fn);
};

// True for a WebSocket upgrade request: GET with "Connection: upgrade" and
// "Upgrade: websocket" (tokens, case-insensitive). Check it before opening a device stream.
bool IsWebSocketUpgrade(const HttpRequest& request);

// Runs on an io thread, concurrently for different connections (so it must be thread-safe), and
// sequentially for the requests of one connection. Must not block for long: work that waits
// (a durable write) is returned as HttpResponse::Deferred and runs on a blocking thread. An
// exception escaping it is caught, logged and answered with 500.
using Handler = std::function<HttpResponse(const HttpRequest&)>;

// The certificate of the HTTPS listeners (PEM files, read once by Start).
struct TlsOptions {
  std::string cert_file;  // the server certificate, optionally followed by its chain
  std::string key_file;   // its private key
  // When set, clients may present a certificate signed by a CA in this file (verified in the
  // handshake; HttpRequest::client_certificate). Clients without a certificate are accepted.
  std::string client_ca_file;
};

struct ServerOptions {
  std::vector<ListenAddress> listen;
  // Needed when `listen` has an https:// address: TLS 1.2 or later, ALPN "http/1.1" only (h2
  // is never negotiated). The handshake must complete within read_timeout.
  TlsOptions tls;
  int io_threads = 2;
  size_t max_body_bytes = 3 << 20;         // larger bodies: 413
  size_t max_header_bytes = 64 << 10;      // larger headers: 431
  size_t max_connections = 1024;           // further connections get a 503 and are closed at once
  std::chrono::seconds read_timeout{30};   // a request must arrive whole within this (slowloris)
  std::chrono::seconds idle_timeout{120};  // keep-alive connections idle longer are closed
  std::chrono::seconds write_timeout{30};  // a response must be taken by the client within this
  // The bound of one ResponseStream's queue (chunks accepted by Write and not yet taken by the
  // kernel); a Write that would exceed either cuts the stream.
  size_t stream_queue_chunks = 1024;
  size_t stream_queue_bytes = 16 << 20;
  // Threads that run deferred handlers (HttpResponse::blocking): the number of such requests in
  // progress at once; more wait in a queue.
  int blocking_threads = 64;
};

class HttpServer {
 public:
  // Binds every address (failing as a whole if any bind fails, naming the address), then serves
  // on `io_threads` threads. Unix socket files are created with mode 0600 (root-only) after
  // removing a stale socket file; a path that exists and is not a socket, or a socket another
  // process still listens on, is kAlreadyExists. "https://" without a usable certificate and
  // key in options.tls, a non-loopback "http://" or a bad option is kInvalid.
  static Result<std::unique_ptr<HttpServer>> Start(ServerOptions options, Handler handler);
  // Calls Stop with a grace of one second if it has not been called.
  virtual ~HttpServer() = default;

  // The addresses actually bound, with real ports when port 0 was asked ("http://127.0.0.1:43817").
  // "localhost" is bound (and reported) as 127.0.0.1.
  virtual std::vector<std::string> BoundAddresses() const = 0;
  // Stops accepting, closes idle connections at once, lets in-flight requests finish within
  // `grace` (their connections close after the response), ends streamed responses at once
  // (queued chunks not yet sent are dropped, the last chunk is sent if the client takes it
  // within `grace`; ResponseStream::Write returns false from the start of Stop), then closes
  // everything, joins the io threads and removes the unix socket files it created (unless they
  // were replaced meanwhile).
  // Idempotent and thread-safe; must not be called from the handler (an io thread): that call
  // is logged and ignored. A handler still running when `grace` ends delays the return until it
  // returns; its response may or may not reach the client before the connection is closed.
  virtual void Stop(std::chrono::milliseconds grace) = 0;
};

}  // namespace edgevirt::api
