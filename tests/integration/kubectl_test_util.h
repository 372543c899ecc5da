// Helpers for the tests that drive the real edgevirtd with the real kubectl and with plain
// HTTP: a daemon started on a temp state directory (port 0, the bound port read from the
// READY status it sends to NOTIFY_SOCKET), a kubectl with a private HOME, cache directory and
// kubeconfig, an HTTP/1.1 client (Content-Length and chunked bodies) that is safe to use from
// several threads, and a watch stream reader.
//
// Nothing here touches host paths: the daemon gets a config file of its own (stateDir, runDir,
// listen address and log target all inside the test's temp directory).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/fd.h"
#include "tests/integration/daemon_test_util.h"
#include "tests/support/catch.h"
#include "tests/support/cgroups.h"
#include "tests/support/net.h"

namespace edgevirt::testing {

using Json = nlohmann::json;
using Env = std::map<std::string, std::optional<std::string>>;

inline std::filesystem::path Testdata(const std::string& name) {
  return std::filesystem::path(EDGEVIRT_SOURCE_DIR) / "tests/integration/testdata" / name;
}

// The kubectl under test: $EDGEVIRT_KUBECTL, else /usr/bin/kubectl (1.32 on the CI machines).
inline std::string KubectlPath() {
  const char* p = std::getenv("EDGEVIRT_KUBECTL");
  return p && *p ? std::string(p) : std::string("/usr/bin/kubectl");
}

inline Json ParseJson(const std::string& text) {
  Json j = Json::parse(text, nullptr, false);
  INFO("not JSON: " << text.substr(0, 2000));
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

// Whitespace-separated fields of every non-empty line (kubectl's table output).
inline std::vector<std::vector<std::string>> Lines(const std::string& text) {
  std::vector<std::vector<std::string>> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::vector<std::string> row;
    for (std::string f; fields >> f;) row.push_back(f);
    if (!row.empty()) out.push_back(std::move(row));
  }
  return out;
}

// The row whose first field is `first` (or nullopt).
inline std::optional<std::vector<std::string>> RowOf(const std::string& table,
                                                     const std::string& first) {
  for (auto& row : Lines(table)) {
    if (row[0] == first) return row;
  }
  return std::nullopt;
}

// True if every member of `expected` is in `actual` with a value that is a subset in turn
// (arrays: same length, element-wise). Server-side defaults may add members, never change the
// ones the client sent.
inline bool IsSubset(const Json& expected, const Json& actual) {
  if (expected.is_object()) {
    if (!actual.is_object()) return false;
    for (auto it = expected.begin(); it != expected.end(); ++it) {
      if (!actual.contains(it.key()) || !IsSubset(it.value(), actual[it.key()])) return false;
    }
    return true;
  }
  if (expected.is_array()) {
    if (!actual.is_array() || actual.size() != expected.size()) return false;
    for (size_t i = 0; i < expected.size(); ++i) {
      if (!IsSubset(expected[i], actual[i])) return false;
    }
    return true;
  }
  return expected == actual;
}

// resourceVersion as the number edgevirt makes of it (one global counter); 0 if it is not one.
inline uint64_t Rv(const Json& object_or_list) {
  const Json* rv = nullptr;
  if (object_or_list.contains("metadata") &&
      object_or_list["metadata"].contains("resourceVersion")) {
    rv = &object_or_list["metadata"]["resourceVersion"];
  }
  if (!rv || !rv->is_string()) return 0;
  const std::string& s = rv->get_ref<const std::string&>();
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) {
    return 0;
  }
  return std::stoull(s);
}

// ---------------------------------------------------------------------------------------------
// HTTP client. No Catch macros inside: it is called from worker threads.

struct HttpResult {
  bool ok = false;    // a complete response arrived
  std::string error;  // why not
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names; repeated ones joined by "\n"
  std::string body;
};

namespace detail {

inline UniqueFd ConnectLoopback(const std::string& base_url, std::string* error) {
  // base_url: http://127.0.0.1:PORT
  const std::string prefix = "http://127.0.0.1:";
  if (base_url.rfind(prefix, 0) != 0) {
    *error = "unsupported URL " + base_url;
    return UniqueFd();
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(base_url.substr(prefix.size()))));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    *error = std::string("socket: ") + std::strerror(errno);
    return UniqueFd();
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    *error = std::string("connect: ") + std::strerror(errno);
    return UniqueFd();
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

// Reads what is available within `deadline` into `buf`; false on EOF, error or timeout.
inline bool ReadSome(int fd, std::string& buf, Clock::time_point deadline, bool* eof) {
  *eof = false;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return false;
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(left.count()));
  if (r <= 0) return false;
  char tmp[65536];
  ssize_t n = ::recv(fd, tmp, sizeof(tmp), 0);
  if (n == 0) *eof = true;
  if (n <= 0) return false;
  buf.append(tmp, static_cast<size_t>(n));
  return true;
}

// Incremental decoder of the chunked transfer coding.
class Dechunker {
 public:
  // Feeds raw bytes; appends decoded payload to `out`. False on a malformed stream.
  bool Feed(std::string& raw, std::string& out) {
    for (;;) {
      if (done_) return true;
      if (remaining_ == 0) {
        if (need_crlf_) {
          if (raw.size() < 2) return true;
          if (raw.compare(0, 2, "\r\n") != 0) return false;
          raw.erase(0, 2);
          need_crlf_ = false;
        }
        auto eol = raw.find("\r\n");
        if (eol == std::string::npos) return true;
        size_t size = std::strtoul(raw.substr(0, eol).c_str(), nullptr, 16);
        raw.erase(0, eol + 2);
        if (size == 0) {
          done_ = true;
          return true;
        }
        remaining_ = size;
      }
      size_t take = std::min(remaining_, raw.size());
      if (take == 0) return true;
      out.append(raw, 0, take);
      raw.erase(0, take);
      remaining_ -= take;
      if (remaining_ == 0) need_crlf_ = true;
    }
  }
  bool done() const { return done_; }

 private:
  size_t remaining_ = 0;
  bool need_crlf_ = false;
  bool done_ = false;
};

inline bool ParseHead(const std::string& head, HttpResult* r) {
  std::istringstream in(head);
  std::string line;
  if (!std::getline(in, line) || line.rfind("HTTP/1.", 0) != 0 || line.size() < 12) return false;
  r->status = std::atoi(line.c_str() + 9);
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    auto& slot = r->headers[name];
    slot = slot.empty() ? value : slot + "\n" + value;
  }
  return true;
}

}  // namespace detail

// One request on a fresh connection (Connection: close).
inline HttpResult Http(const std::string& base_url, const std::string& method,
                       const std::string& path, const std::string& body = "",
                       const std::string& content_type = "application/json",
                       std::chrono::milliseconds timeout = std::chrono::seconds(10),
                       const std::vector<std::string>& extra_headers = {}) {
  HttpResult r;
  UniqueFd fd = detail::ConnectLoopback(base_url, &r.error);
  if (!fd.valid()) return r;
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  bool accept = false;
  for (const auto& h : extra_headers) {
    req += h + "\r\n";
    accept |= h.rfind("Accept:", 0) == 0;
  }
  if (!accept) req += "Accept: application/json\r\n";
  if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") {
    // An empty content_type sends none (virtctl's subresource PUTs carry no Content-Type).
    if (!content_type.empty()) req += "Content-Type: " + content_type + "\r\n";
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(fd.get(), req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      r.error = std::string("send: ") + std::strerror(errno);
      return r;
    }
    sent += static_cast<size_t>(n);
  }
  const auto deadline = Clock::now() + timeout;
  std::string raw;
  bool eof = false;
  size_t head_end;
  while ((head_end = raw.find("\r\n\r\n")) == std::string::npos) {
    if (!detail::ReadSome(fd.get(), raw, deadline, &eof)) {
      r.error = eof ? "connection closed before the response head" : "timeout/error reading head";
      return r;
    }
  }
  if (!detail::ParseHead(raw.substr(0, head_end), &r)) {
    r.error = "malformed response head";
    return r;
  }
  raw.erase(0, head_end + 4);
  if (method == "HEAD" || r.status == 204 || r.status == 304) {
    r.ok = true;
    return r;
  }
  auto te = r.headers.find("transfer-encoding");
  if (te != r.headers.end() && te->second.find("chunked") != std::string::npos) {
    detail::Dechunker d;
    for (;;) {
      if (!d.Feed(raw, r.body)) {
        r.error = "malformed chunked body";
        return r;
      }
      if (d.done()) break;
      if (!detail::ReadSome(fd.get(), raw, deadline, &eof)) {
        r.error = "chunked body cut short";
        return r;
      }
    }
  } else if (auto cl = r.headers.find("content-length"); cl != r.headers.end()) {
    size_t want = std::stoul(cl->second);
    while (raw.size() < want) {
      if (!detail::ReadSome(fd.get(), raw, deadline, &eof)) {
        r.error = "body cut short";
        return r;
      }
    }
    r.body = raw.substr(0, want);
  } else {
    while (detail::ReadSome(fd.get(), raw, deadline, &eof)) {
    }
    if (!eof) {
      r.error = "timeout reading a body delimited by the close";
      return r;
    }
    r.body = raw;
  }
  r.ok = true;
  return r;
}

// A watch (GET ...?watch=true): reads newline-delimited JSON events as they arrive.
class WatchStream {
 public:
  WatchStream(const std::string& base_url, const std::string& path,
              std::chrono::milliseconds head_timeout = std::chrono::seconds(10)) {
    fd_ = detail::ConnectLoopback(base_url, &error_);
    if (!fd_.valid()) return;
    std::string req =
        "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n";
    if (::send(fd_.get(), req.data(), req.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(req.size())) {
      error_ = "send failed";
      return;
    }
    const auto deadline = Clock::now() + head_timeout;
    size_t head_end;
    bool eof = false;
    while ((head_end = raw_.find("\r\n\r\n")) == std::string::npos) {
      if (!detail::ReadSome(fd_.get(), raw_, deadline, &eof)) {
        error_ = "no response head";
        return;
      }
    }
    if (!detail::ParseHead(raw_.substr(0, head_end), &head_)) {
      error_ = "malformed head";
      return;
    }
    raw_.erase(0, head_end + 4);
    auto te = head_.headers.find("transfer-encoding");
    chunked_ = te != head_.headers.end() && te->second.find("chunked") != std::string::npos;
    started_ = true;
  }

  bool started() const { return started_; }
  const std::string& error() const { return error_; }
  int status() const { return head_.status; }
  const std::map<std::string, std::string>& headers() const { return head_.headers; }

  // The next event line within `timeout`, parsed; nullopt on timeout or end of stream.
  std::optional<Json> Next(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      // Decode what is buffered first: events often arrive in the same read as the head, or
      // several in one read, and must not wait for bytes that may never come.
      if (chunked_) {
        if (!raw_.empty() && !dechunk_.Feed(raw_, data_)) {
          error_ = "malformed chunked stream";
          ended_ = true;
        }
        if (dechunk_.done()) ended_ = true;
      } else {
        data_ += raw_;
        raw_.clear();
      }
      auto nl = data_.find('\n');
      if (nl != std::string::npos) {
        std::string line = data_.substr(0, nl);
        data_.erase(0, nl + 1);
        if (line.empty() || line == "\r") continue;
        Json j = Json::parse(line, nullptr, false);
        if (j.is_discarded()) {
          error_ = "not a JSON event line: " + line.substr(0, 500);
          return std::nullopt;
        }
        return j;
      }
      if (ended_) return std::nullopt;
      bool eof = false;
      if (!detail::ReadSome(fd_.get(), raw_, deadline, &eof)) {
        if (!eof) return std::nullopt;  // timeout
        ended_ = true;                  // decode what came before the end, then stop
      }
    }
  }
  bool ended() const { return ended_; }

 private:
  UniqueFd fd_;
  std::string error_;
  HttpResult head_;
  bool started_ = false;
  bool chunked_ = false;
  bool ended_ = false;
  std::string raw_;
  std::string data_;
  detail::Dechunker dechunk_;
};

// ---------------------------------------------------------------------------------------------
// The daemon.

// edgevirtd on `dir` (state in dir/state-root, runtime files in dir/run), listening on
// http://127.0.0.1:<free port>. Start() may be called again after Kill()/Stop(): same state.
class EdgevirtDaemon {
 public:
  // `api_config`: more keys of the `api:` section, indented by two spaces ("  ioThreads: 4\n");
  // it follows the `listen` list directly, so items indented by four ("    - unix:/x.sock\n")
  // add listeners (url() stays the loopback one); `extra_config`: more top-level YAML (e.g. a
  // `store:` section).
  explicit EdgevirtDaemon(std::filesystem::path dir, const std::string& api_config = "",
                          const std::string& extra_config = "")
      : dir_(std::move(dir)), cgroups_(dir_) {
    // VMs get NICs on a bridge the daemon makes, with nft rules and dnsmasq: in a network
    // namespace of this test process, never the machine's.
    REQUIRE(EnterPrivateNetns() == 0);
    std::filesystem::create_directories(dir_);
    config_ = dir_ / "edgevirtd.yaml";
    WriteFile(config_,
              "stateDir: " + (dir_ / "state-root").string() +
                  "\n"
                  "runDir: " +
                  (dir_ / "run").string() +
                  "\n"
                  "api:\n"
                  "  listen:\n"
                  "    - http://127.0.0.1:0\n" +
                  api_config +
                  // Plain HTTP on loopback without credentials: these tests drive the API, not
                  // its authentication (tests/integration/kubectl_auth_test.cc does that).
                  "  auth:\n"
                  "    plainHttp: none\n"
                  "log:\n"
                  "  level: info\n"
                  "  target: stderr\n"
                  "shutdown:\n"
                  "  timeout: 10s\n" +
                  (extra_config.find("cgroups:") == std::string::npos ? cgroups_.Config() : "") +
                  extra_config);
  }

  // Starts the daemon and waits for READY=1 (at most 30 s); url() is then its address.
  void Start() {
    REQUIRE((!child_ || !child_->Running()));
    ++starts_;
    notify_ = std::make_unique<NotifySocket>(dir_ / ("notify-" + std::to_string(starts_)));
    Env env = {{"NOTIFY_SOCKET", notify_->path().string()},
               {"WATCHDOG_USEC", std::nullopt},
               {"WATCHDOG_PID", std::nullopt},
               {"LISTEN_FDS", std::nullopt},
               {"LISTEN_PID", std::nullopt}};
    for (const auto& [k, v] : extra_env_) env[k] = v;
    child_ = std::make_unique<Child>(
        std::vector<std::string>{EdgevirtdPath(), "--config", config_.string()}, env, dir_,
        "edgevirtd-" + std::to_string(starts_));
    const bool ready = notify_->WaitFor("READY=1", std::chrono::seconds(30));
    INFO("edgevirtd did not become ready; stderr:\n" << child_->Stderr());
    REQUIRE(ready);
    url_.clear();
    for (const auto& s : notify_->StartingWith("STATUS=Serving on ")) {
      auto at = s.find("http://127.0.0.1:");
      if (at != std::string::npos) url_ = s.substr(at, s.find_first_of(", ", at) - at);
    }
    REQUIRE_FALSE(url_.empty());
    REQUIRE(url_ != "http://127.0.0.1:0");
  }

  void Kill() {
    if (!child_ || !child_->Running()) return;
    child_->Signal(SIGKILL);
    REQUIRE(child_->Wait(std::chrono::seconds(10)).has_value());
  }

  // SIGTERM; the exit code.
  // The daemon's dnsmasq outlives it (as on a host); a test's daemon takes it along, so the
  // next daemon of the same test process (same network namespace) can bind the bridge's
  // address.
  ~EdgevirtDaemon() {
    child_.reset();
    // A failed REQUIRE unwinds through here before the temp directory goes: show what the last
    // daemons said (ctest --output-on-failure keeps it), e.g. why one refused connections.
    if (std::uncaught_exceptions() > 0) {
      for (int i = std::max(1, starts_ - 1); i <= starts_; ++i) {
        const std::string err = ReadFile(dir_ / ("edgevirtd-" + std::to_string(i) + ".stderr"));
        const size_t from = err.size() > 16384 ? err.size() - 16384 : 0;
        std::cerr << "---- edgevirtd start " << i << " stderr (last " << err.size() - from
                  << " bytes) ----\n"
                  << err.substr(from) << "\n";
      }
    }
    const std::string conf = "--conf-file=" + (dir_ / "run" / "net" / "dnsmasq.conf").string();
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string pid = e.path().filename().string();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      std::string cmd = ReadFile(e.path() / "cmdline");
      std::replace(cmd.begin(), cmd.end(), '\0', ' ');
      if (cmd.find(conf + " ") != std::string::npos) ::kill(std::stoi(pid), SIGKILL);
    }
  }
  EdgevirtDaemon(const EdgevirtDaemon&) = delete;
  EdgevirtDaemon& operator=(const EdgevirtDaemon&) = delete;

  int Stop() {
    if (!child_) return -1;
    if (child_->Running()) child_->Signal(SIGTERM);
    auto code = child_->Wait(std::chrono::seconds(20));
    REQUIRE(code.has_value());
    return *code;
  }

  bool Running() { return child_ && child_->Running(); }
  // Environment for the next Start()s (nullopt: unset), e.g. EDGEVIRT_FAULT_POINT.
  void SetEnv(const std::string& key, std::optional<std::string> value) {
    extra_env_[key] = std::move(value);
  }
  // Waits for the process to end by itself (a fault point); false if it still runs.
  bool WaitExit(std::chrono::milliseconds timeout) {
    return child_ && child_->Wait(timeout).has_value();
  }
  pid_t pid() const { return child_ ? child_->pid() : -1; }
  const std::string& url() const { return url_; }
  std::string Stderr() const { return child_ ? child_->Stderr() : std::string(); }
  std::filesystem::path state_dir() const { return dir_ / "state-root"; }
  std::filesystem::path run_dir() const { return dir_ / "run"; }
  const TestCgroups& cgroups() const { return cgroups_; }

 private:
  std::filesystem::path dir_;
  // The daemon's private cgroups.root and cgroups.bpfRoot, removed when the test ends (after
  // the daemon: members are destroyed in reverse order).
  TestCgroups cgroups_;
  std::filesystem::path config_;
  std::unique_ptr<Child> child_;
  std::unique_ptr<NotifySocket> notify_;
  std::map<std::string, std::optional<std::string>> extra_env_;
  std::string url_;
  int starts_ = 0;
};

// ---------------------------------------------------------------------------------------------
// kubectl.

struct KubectlResult {
  int code = -1;
  std::string out;
  std::string err;
};

// kubectl with its own HOME, discovery/OpenAPI cache directory and kubeconfig (context
// "edgevirt", namespace "default", no credentials), so nothing leaks in from or out to the
// user's ~/.kube.
class Kubectl {
 public:
  explicit Kubectl(std::filesystem::path dir) : dir_(std::move(dir)) {
    std::filesystem::create_directories(dir_ / "home");
    std::filesystem::create_directories(dir_ / "cache");
    std::filesystem::create_directories(dir_ / "out");
  }

  void SetServer(const std::string& url) {
    server_ = url;
    WriteFile(kubeconfig(),
              "apiVersion: v1\n"
              "kind: Config\n"
              "clusters:\n"
              "- name: edgevirt\n"
              "  cluster:\n"
              "    server: " +
                  url +
                  "\n"
                  "contexts:\n"
                  "- name: edgevirt\n"
                  "  context:\n"
                  "    cluster: edgevirt\n"
                  "    namespace: default\n"
                  "    user: edgevirt\n"
                  "current-context: edgevirt\n"
                  "users:\n"
                  "- name: edgevirt\n"
                  "  user: {}\n");
  }

  std::filesystem::path kubeconfig() const { return dir_ / "kubeconfig"; }
  const std::string& server() const { return server_; }

  Env BaseEnv(const Env& extra = {}) const {
    Env env = {{"HOME", (dir_ / "home").string()},
               {"KUBECONFIG", kubeconfig().string()},
               {"KUBECACHEDIR", (dir_ / "cache").string()},
               {"KUBERNETES_SERVICE_HOST", std::nullopt},
               {"KUBERNETES_SERVICE_PORT", std::nullopt},
               {"KUBE_EDITOR", std::nullopt},
               {"EDITOR", std::nullopt},
               {"KUBECTL_EXTERNAL_DIFF", std::nullopt},
               {"http_proxy", std::nullopt},
               {"https_proxy", std::nullopt},
               {"HTTP_PROXY", std::nullopt},
               {"HTTPS_PROXY", std::nullopt},
               {"ALL_PROXY", std::nullopt},
               {"no_proxy", std::nullopt},
               {"NO_PROXY", std::nullopt},
               {"LANG", "C"},
               {"LC_ALL", "C"}};
    for (const auto& [k, v] : extra) env[k] = v;
    return env;
  }

  // Starts kubectl without waiting (for `get -w`, concurrent applies).
  std::unique_ptr<Child> Start(const std::vector<std::string>& args, const Env& extra = {}) {
    std::vector<std::string> argv{KubectlPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    return std::make_unique<Child>(argv, BaseEnv(extra), dir_ / "out",
                                   "kubectl-" + std::to_string(++runs_));
  }

  // Runs kubectl to completion (SIGKILL after `timeout`, which fails the test).
  KubectlResult Run(const std::vector<std::string>& args,
                    std::chrono::milliseconds timeout = std::chrono::seconds(30),
                    const Env& extra = {}) {
    auto child = Start(args, extra);
    auto code = child->Wait(timeout);
    KubectlResult r;
    r.out = child->Stdout();
    r.err = child->Stderr();
    std::string cmd = "kubectl";
    for (const auto& a : args) cmd += " " + a;
    INFO(cmd << " did not finish within " << timeout.count() << " ms\nstdout:\n"
             << r.out << "\nstderr:\n"
             << r.err);
    REQUIRE(code.has_value());
    r.code = *code;
    return r;
  }

 private:
  std::filesystem::path dir_;
  std::string server_;
  int runs_ = 0;
};

// A daemon, a kubectl pointed at it, and a temp directory for both: the usual fixture.
struct KubectlEnv {
  explicit KubectlEnv(const std::string& prefix)
      : tmp(prefix), daemon(tmp / "daemon"), kubectl(tmp / "kubectl") {
    daemon.Start();
    kubectl.SetServer(daemon.url());
  }
  std::string Url() const { return daemon.url(); }

  TempDir tmp;
  EdgevirtDaemon daemon;
  Kubectl kubectl;
};

inline std::string Describe(const KubectlResult& r) {
  return "exit " + std::to_string(r.code) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// `kubectl args...` that must exit 0.
inline KubectlResult MustRun(Kubectl& k, const std::vector<std::string>& args,
                             std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  KubectlResult r = k.Run(args, timeout);
  std::string cmd = "kubectl";
  for (const auto& a : args) cmd += " " + a;
  INFO(cmd << "\n" << Describe(r));
  REQUIRE(r.code == 0);
  return r;
}

}  // namespace edgevirt::testing
