// virtctl_pf_stdio: what `virtctl port-forward --stdio=true TARGET PORT` (v1.0) does, for tests
// and for hosts without virtctl. `virtctl ssh --local-ssh` runs OpenSSH with
// `-o ProxyCommand=virtctl port-forward --stdio=true vmi/NAME.NAMESPACE 22`; this tool takes
// virtctl's place there:
//
//   ssh -o 'ProxyCommand=virtctl_pf_stdio --server=http://127.0.0.1:8080 port-forward
//        --stdio=true vmi/NAME.NAMESPACE 22' root@vmi/NAME.NAMESPACE
//
// One WebSocket (subprotocol plain.kubevirt.io) to
// /apis/subresources.kubevirt.io/v1/namespaces/NAMESPACE/{virtualmachineinstances,
// virtualmachines}/NAME/portforward/PORT/PROTOCOL; stdin goes out as binary messages, binary
// messages come out on stdout; it exits when either side ends (0), or with 1 and the server's
// Status on stderr when the upgrade is refused. TARGET is TYPE/NAME.NAMESPACE (v1.0's form),
// TYPE/NAME/NAMESPACE or TYPE/NAME (namespace "default"); TYPE is vm(s), vmi(s),
// virtualmachine(s) or virtualmachineinstance(s). PORT is [tcp/|udp/][LOCAL:]REMOTE as virtctl
// takes it (only the remote port matters for stdio). The server is --server URL
// (http://HOST:PORT or unix:/PATH), else $EDGEVIRT_SERVER; --token TOKEN sends a bearer token.
// stdin and stdout may be anything: those that cannot be polled (regular files, /dev/null) are
// relayed through a pipe by a thread. As virtctl, it ends the stream as soon as stdin ends,
// without waiting for the answer.
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/websocket_client.h"

namespace {

struct Target {
  std::string plural;
  std::string name;
  std::string ns = "default";
};

std::optional<std::string> Plural(std::string kind) {
  for (auto& c : kind) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (kind == "vm" || kind == "vms" || kind == "virtualmachine" || kind == "virtualmachines") {
    return "virtualmachines";
  }
  if (kind == "vmi" || kind == "vmis" || kind == "virtualmachineinstance" ||
      kind == "virtualmachineinstances") {
    return "virtualmachineinstances";
  }
  return std::nullopt;
}

std::optional<Target> ParseTarget(const std::string& arg) {
  const size_t slash = arg.find('/');
  if (slash == std::string::npos) return std::nullopt;
  auto plural = Plural(arg.substr(0, slash));
  if (!plural) return std::nullopt;
  Target t;
  t.plural = *plural;
  std::string rest = arg.substr(slash + 1);
  if (size_t s = rest.find('/'); s != std::string::npos) {
    t.name = rest.substr(0, s);
    t.ns = rest.substr(s + 1);
  } else if (size_t d = rest.find('.'); d != std::string::npos) {
    t.name = rest.substr(0, d);  // v1.0: TYPE/NAME.NAMESPACE
    t.ns = rest.substr(d + 1);
  } else {
    t.name = rest;
  }
  if (t.name.empty() || t.ns.empty() || t.ns.find('/') != std::string::npos) return std::nullopt;
  return t;
}

// "[tcp/|udp/][LOCAL:]REMOTE" → "REMOTE/PROTOCOL" (virtctl sends the protocol, tcp by default).
std::optional<std::string> ParsePort(std::string arg) {
  std::string protocol = "tcp";
  if (size_t s = arg.find('/'); s != std::string::npos) {
    protocol = arg.substr(0, s);
    arg = arg.substr(s + 1);
    if (protocol != "tcp" && protocol != "udp") return std::nullopt;
  }
  if (size_t c = arg.find(':'); c != std::string::npos) arg = arg.substr(c + 1);
  if (arg.empty() || arg.size() > 5) return std::nullopt;
  for (char c : arg) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  const int port = std::stoi(arg);
  if (port < 1 || port > 65535) return std::nullopt;
  return std::to_string(port) + "/" + protocol;
}

// Whether epoll takes `fd` (Pump needs that; regular files and /dev/null are refused).
bool Pollable(int fd) {
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return false;
  epoll_event ev{};
  ev.events = EPOLLIN;
  const bool ok = ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0;
  ::close(ep);
  return ok;
}

// Copies `from` to `to` until end of file or an error, then closes `close_after` (-1: none).
void Copy(int from, int to, int close_after) {
  char buf[32 * 1024];
  for (;;) {
    ssize_t n = ::read(from, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::write(to, buf + off, static_cast<size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        n = -1;
        break;
      }
      off += w;
    }
    if (n < 0) break;
  }
  if (close_after >= 0) ::close(close_after);
}

int Usage() {
  std::fprintf(stderr,
               "usage: virtctl_pf_stdio [--server=URL] [--token=TOKEN] port-forward --stdio=true "
               "TYPE/NAME[.NAMESPACE] [PROTOCOL/][LOCAL:]PORT\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // stdout is ssh's pipe: when ssh is gone a write must fail, not kill us silently.
  ::signal(SIGPIPE, SIG_IGN);
  std::string server = std::getenv("EDGEVIRT_SERVER") ? std::getenv("EDGEVIRT_SERVER") : "";
  std::string token;
  std::vector<std::string> args;
  bool stdio = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const std::string& flag) -> std::optional<std::string> {
      if (a.rfind(flag + "=", 0) == 0) return a.substr(flag.size() + 1);
      if (a == flag && i + 1 < argc) return std::string(argv[++i]);
      return std::nullopt;
    };
    if (auto v = value("--server")) {
      server = *v;
    } else if (auto s = value("-s")) {
      server = *s;
    } else if (auto t = value("--token")) {
      token = *t;
    } else if (a == "--stdio" || a == "--stdio=true") {
      stdio = true;
    } else if (a.rfind("-", 0) == 0) {
      std::fprintf(stderr, "virtctl_pf_stdio: unknown flag %s\n", a.c_str());
      return Usage();
    } else {
      args.push_back(a);
    }
  }
  if (args.size() != 3 || args[0] != "port-forward" || !stdio || server.empty()) return Usage();
  auto target = ParseTarget(args[1]);
  auto port = ParsePort(args[2]);
  if (!target || !port) return Usage();

  edgevirt::testing::WebSocketClient::Headers headers = {
      {"User-Agent", "virtctl/v1.0.0 (linux/amd64)"}};
  if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
  const std::string path = "/apis/subresources.kubevirt.io/v1/namespaces/" + target->ns + "/" +
                           target->plural + "/" + target->name + "/portforward/" + *port;
  edgevirt::testing::WebSocketClient ws;
  if (!ws.Connect(server, path, headers)) {
    // virtctl prints the API's error; ssh shows our stderr.
    std::fprintf(stderr, "virtctl_pf_stdio: %s: %s (HTTP %d) %s\n", path.c_str(),
                 ws.error().c_str(), ws.status(), ws.body().c_str());
    return 1;
  }
  int in_fd = STDIN_FILENO;
  int out_fd = STDOUT_FILENO;
  if (!Pollable(STDIN_FILENO)) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return 1;
    // Detached: it may still be reading stdin when the stream ends; exit ends it.
    std::thread([p] { Copy(STDIN_FILENO, p[1], p[1]); }).detach();
    in_fd = p[0];
  }
  std::thread out_relay;
  if (!Pollable(STDOUT_FILENO)) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return 1;
    out_relay = std::thread([p] { Copy(p[0], STDOUT_FILENO, p[0]); });
    out_fd = p[1];
  }
  using PumpEnd = edgevirt::testing::WebSocketClient::PumpEnd;
  const PumpEnd end = ws.Pump(in_fd, out_fd);
  if (out_relay.joinable()) {
    ::close(out_fd);  // the relay drains what Pump wrote, then ends
    out_relay.join();
  }
  if (end == PumpEnd::kNotReady) {
    std::fprintf(stderr, "virtctl_pf_stdio: %s\n", ws.error().c_str());
    return 1;
  }
  if (end == PumpEnd::kPeerClosed && ws.close_code() != 0 && ws.close_code() != 1000) {
    std::fprintf(stderr, "virtctl_pf_stdio: the server closed the stream: %d %s\n", ws.close_code(),
                 ws.close_reason().c_str());
  }
  return 0;
}
