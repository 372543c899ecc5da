// The HTTP listener of edgevirtd (Boost.Beast on Asio): plain HTTP/1.1 on unix sockets and on
// loopback TCP. The Kubernetes API machinery (issue "KubeVirt API machinery") is built on top;
// TLS, chunked watch streams and WebSocket upgrades extend this server later (see README.md,
// "Extension points").
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

#include "common/result.h"

namespace edgevirt::api {

// One `api.listen` entry: "unix:/run/edgevirt/edgevirtd.sock", "http://127.0.0.1:8080",
// "http://[::1]:8080". Plain HTTP is accepted on loopback addresses only; "https://" is parsed
// but refused until TLS exists.
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

  // First value of a header (name case-insensitive), or empty.
  std::string_view Header(std::string_view name) const;
  // Value of a query parameter, percent-decoded ('+' is a space, as in Go's url.ParseQuery);
  // "" for a parameter without '=' ("?verbose"); nullopt if absent.
  std::optional<std::string> QueryParam(std::string_view name) const;
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
};

// Runs on an io thread, concurrently for different connections (so it must be thread-safe), and
// sequentially for the requests of one connection. Must not block for long (API handlers only
// touch the store). An exception escaping it is caught, logged and answered with 500.
using Handler = std::function<HttpResponse(const HttpRequest&)>;

struct ServerOptions {
  std::vector<ListenAddress> listen;
  int io_threads = 2;
  size_t max_body_bytes = 3 << 20;         // larger bodies: 413
  size_t max_header_bytes = 64 << 10;      // larger headers: 431
  size_t max_connections = 1024;           // further connections get a 503 and are closed at once
  std::chrono::seconds read_timeout{30};   // a request must arrive whole within this (slowloris)
  std::chrono::seconds idle_timeout{120};  // keep-alive connections idle longer are closed
  std::chrono::seconds write_timeout{30};  // a response must be taken by the client within this
};

class HttpServer {
 public:
  // Binds every address (failing as a whole if any bind fails, naming the address), then serves
  // on `io_threads` threads. Unix socket files are created with mode 0600 (root-only) after
  // removing a stale socket file; a path that exists and is not a socket, or a socket another
  // process still listens on, is kAlreadyExists. "https://" is kUnsupported ("TLS is not
  // available yet"); a non-loopback "http://" or a bad option is kInvalid.
  static Result<std::unique_ptr<HttpServer>> Start(ServerOptions options, Handler handler);
  // Calls Stop with a grace of one second if it has not been called.
  virtual ~HttpServer() = default;

  // The addresses actually bound, with real ports when port 0 was asked ("http://127.0.0.1:43817").
  // "localhost" is bound (and reported) as 127.0.0.1.
  virtual std::vector<std::string> BoundAddresses() const = 0;
  // Stops accepting, closes idle connections at once, lets in-flight requests finish within
  // `grace` (their connections close after the response), then closes everything, joins the io
  // threads and removes the unix socket files it created (unless they were replaced meanwhile).
  // Idempotent and thread-safe; must not be called from the handler (an io thread): that call
  // is logged and ignored. A handler still running when `grace` ends delays the return until it
  // returns; its response may or may not reach the client before the connection is closed.
  virtual void Stop(std::chrono::milliseconds grace) = 0;
};

}  // namespace edgevirt::api
