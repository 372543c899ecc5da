// Helpers for the integration tests that run the real edgevirtd binary: temp dirs, a child
// process that never outlives the test, a datagram socket standing in for systemd's
// NOTIFY_SOCKET, a tiny HTTP client for unix and TCP sockets, and a private mount namespace.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::testing {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void WriteFile(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

// Polls `cond` every 20 ms until it holds or `timeout` passes.
inline bool WaitUntil(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!cond()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

// A child process with stdout and stderr captured in files. The destructor SIGKILLs and reaps
// it if it is still running, and PR_SET_PDEATHSIG kills it if the test process dies first, so
// no daemon survives a failed assertion. Its stdin is `stdin_path` (/dev/null by default).
class Child {
 public:
  Child(std::vector<std::string> argv, const std::map<std::string, std::optional<std::string>>& env,
        const std::filesystem::path& out_dir, const std::string& name,
        const std::filesystem::path& stdin_path = "/dev/null")
      : stdout_path_(out_dir / (name + ".stdout")), stderr_path_(out_dir / (name + ".stderr")) {
    UniqueFd out(::open(stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    UniqueFd err(::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    UniqueFd devnull(::open(stdin_path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE((out.valid() && err.valid() && devnull.valid()));
    // Everything the child needs is prepared before fork(): the child only calls
    // async-signal-safe functions.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
      std::string kv(*e);
      std::string key = kv.substr(0, kv.find('='));
      if (env.count(key) == 0) env_strings.push_back(kv);
    }
    for (const auto& [k, v] : env) {
      if (v) env_strings.push_back(k + "=" + *v);
    }
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::vector<char*> cenv;
    for (auto& e : env_strings) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    const pid_t parent = ::getpid();

    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
      // The test may have blocked signals; the daemon must start with a clean mask.
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::dup2(devnull.get(), 0);
      ::dup2(out.get(), 1);
      ::dup2(err.get(), 2);
      ::execve(cargv[0], cargv.data(), cenv.data());
      ::_exit(127);
    }
  }
  ~Child() {
    if (pid_ > 0 && !exit_status_) {
      ::kill(pid_, SIGKILL);
      int st;
      ::waitpid(pid_, &st, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig) { REQUIRE(::kill(pid_, sig) == 0); }

  // Waits up to `timeout` for the exit; returns the exit code (128+N for a signal N), or
  // nullopt if it is still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    if (exit_status_) return exit_status_;
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        exit_status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return exit_status_;
      }
      if (Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(10ms);
    }
  }
  bool Running() { return !Wait(0ms).has_value(); }

  std::string Stdout() const { return ReadFile(stdout_path_); }
  std::string Stderr() const { return ReadFile(stderr_path_); }

 private:
  std::filesystem::path stdout_path_;
  std::filesystem::path stderr_path_;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

// Runs a command to completion (at most `timeout`, then SIGKILL); returns {exit code, stdout}.
inline std::pair<int, std::string> RunCommand(const std::vector<std::string>& argv,
                                              const std::filesystem::path& out_dir,
                                              std::chrono::milliseconds timeout = 20s) {
  Child c(argv, {}, out_dir, "cmd");
  auto code = c.Wait(timeout);
  INFO("command: " << argv[0] << "\nstderr: " << c.Stderr());
  REQUIRE(code.has_value());
  return {*code, c.Stdout()};
}

// The service manager's end of NOTIFY_SOCKET: a datagram socket bound in a temp dir. Every
// datagram is kept, split into its newline-separated assignments, in arrival order.
class NotifySocket {
 public:
  explicit NotifySocket(std::filesystem::path path) : path_(std::move(path)) {
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd_.valid());
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    REQUIRE(path_.string().size() < sizeof(addr.sun_path));
    std::strcpy(addr.sun_path, path_.c_str());
    REQUIRE(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  const std::filesystem::path& path() const { return path_; }

  struct Message {
    Clock::time_point at;
    std::string line;  // "READY=1"
  };

  // Reads what arrives within `timeout` (returns early once `until` matches a new line).
  void Pump(std::chrono::milliseconds timeout,
            const std::function<bool(const std::string&)>& until = nullptr) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() < 0) return;
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return;
      char buf[4096];
      ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
      if (n <= 0) continue;
      std::istringstream lines(std::string(buf, static_cast<size_t>(n)));
      bool hit = false;
      for (std::string line; std::getline(lines, line);) {
        messages_.push_back({Clock::now(), line});
        if (until && until(line)) hit = true;
      }
      if (hit) return;
    }
  }
  // Waits up to `timeout` for a line equal to `line`; true if it arrived (now or earlier).
  bool WaitFor(const std::string& line, std::chrono::milliseconds timeout) {
    if (Count(line) > 0) return true;
    Pump(timeout, [&](const std::string& l) { return l == line; });
    return Count(line) > 0;
  }
  // Waits up to `timeout` until `line` has arrived at least `n` times in all.
  bool WaitForCount(const std::string& line, size_t n, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Count(line) < n && Clock::now() < deadline) {
      Pump(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
           [&](const std::string& l) { return l == line; });
    }
    return Count(line) >= n;
  }
  size_t Count(const std::string& line) const {
    size_t n = 0;
    for (const auto& m : messages_) n += m.line == line;
    return n;
  }
  std::vector<std::string> StartingWith(const std::string& prefix) const {
    std::vector<std::string> out;
    for (const auto& m : messages_) {
      if (m.line.rfind(prefix, 0) == 0) out.push_back(m.line);
    }
    return out;
  }
  const std::vector<Message>& messages() const { return messages_; }
  std::string Dump() const {
    std::string out;
    for (const auto& m : messages_) out += m.line + "\n";
    return out;
  }

 private:
  std::filesystem::path path_;
  UniqueFd fd_;
  std::vector<Message> messages_;
};

struct HttpReply {
  int status = 0;
  std::string body;
};

// GET over "unix:/path" or "http://127.0.0.1:PORT" with Connection: close; nullopt when the
// connection fails or no complete answer arrives within `timeout`.
inline std::optional<HttpReply> HttpGet(const std::string& address, const std::string& path,
                                        std::chrono::milliseconds timeout = 5s) {
  UniqueFd fd;
  if (address.rfind("unix:", 0) == 0) {
    std::string p = address.substr(5);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (p.size() >= sizeof(addr.sun_path)) return std::nullopt;
    std::strcpy(addr.sun_path, p.c_str());
    fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return std::nullopt;
    }
  } else if (address.rfind("http://127.0.0.1:", 0) == 0) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(17))));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return std::nullopt;
    }
  } else {
    FAIL("HttpGet: unsupported address " << address);
  }
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  if (::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    return std::nullopt;
  }
  std::string raw;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0) return std::nullopt;  // timeout
    if (n == 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  auto head_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos) return std::nullopt;
  HttpReply reply;
  reply.status = std::atoi(raw.c_str() + 9);
  reply.body = raw.substr(head_end + 4);
  return reply;
}

// The mount namespace of a process, as the kernel names it ("mnt:[4026531841]").
inline std::string MountNamespace(const std::string& pid) {
  char buf[64] = {};
  ssize_t n = ::readlink(("/proc/" + pid + "/ns/mnt").c_str(), buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// Makes sure the test runs in a mount namespace of its own with private propagation, so the
// tmpfs mounts it makes are invisible to the host and vanish with the process. CTest starts
// these tests under `unshare -m --propagation private` (the WRAPPER in daemon.cmake); when run
// directly, the test unshares itself (it is still single-threaded here).
inline void EnterPrivateMountNamespace() {
  if (MountNamespace("self") == MountNamespace(std::to_string(::getppid()))) {
    REQUIRE(::unshare(CLONE_NEWNS) == 0);
    REQUIRE(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
  }
  REQUIRE(MountNamespace("self") != MountNamespace(std::to_string(::getppid())));
}

inline void MountTmpfs(const std::filesystem::path& where) {
  int r = ::mount("tmpfs", where.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  INFO("mount tmpfs on " << where << ": " << std::strerror(errno));
  REQUIRE(r == 0);
}

inline std::string EdgevirtdPath() { return EDGEVIRTD_PATH; }

}  // namespace edgevirt::testing
