#include "daemon/probe.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "api/http_server.h"
#include "common/fd.h"

namespace edgevirt::daemon {
namespace {

using Clock = std::chrono::steady_clock;

// Waits for `events` on fd until `deadline`.
Status WaitFor(int fd, short events, Clock::time_point deadline, std::string_view what) {
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return MakeError(Code::kTimeout, std::string(what) + ": timed out");
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left));
    if (r > 0) return Ok();
    if (r < 0 && errno != EINTR) return ErrnoError(what, errno);
  }
}

}  // namespace

Result<int> ProbeHttp(std::string_view address, std::string_view path,
                      std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  ASSIGN_OR_RETURN(api::ListenAddress addr, api::ListenAddress::Parse(address));
  const std::string where = "probe " + std::string(address);

  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_UNIX;
  if (addr.kind == api::ListenAddress::Kind::kUnix) {
    auto* un = reinterpret_cast<sockaddr_un*>(&ss);
    un->sun_family = AF_UNIX;
    if (addr.path.size() >= sizeof(un->sun_path)) {
      return MakeError(Code::kInvalid, where + ": socket path too long");
    }
    std::memcpy(un->sun_path, addr.path.c_str(), addr.path.size() + 1);
    len = sizeof(sockaddr_un);
  } else {
    std::string host = addr.host == "localhost" ? "127.0.0.1" : addr.host;
    // A wildcard listener is reached on loopback.
    if (host == "0.0.0.0") host = "127.0.0.1";
    if (host == "::") host = "::1";
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    auto* in4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (::inet_pton(AF_INET, host.c_str(), &in4->sin_addr) == 1) {
      family = in4->sin_family = AF_INET;
      in4->sin_port = htons(addr.port);
      len = sizeof(sockaddr_in);
    } else if (::inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) == 1) {
      family = in6->sin6_family = AF_INET6;
      in6->sin6_port = htons(addr.port);
      len = sizeof(sockaddr_in6);
    } else {
      return MakeError(Code::kInvalid, where + ": not an IP address: " + host);
    }
  }
  const bool https = addr.kind == api::ListenAddress::Kind::kHttps;

  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError(where + ": socket", errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0) {
    if (errno != EINPROGRESS && errno != EAGAIN) {
      Error e = ErrnoError(where + ": connect", errno);
      e.code = Code::kUnavailable;
      return e;
    }
    RETURN_IF_ERROR(WaitFor(fd.get(), POLLOUT, deadline, where + ": connect"));
    int err = 0;
    socklen_t err_len = sizeof(err);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_len);
    if (err != 0) {
      Error e = ErrnoError(where + ": connect", err);
      e.code = Code::kUnavailable;
      return e;
    }
  }

  const std::string request = "GET " + std::string(path) +
                              " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: edgevirtd-watchdog\r\n"
                              "Connection: close\r\n\r\n";
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      RETURN_IF_ERROR(WaitFor(fd.get(), POLLOUT, deadline, where + ": send"));
    } else {
      return ErrnoError(where + ": send", errno);
    }
  }

  // Only the status line matters: "HTTP/1.1 200 OK\r\n".
  std::string head;
  while (head.find("\r\n") == std::string::npos) {
    char buf[512];
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      head.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || (n < 0 && https && errno == ECONNRESET)) {
      // HTTPS: the plain request is not a TLS ClientHello, so an io thread fails the handshake
      // and closes the connection: that close is the answer (a hung server would not close).
      if (https && head.empty()) return 0;
      return MakeError(Code::kUnavailable, where + ": connection closed before a response");
    } else if (errno == EAGAIN || errno == EINTR) {
      RETURN_IF_ERROR(WaitFor(fd.get(), POLLIN, deadline, where + ": read"));
    } else {
      return ErrnoError(where + ": read", errno);
    }
    if (head.size() > 8192) break;
  }
  int status = 0;
  if (head.rfind("HTTP/1.", 0) != 0 || head.size() < 12 ||
      std::sscanf(head.c_str() + 9, "%3d", &status) != 1) {
    return MakeError(Code::kInternal, where + ": malformed status line");
  }
  return status;
}

}  // namespace edgevirt::daemon
