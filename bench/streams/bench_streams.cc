// bench/streams: virtctl's interactive subresources through a real edgevirtd, against the test
// guest (tests/fixtures/guest) booted under TCG. Prints ONE JSON object on stdout (progress on
// stderr).
//
//   console RTT      one byte through the console WebSocket (.../virtualmachineinstances/{name}/
//                    console) until the guest's shell echoes it back: p50/p95/p99/mean
//   port-forward     .../virtualmachineinstances/{name}/portforward/7 to the guest's TCP echo
//   echo             service (send + read back, verified), against a direct TCP connection from
//                    the daemon's network namespace to guestIP:7: same payload, same window of
//                    bytes in flight, runs interleaved; MiB/s of payload and the ratio
//   port-forward     one way: HTTP GET of a file made in the guest's /www through
//   download         .../portforward/80, against the same GET on a direct connection
//   CPU              per transfer, the CPU time of edgevirtd, of the guest's QEMU and of this
//                    process (the client), as % of one core: which side limits
//
// Target (reported, not asserted): port-forward >= 0.8x the direct connection.
//
// Everything runs in a network namespace of this process (the daemon makes a bridge, nft rules and
// dnsmasq there), with a temp dir under $TMPDIR (default /var/tmp) and a private cgroup and pin
// root; all are removed at exit (BENCH_KEEP_TMP=1 keeps the dir). Needs root.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/cgroups.h"
#include "tests/support/net.h"
#include "tests/support/websocket_client.h"

namespace {

using edgevirt::testing::WebSocketClient;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

void Log(const std::string& s) { std::fprintf(stderr, "bench/streams: %s\n", s.c_str()); }

// Ends the bench (main logs the message); destructors stop the daemon and remove what it made.
[[noreturn]] void Die(const std::string& s) { throw std::runtime_error(s); }

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

double LoadAvg1() {
  double l = 0;
  std::ifstream("/proc/loadavg") >> l;
  return l;
}

bool WaitUntil(const std::function<bool()>& cond, Ms timeout, Ms every = 100ms) {
  const auto deadline = Clock::now() + timeout;
  while (!cond()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(every);
  }
  return true;
}

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// ---- a minimal HTTP/1.1 client (Connection: close) for the REST calls ----------------------

struct Reply {
  int status = 0;
  std::string body;
};

int ConnectTcp(const std::string& ip, int port, Ms timeout = 10s) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) {
    ::close(fd);
    return -1;
  }
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// `base`: http://127.0.0.1:PORT.
std::optional<Reply> Http(const std::string& base, const std::string& method,
                          const std::string& path, const std::string& body = "") {
  const std::string hostport = base.substr(7);
  const size_t colon = hostport.rfind(':');
  int fd = ConnectTcp(hostport.substr(0, colon), std::stoi(hostport.substr(colon + 1)), 30s);
  if (fd < 0) return std::nullopt;
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
  if (!body.empty()) {
    req +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  std::string raw;
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
    char buf[16384];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) raw.append(buf, size_t(n));
  }
  ::close(fd);
  const size_t head_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos) return std::nullopt;
  Reply r;
  r.status = std::atoi(raw.c_str() + 9);
  std::string head = raw.substr(0, head_end);
  std::transform(head.begin(), head.end(), head.begin(), ::tolower);
  std::string rest = raw.substr(head_end + 4);
  if (head.find("transfer-encoding: chunked") == std::string::npos) {
    r.body = std::move(rest);
    return r;
  }
  for (size_t p = 0;;) {
    const size_t eol = rest.find("\r\n", p);
    if (eol == std::string::npos) break;
    const size_t n = std::stoul(rest.substr(p, eol - p), nullptr, 16);
    if (n == 0 || eol + 2 + n > rest.size()) break;
    r.body += rest.substr(eol + 2, n);
    p = eol + 2 + n + 2;
  }
  return r;
}

// ---- processes -----------------------------------------------------------------------------

// CPU time (user + system) of a process and all its threads, in seconds; -1 if it is gone.
double CpuSeconds(pid_t pid) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t rp = stat.rfind(')');
  if (rp == std::string::npos) return -1;
  std::istringstream f(stat.substr(rp + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  // Fields after the command: state(3) ... utime(14) stime(15).
  for (int i = 3; i <= 15 && f >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Processes (not zombies) whose command line contains every one of `needles`.
std::vector<pid_t> PidsWith(const std::vector<std::string>& needles) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = ReadFile(e.path() / "cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    bool all = !cmd.empty();
    for (const auto& n : needles) all = all && cmd.find(n) != std::string::npos;
    if (all) out.push_back(std::stoi(name));
  }
  return out;
}

// edgevirtd, started with a NOTIFY_SOCKET of ours; ready when it sends READY=1.
class Daemon {
 public:
  Daemon(const std::string& binary, const fs::path& config, const fs::path& dir) {
    notify_path_ = dir / "notify";
    notify_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (notify_ < 0 || notify_path_.string().size() >= sizeof addr.sun_path) Die("notify socket");
    std::strcpy(addr.sun_path, notify_path_.c_str());
    if (::bind(notify_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) Die("bind notify");
    log_path_ = dir / "edgevirtd.log";
    const std::string env_notify = "NOTIFY_SOCKET=" + notify_path_.string();
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) Die("fork");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int devnull = ::open("/dev/null", O_RDONLY);
      ::dup2(devnull, 0);
      ::dup2(log, 1);
      ::dup2(log, 2);
      ::unsetenv("WATCHDOG_USEC");
      ::unsetenv("LISTEN_FDS");
      ::putenv(const_cast<char*>(env_notify.c_str()));
      ::execl(binary.c_str(), binary.c_str(), "--config", config.c_str(), nullptr);
      ::_exit(127);
    }
    // READY=1, and the address from "STATUS=Serving on http://127.0.0.1:PORT".
    bool ready = false;
    const auto deadline = Clock::now() + 60s;
    while (!ready && Clock::now() < deadline) {
      pollfd p{notify_, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) {
        int st;
        if (::waitpid(pid_, &st, WNOHANG) == pid_) {
          pid_ = -1;
          Die("edgevirtd exited at start:\n" + ReadFile(log_path_));
        }
        continue;
      }
      char buf[4096];
      ssize_t n = ::recv(notify_, buf, sizeof buf, 0);
      if (n <= 0) continue;
      std::istringstream lines(std::string(buf, size_t(n)));
      for (std::string l; std::getline(lines, l);) {
        if (l == "READY=1") ready = true;
        auto at = l.find("http://127.0.0.1:");
        if (l.rfind("STATUS=Serving on ", 0) == 0 && at != std::string::npos) {
          url_ = l.substr(at, l.find_first_of(", ", at) - at);
        }
      }
    }
    if (!ready || url_.empty()) Die("edgevirtd not ready:\n" + ReadFile(log_path_));
  }
  ~Daemon() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int st;
      for (int i = 0; i < 150 && ::waitpid(pid_, &st, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(100ms);
      }
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &st, 0);
    }
    if (notify_ >= 0) ::close(notify_);
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& url() const { return url_; }
  pid_t pid() const { return pid_; }
  const fs::path& log_path() const { return log_path_; }

 private:
  fs::path notify_path_;
  fs::path log_path_;
  int notify_ = -1;
  pid_t pid_ = -1;
  std::string url_;
};

// The temp dir, and everything that outlives edgevirtd by design (its QEMUs, its dnsmasq):
// killed, then the dir removed. Declared before the daemon so that it runs after its destructor.
struct Scratch {
  Scratch() {
    const char* t = std::getenv("TMPDIR");
    // Not /tmp: it may be a tmpfs (no O_DIRECT, so a different disk cache mode). Short, for the
    // daemon's socket paths.
    std::string tmpl = std::string(t && *t ? t : "/var/tmp") + "/ev-st.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp " + tmpl);
    dir = tmpl;
    // QEMU runs unprivileged and must traverse to its disk and per-VMI files.
    ::chmod(dir.c_str(), 0711);
  }
  ~Scratch() {
    for (int i = 0; i < 50; ++i) {
      auto pids = PidsWith({"qemu-system", dir.string()});
      auto dns = PidsWith({"dnsmasq", "--conf-file=" + (dir / "run").string()});
      pids.insert(pids.end(), dns.begin(), dns.end());
      if (pids.empty()) break;
      for (pid_t p : pids) ::kill(p, SIGKILL);
      std::this_thread::sleep_for(100ms);
    }
    if (std::getenv("BENCH_KEEP_TMP")) {
      Log("kept " + dir.string() + " (BENCH_KEEP_TMP)");
    } else {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  }
  fs::path dir;
};

// ---- statistics ----------------------------------------------------------------------------

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - double(lo));
}

double Median(const std::vector<double>& v) { return Percentile(v, 50); }

double Round(double v, int digits = 3) {
  const double f = std::pow(10.0, digits);
  return std::round(v * f) / f;
}

// ---- the transfers -------------------------------------------------------------------------

// One side of a transfer: a WebSocket through the daemon, or a TCP socket to the guest.
class Pipe {
 public:
  virtual ~Pipe() = default;
  virtual bool Send(std::string_view data) = 0;
  // Some received bytes appended to `out`; false on timeout or end.
  virtual bool Receive(std::string& out, Ms timeout) = 0;
};

class WsPipe : public Pipe {
 public:
  WsPipe(WebSocketClient& ws) : ws_(ws) {}
  bool Send(std::string_view data) override { return ws_.SendBinary(data, 30s); }
  bool Receive(std::string& out, Ms timeout) override {
    auto m = ws_.Receive(timeout);
    if (!m && ws_.closed()) {
      Die("the WebSocket was closed (" + std::to_string(ws_.close_code()) + " " +
          ws_.close_reason() + ")");
    }
    if (!m) return false;
    if (m->binary) out += m->data;
    return true;
  }

 private:
  WebSocketClient& ws_;
};

class TcpPipe : public Pipe {
 public:
  explicit TcpPipe(int fd) : fd_(fd) {}
  ~TcpPipe() override { ::close(fd_); }
  bool Send(std::string_view data) override {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(size_t(n));
    }
    return true;
  }
  bool Receive(std::string& out, Ms timeout) override {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, int(timeout.count())) <= 0) return false;
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return false;
    out.append(buf, size_t(n));
    return true;
  }

 private:
  int fd_;
};

struct Cpu {
  pid_t daemon;
  pid_t qemu;
  std::string tap;  // the guest NIC's tap device ("" if none was found)
};

// The counters of this network namespace's interfaces, from /proc/self/net/dev (not
// /sys/class/net: sysfs shows the namespace it was mounted in): name -> rx + tx packets.
std::vector<std::pair<std::string, double>> NetDevPackets() {
  std::vector<std::pair<std::string, double>> out;
  std::istringstream in(ReadFile("/proc/self/net/dev"));
  std::string line;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
    std::istringstream f(line.substr(colon + 1));
    std::vector<double> v;
    for (double x; f >> x;) v.push_back(x);
    if (v.size() >= 10) out.emplace_back(name, v[1] + v[9]);
  }
  return out;
}

// Packets through the tap (both ways): how many segments the guest's network stack handled.
double TapPackets(const std::string& tap) {
  for (const auto& [name, packets] : NetDevPackets()) {
    if (name == tap) return packets;
  }
  return 0;
}

// The only tap device of edgevirt (net::kTapPrefix "evt") in this network namespace (one VM
// with one NIC), or "".
std::string FindTap() {
  std::vector<std::string> taps;
  for (const auto& [name, packets] : NetDevPackets()) {
    if (name.rfind("evt", 0) == 0) taps.push_back(name);
  }
  return taps.size() == 1 ? taps[0] : "";
}

// Wall time and CPU of one transfer of `bytes` of payload.
struct Transfer {
  double seconds = 0;
  size_t bytes = 0;
  double daemon_cpu = 0;  // seconds
  double qemu_cpu = 0;
  double client_cpu = 0;
  double tap_packets = 0;
  double MiBs() const { return double(bytes) / (1 << 20) / seconds; }
};

template <class F>
Transfer Timed(const Cpu& cpu, size_t bytes, F&& body) {
  const double d0 = CpuSeconds(cpu.daemon), q0 = CpuSeconds(cpu.qemu), c0 = SelfCpuSeconds();
  const double p0 = TapPackets(cpu.tap);
  const auto t0 = Clock::now();
  body();
  Transfer t;
  t.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  t.bytes = bytes;
  t.daemon_cpu = CpuSeconds(cpu.daemon) - d0;
  t.qemu_cpu = CpuSeconds(cpu.qemu) - q0;
  t.client_cpu = SelfCpuSeconds() - c0;
  t.tap_packets = TapPackets(cpu.tap) - p0;
  return t;
}

// Sends `payload` through `pipe` in `chunk`-byte messages, at most `window` bytes unacknowledged
// by the echo, and checks that exactly the same bytes come back.
void Echo(Pipe& pipe, const std::string& payload, size_t chunk, size_t window) {
  size_t sent = 0, checked = 0;
  std::string in;
  while (checked < payload.size()) {
    const size_t n = std::min(chunk, payload.size() - sent);
    if (sent < payload.size() && sent + n - (checked + in.size()) <= window) {
      if (!pipe.Send(std::string_view(payload).substr(sent, n))) Die("echo: send failed");
      sent += n;
      continue;
    }
    if (!pipe.Receive(in, 30s)) Die("echo: nothing back for 30 s");
    if (checked + in.size() > sent || payload.compare(checked, in.size(), in) != 0) {
      Die("echo: the bytes that came back differ from those sent");
    }
    checked += in.size();
    in.clear();
  }
}

// GET `path` over `pipe`; returns the body size, checked against Content-Length.
size_t Download(Pipe& pipe, const std::string& path) {
  if (!pipe.Send("GET " + path + " HTTP/1.0\r\nHost: guest\r\n\r\n")) Die("GET: send failed");
  std::string in;
  size_t head_end = std::string::npos;
  size_t length = 0;
  while (head_end == std::string::npos || in.size() < head_end + 4 + length) {
    if (!pipe.Receive(in, 30s)) {
      Die("GET " + path + ": " + std::to_string(in.size()) + " bytes, then nothing for 30 s");
    }
    if (head_end == std::string::npos && (head_end = in.find("\r\n\r\n")) != std::string::npos) {
      if (in.rfind("HTTP/1.", 0) != 0 || in.compare(9, 3, "200") != 0) {
        Die("GET " + path + ": " + in.substr(0, in.find('\r')));
      }
      std::string head = in.substr(0, head_end);
      std::transform(head.begin(), head.end(), head.begin(), ::tolower);
      auto cl = head.find("content-length:");
      if (cl == std::string::npos) Die("GET " + path + ": no Content-Length");
      length = std::stoul(head.substr(cl + 15));
    }
  }
  return length;
}

Json TransferJson(const std::vector<Transfer>& runs) {
  std::vector<double> mibs, dcpu, qcpu, ccpu;
  for (const auto& t : runs) {
    mibs.push_back(t.MiBs());
    dcpu.push_back(100 * t.daemon_cpu / t.seconds);
    qcpu.push_back(100 * t.qemu_cpu / t.seconds);
    ccpu.push_back(100 * t.client_cpu / t.seconds);
  }
  Json runs_json = Json::array();
  for (double m : mibs) runs_json.push_back(Round(m));
  // CPU per MiB of payload over all runs (longer than one run: less tick rounding).
  double bytes = 0, daemon = 0, qemu = 0, packets = 0;
  for (const auto& t : runs) {
    bytes += double(t.bytes);
    daemon += t.daemon_cpu;
    qemu += t.qemu_cpu;
    packets += t.tap_packets;
  }
  const double mib = bytes / (1 << 20);
  return {{"mib_s", Round(Median(mibs))},
          {"edgevirtd_cpu_ms_per_mib", Round(1000 * daemon / mib)},
          {"qemu_cpu_ms_per_mib", Round(1000 * qemu / mib)},
          // Segments the guest sent and received per MiB of payload (ACKs included).
          {"guest_packets_per_mib", Round(packets / mib, 1)},
          {"runs_mib_s", runs_json},
          {"edgevirtd_cpu_pct", Round(Median(dcpu), 1)},
          {"qemu_cpu_pct", Round(Median(qcpu), 1)},
          {"client_cpu_pct", Round(Median(ccpu), 1)}};
}

std::string Sub(const std::string& name, const std::string& sub) {
  return "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/" + name +
         "/" + sub;
}

const WebSocketClient::Headers kVirtctl = {{"User-Agent", "virtctl/v1.0.0 (linux/amd64)"}};

struct Options {
  bool quick = false;
  std::string edgevirtd;
  fs::path guest_dir;
  int samples = 200;
  int runs = 3;
  size_t echo_bytes = 32 << 20;
  size_t download_bytes = 32 << 20;
  size_t chunk = 32 << 10;
  size_t window = 256 << 10;
  int sessions = 4;
  double rest_seconds = 5;
};

size_t ParseSize(const std::string& s) {
  size_t pos = 0;
  double v = std::stod(s, &pos);
  std::string unit = s.substr(pos);
  if (unit == "K" || unit == "k") v *= 1 << 10;
  if (unit == "M" || unit == "m") v *= 1 << 20;
  if (unit == "G" || unit == "g") v *= 1 << 30;
  return size_t(v);
}

int Run(const Options& o) {
  Json out = {{"bench", "streams"}, {"quick", o.quick}};
  Json host = {{"loadavg_1m_start", LoadAvg1()},
               {"nproc", std::thread::hardware_concurrency()},
               {"accel", ::access("/dev/kvm", R_OK | W_OK) == 0 ? "kvm-or-tcg" : "tcg"}};

  if (int e = edgevirt::testing::EnterPrivateNetns(); e != 0) {
    Die(std::string("network namespace: ") + std::strerror(e));
  }
  Scratch scratch;
  const fs::path tmp = scratch.dir;
  fs::create_directories(tmp / "disks");
  ::chmod((tmp / "disks").c_str(), 0711);
  const fs::path disk = tmp / "disks" / "s1.raw";
  fs::copy_file(o.guest_dir / "guest.raw", disk);
  edgevirt::testing::TestCgroups cgroups(tmp);
  {
    std::ofstream cfg(tmp / "edgevirtd.yaml");
    cfg << "stateDir: " << (tmp / "state").string() << "\nrunDir: " << (tmp / "run").string()
        << "\napi:\n  listen:\n    - http://127.0.0.1:0\n"
        // Plain HTTP on loopback without credentials: the relay is measured, not the auth.
        << "  auth:\n    plainHttp: none\nvms:\n  hostDiskDirs: [" << (tmp / "disks").string()
        << "]\n"
        << cgroups.Config() << "log:\n  level: info\n  target: stderr\n";
  }
  Daemon daemon(o.edgevirtd, tmp / "edgevirtd.yaml", tmp);
  const std::string url = daemon.url();
  Log("edgevirtd serving on " + url);

  // The VM: 1 vCPU (the default), 256Mi, the guest's raw disk as hostDisk.
  Json vm = {{"apiVersion", "kubevirt.io/v1"},
             {"kind", "VirtualMachine"},
             {"metadata", {{"name", "s1"}, {"namespace", "default"}}}};
  vm["spec"]["runStrategy"] = "Always";
  vm["spec"]["template"]["spec"] = {
      {"terminationGracePeriodSeconds", 0},
      {"domain",
       {{"devices", {{"disks", Json::array({{{"name", "root"}, {"disk", {{"bus", "virtio"}}}}})}}},
        {"resources", {{"requests", {{"memory", "256Mi"}}}}}}},
      {"volumes", Json::array({{{"name", "root"},
                                {"hostDisk", {{"path", disk.string()}, {"type", "Disk"}}}}})}};
  const auto t_create = Clock::now();
  auto created =
      Http(url, "POST", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines", vm.dump());
  if (!created || created->status != 201) {
    Die("POST VirtualMachine: " + (created ? created->body : std::string("no answer")));
  }
  Json vmi;
  if (!WaitUntil(
          [&] {
            auto r = Http(url, "GET",
                          "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/s1");
            if (!r || r->status != 200) return false;
            vmi = Json::parse(r->body, nullptr, false);
            return vmi.is_object() && vmi["status"].value("phase", "") == "Running";
          },
          180s, 50ms)) {
    Die("the VMI did not reach Running; daemon log " + daemon.log_path().string());
  }
  const double to_running_ms = MsSince(t_create);
  const std::string uid = vmi["metadata"]["uid"];
  const fs::path serial_log = tmp / "state" / "vms" / uid / "serial0.log";
  // The guest prints DHCP:eth0:<ip> on ttyS0 (the serial log) once it has its lease.
  std::string guest_ip;
  const std::regex dhcp("DHCP:eth0:([0-9.]+)");
  if (!WaitUntil(
          [&] {
            std::smatch m;
            std::string log = ReadFile(serial_log);
            if (!std::regex_search(log, m, dhcp)) return false;
            guest_ip = m[1];
            return true;
          },
          300s, 200ms)) {
    Die("no DHCP lease in the serial log " + serial_log.string());
  }
  const double to_address_ms = MsSince(t_create);
  Log("VMI Running after " + std::to_string(int(to_running_ms)) + " ms, guest " + guest_ip +
      " after " + std::to_string(int(to_address_ms)) + " ms");
  auto qemus = PidsWith({"qemu-system", tmp.string()});
  if (qemus.size() != 1) Die("expected one QEMU, found " + std::to_string(qemus.size()));
  const Cpu cpu{daemon.pid(), qemus[0], FindTap()};
  if (cpu.tap.empty()) Die("no (or more than one) tap device in the network namespace");
  out["vm"] = {{"create_to_running_ms", Round(to_running_ms, 1)},
               {"create_to_address_ms", Round(to_address_ms, 1)},
               {"guest_ip", guest_ip}};

  // ---- console: a file to download later, then the keystroke round trips ------------------
  WebSocketClient console;
  if (!console.Connect(url, Sub("s1", "console"), kVirtctl)) {
    Die("console: " + console.error() + " " + console.body());
  }
  // The shell's prompt may come late on a busy machine: retry the command until it answers.
  const std::string make_file = "\ndd if=/dev/urandom of=/www/big bs=65536 count=" +
                                std::to_string(o.download_bytes / 65536) +
                                " 2>/dev/null; echo FILE-$((20+22))\n";
  bool made = false;
  for (int i = 0; i < 6 && !made; ++i) {
    if (!console.SendBinary(make_file)) Die("console: send failed");
    made = console.ReadUntil("FILE-42", 30s).find("FILE-42") != std::string::npos;
  }
  if (!made) Die("console: the guest's shell did not answer");
  // Drain what is left (the prompt), then time single keystrokes. Letters that never occur in the
  // prompt; every 40 the line is killed (Ctrl-U) so that it never wraps.
  (void)console.ReadUntil("\x01", 500ms);
  std::vector<double> rtt;
  const std::string keys = "qwxzjk";
  for (int i = 0; i < o.samples; ++i) {
    if (i % 40 == 39) {
      if (!console.SendBinary("\x15")) Die("console: send failed");
      (void)console.ReadUntil("\x01", 300ms);
    }
    const std::string key(1, keys[size_t(i) % keys.size()]);
    const auto t0 = Clock::now();
    if (!console.SendBinary(key)) Die("console: send failed");
    std::string got = console.ReadUntil(key, 10s);
    if (got.find(key) == std::string::npos) Die("console: keystroke " + key + " not echoed");
    rtt.push_back(MsSince(t0));
    std::this_thread::sleep_for(10ms);
  }
  if (!console.SendBinary("\x15")) Die("console: send failed");
  double sum = 0;
  for (double v : rtt) sum += v;
  out["console_rtt"] = {{"samples", rtt.size()},
                        {"p50_ms", Round(Percentile(rtt, 50))},
                        {"p95_ms", Round(Percentile(rtt, 95))},
                        {"p99_ms", Round(Percentile(rtt, 99))},
                        {"mean_ms", Round(sum / double(rtt.size()))},
                        {"min_ms", Round(*std::min_element(rtt.begin(), rtt.end()))},
                        {"max_ms", Round(*std::max_element(rtt.begin(), rtt.end()))}};
  Log("console RTT p50 " + std::to_string(Percentile(rtt, 50)) + " ms");

  // ---- port-forward against direct, interleaved ---------------------------------------------
  std::string payload(o.echo_bytes, '\0');
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= payload.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(payload.data() + i, &v, 8);
  }
  std::vector<Transfer> echo_pf, echo_direct, dl_pf, dl_direct;
  auto open_pf = [&](int port) {
    auto ws = std::make_unique<WebSocketClient>();
    if (!ws->Connect(url, Sub("s1", "portforward/" + std::to_string(port)), kVirtctl)) {
      Die("portforward/" + std::to_string(port) + ": " + ws->error() + " " + ws->body());
    }
    return ws;
  };
  auto open_direct = [&](int port) {
    int fd = ConnectTcp(guest_ip, port);
    if (fd < 0) Die("connect " + guest_ip + ":" + std::to_string(port) + ": " + strerror(errno));
    return std::make_unique<TcpPipe>(fd);
  };
  // With several connections opened at once, the guest's echo service (busybox `nc -ll -e cat`,
  // which forks per connection and listens again) dropped one right after accepting it, so its
  // WebSocket closed right after the upgrade. So every echo connection first echoes a few bytes,
  // and is opened again (up to 5 times) if that fails.
  auto open_echo_pf = [&] {
    for (int attempt = 1;; ++attempt) {
      auto ws = open_pf(7);
      try {
        WsPipe p(*ws);
        Echo(p, payload.substr(0, 4096), o.chunk, o.window);
        return ws;
      } catch (const std::exception& e) {
        if (attempt == 5) throw;
        Log(std::string("port-forward to the echo service, again: ") + e.what());
        std::this_thread::sleep_for(200ms);
      }
    }
  };
  auto open_echo_direct = [&] {
    for (int attempt = 1;; ++attempt) {
      auto d = open_direct(7);
      try {
        Echo(*d, payload.substr(0, 4096), o.chunk, o.window);
        return d;
      } catch (const std::exception& e) {
        if (attempt == 5) throw;
        Log(std::string("connection to the echo service, again: ") + e.what());
        std::this_thread::sleep_for(200ms);
      }
    }
  };
  // A warm-up of each (the guest's first connections, page cache, TCP slow start).
  {
    auto ws = open_echo_pf();
    WsPipe p(*ws);
    Echo(p, payload.substr(0, 1 << 20), o.chunk, o.window);
    auto d = open_echo_direct();
    Echo(*d, payload.substr(0, 1 << 20), o.chunk, o.window);
  }
  for (int r = 0; r < o.runs; ++r) {
    // Alternate which goes first, so that a trend in the machine's load favours neither.
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == (r % 2 == 0)) {
        auto ws = open_echo_pf();
        WsPipe p(*ws);
        echo_pf.push_back(Timed(cpu, payload.size(), [&] { Echo(p, payload, o.chunk, o.window); }));
        ws->Close(1000, 5s);
      } else {
        auto d = open_echo_direct();
        echo_direct.push_back(
            Timed(cpu, payload.size(), [&] { Echo(*d, payload, o.chunk, o.window); }));
      }
    }
    Log("echo run " + std::to_string(r + 1) + ": port-forward " +
        std::to_string(echo_pf.back().MiBs()) + " MiB/s, direct " +
        std::to_string(echo_direct.back().MiBs()) + " MiB/s");
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == (r % 2 == 0)) {
        auto ws = open_pf(80);
        WsPipe p(*ws);
        size_t n = 0;
        dl_pf.push_back(Timed(cpu, o.download_bytes, [&] { n = Download(p, "/big"); }));
        if (n != o.download_bytes) Die("GET /big: " + std::to_string(n) + " bytes");
      } else {
        auto d = open_direct(80);
        size_t n = 0;
        dl_direct.push_back(Timed(cpu, o.download_bytes, [&] { n = Download(*d, "/big"); }));
        if (n != o.download_bytes) Die("GET /big: " + std::to_string(n) + " bytes");
      }
    }
    Log("download run " + std::to_string(r + 1) + ": port-forward " +
        std::to_string(dl_pf.back().MiBs()) + " MiB/s, direct " +
        std::to_string(dl_direct.back().MiBs()) + " MiB/s");
  }
  auto section = [&](const std::vector<Transfer>& pf, const std::vector<Transfer>& direct,
                     size_t bytes) {
    Json j = {{"bytes", bytes}, {"runs", pf.size()}};
    j["portforward"] = TransferJson(pf);
    j["direct"] = TransferJson(direct);
    j["ratio"] =
        Round(j["portforward"]["mib_s"].get<double>() / j["direct"]["mib_s"].get<double>());
    return j;
  };
  out["portforward"] = {{"chunk_bytes", o.chunk},
                        {"window_bytes", o.window},
                        {"echo", section(echo_pf, echo_direct, o.echo_bytes)},
                        {"download", section(dl_pf, dl_direct, o.download_bytes)},
                        {"target_ratio", 0.8}};

  // ---- REST latency while streams are busy ----------------------------------------------------
  // GETs of the VMI, 5 ms apart, for `rest_seconds`, with only the console open, then again
  // while `sessions` port-forwards echo continuously (each in a thread of its own, 64 KiB at a
  // time).
  auto rest_latency = [&](double seconds) {
    std::vector<double> v;
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      const auto t0 = Clock::now();
      auto r =
          Http(url, "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/s1");
      if (!r || r->status != 200) Die("GET VMI during the REST latency runs");
      v.push_back(MsSince(t0));
      std::this_thread::sleep_for(5ms);
    }
    return v;
  };
  auto latency_json = [](const std::vector<double>& v) {
    return Json{{"samples", v.size()},
                {"p50_ms", Round(Percentile(v, 50))},
                {"p99_ms", Round(Percentile(v, 99))}};
  };
  const auto idle = rest_latency(o.rest_seconds);
  std::atomic<bool> stop{false};
  std::atomic<size_t> streamed{0};
  std::atomic<int> failed{0};
  // Opened one after the other (see open_echo_pf), each then used by one thread only.
  std::vector<std::unique_ptr<WebSocketClient>> sessions;
  for (int i = 0; i < o.sessions; ++i) sessions.push_back(open_echo_pf());
  std::vector<std::thread> busy;
  for (int i = 0; i < o.sessions; ++i) {
    busy.emplace_back([&, ws = sessions[size_t(i)].get()] {
      try {
        WsPipe p(*ws);
        const std::string part = payload.substr(0, 64 << 10);
        while (!stop) {
          Echo(p, part, o.chunk, o.window);
          streamed += part.size();
        }
        ws->Close(1000, 5s);
      } catch (const std::exception& e) {
        Log(std::string("busy session: ") + e.what());
        ++failed;
      }
    });
  }
  std::this_thread::sleep_for(1s);
  const size_t streamed0 = streamed;
  const auto t_busy = Clock::now();
  const auto loaded = rest_latency(o.rest_seconds);
  const double busy_s = std::chrono::duration<double>(Clock::now() - t_busy).count();
  const size_t streamed1 = streamed;
  stop = true;
  for (auto& t : busy) t.join();
  if (failed > 0) Die(std::to_string(failed.load()) + " busy port-forward sessions failed");
  out["rest_get_vmi"] = {
      {"idle", latency_json(idle)},
      {"busy", latency_json(loaded)},
      {"busy_sessions", {{"portforward_echo", o.sessions}, {"console", 1}}},
      {"busy_portforward_mib_s", Round(double(streamed1 - streamed0) / (1 << 20) / busy_s)}};
  Log("REST GET p99 idle " + std::to_string(Percentile(idle, 99)) + " ms, with " +
      std::to_string(o.sessions) + " busy port-forwards " + std::to_string(Percentile(loaded, 99)) +
      " ms");
  console.Close(1000, 5s);

  host["loadavg_1m_end"] = LoadAvg1();
  out["host"] = host;
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const fs::path self = fs::canonical("/proc/self/exe");
  // Defaults: the build tree this binary sits in (build/bench/streams/bench_streams).
  const fs::path build = self.parent_path().parent_path().parent_path();
  o.edgevirtd = (build / "daemon" / "edgevirtd").string();
  o.guest_dir = build / "tests" / "fixtures" / "guest";
  bool samples_set = false, runs_set = false, echo_set = false, dl_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_streams: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--edgevirtd") {
      o.edgevirtd = next();
    } else if (a == "--guest-dir") {
      o.guest_dir = next();
    } else if (a == "--samples") {
      o.samples = std::stoi(next());
      samples_set = true;
    } else if (a == "--runs") {
      o.runs = std::stoi(next());
      runs_set = true;
    } else if (a == "--echo-size") {
      o.echo_bytes = ParseSize(next());
      echo_set = true;
    } else if (a == "--download-size") {
      o.download_bytes = ParseSize(next());
      dl_set = true;
    } else if (a == "--chunk") {
      o.chunk = ParseSize(next());
    } else if (a == "--window") {
      o.window = ParseSize(next());
    } else if (a == "--sessions") {
      o.sessions = std::stoi(next());
    } else if (a == "--rest-seconds") {
      o.rest_seconds = std::stod(next());
    } else {
      std::fprintf(stderr,
                   "usage: bench_streams [--quick] [--edgevirtd PATH] [--guest-dir DIR] "
                   "[--samples N] [--runs N] [--echo-size BYTES] [--download-size BYTES] "
                   "[--chunk BYTES] [--window BYTES] [--sessions N] [--rest-seconds S]\n");
      return 2;
    }
  }
  if (o.quick) {
    if (!samples_set) o.samples = 50;
    o.rest_seconds = std::min(o.rest_seconds, 2.0);
    // Three short runs rather than one longer: the median of three rides out a moment of CPU
    // starvation (a single run measured 0.16x once on a machine at load 13).
    if (!runs_set) o.runs = 3;
    if (!echo_set) o.echo_bytes = 4 << 20;
    if (!dl_set) o.download_bytes = 8 << 20;
  }
  o.download_bytes = std::max<size_t>(65536, o.download_bytes / 65536 * 65536);
  if (::geteuid() != 0) {
    std::fprintf(stderr, "bench_streams: needs root (network namespace, cgroups, QEMU)\n");
    return 2;
  }
  if (!fs::exists(o.edgevirtd) || !fs::exists(o.guest_dir / "guest.raw")) {
    std::fprintf(stderr, "bench_streams: no %s or no %s/guest.raw (--edgevirtd, --guest-dir)\n",
                 o.edgevirtd.c_str(), o.guest_dir.c_str());
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  try {
    return Run(o);
  } catch (const std::exception& e) {
    Log(std::string("FAILED: ") + e.what());
    return 1;
  }
}
