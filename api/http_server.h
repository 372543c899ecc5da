// The HTTP listener of edgevirtd (Boost.Beast on Asio): plain HTTP/1.1 on unix sockets and on
// loopback TCP. The Kubernetes API machinery (issue "KubeVirt API machinery") is built on top;
// TLS, chunked watch streams and WebSocket upgrades extend this server later.
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
  std::string path;   // kUnix
  std::string host;   // kHttp/kHttps: a literal IPv4/IPv6 address or "localhost"
  uint16_t port = 0;  // 0 = pick a free port (tests)
  std::string ToString() const;

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
  // Value of a query parameter, percent-decoded; nullopt if absent.
  std::optional<std::string> QueryParam(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  static HttpResponse Text(int status, std::string body);
  static HttpResponse Json(int status, std::string body);
};

// Runs on an io thread; must not block for long (API handlers only touch the store).
using Handler = std::function<HttpResponse(const HttpRequest&)>;

struct ServerOptions {
  std::vector<ListenAddress> listen;
  int io_threads = 2;
  size_t max_body_bytes = 3 << 20;         // larger bodies: 413
  size_t max_header_bytes = 64 << 10;      // larger headers: 431
  size_t max_connections = 1024;           // further connections are closed at once
  std::chrono::seconds read_timeout{30};   // a request must arrive whole within this (slowloris)
  std::chrono::seconds idle_timeout{120};  // keep-alive connections idle longer are closed
};

class HttpServer {
 public:
  // Binds every address (failing as a whole if any bind fails, naming the address), then serves
  // on `io_threads` threads. Unix socket files are created with mode 0600 (root-only) after
  // removing a stale socket file; a path that exists and is not a socket is an error.
  static Result<std::unique_ptr<HttpServer>> Start(ServerOptions options, Handler handler);
  virtual ~HttpServer() = default;

  // The addresses actually bound, with real ports when port 0 was asked ("http://127.0.0.1:43817").
  virtual std::vector<std::string> BoundAddresses() const = 0;
  // Stops accepting, closes connections (in-flight requests finish within `grace`), joins the
  // io threads, removes unix socket files it created.
  virtual void Stop(std::chrono::milliseconds grace) = 0;
};

}  // namespace edgevirt::api
