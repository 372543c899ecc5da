// bench_api_tool: the parts of bench/api/run.sh that wrk cannot do. Prints one JSON object.
//
//   bench_api_tool wait URL PATH SECONDS
//       Polls GET URL+PATH until it answers 200 (exit 1 after SECONDS).
//   bench_api_tool preload URL NAMESPACE PREFIX COUNT CONCURRENCY TEMPLATE
//       Creates COUNT VMs PREFIX-0..COUNT-1 from TEMPLATE (a VM JSON with __NAME__ and
//       __NAMESPACE__ placeholders) over CONCURRENCY keep-alive connections; exit 1 unless
//       every POST answered 201.
//   bench_api_tool watch URL NAMESPACE WATCHERS WRITES TEMPLATE
//       Opens WATCHERS watches on the namespace's VMs (from the current list RV), then creates
//       WRITES VMs one after the other; for every write and watcher, the time from the write's
//       acknowledgement (the 201 fully read) to that watcher reading the ADDED event. Reports
//       p50/p99/max in microseconds (an event read before the acknowledgement counts as 0, and
//       is counted in delivered_before_ack) and the number of events that never arrived.
//
// Loopback HTTP/1.1 only (http://127.0.0.1:PORT), no TLS, no proxies.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "bench_api_tool: %s\n", msg.c_str());
  std::exit(1);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string ReplaceAll(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = 0; (at = s.find(from, at)) != std::string::npos; at += to.size()) {
    s.replace(at, from.size(), to);
  }
  return s;
}

std::string VmBody(const std::string& tmpl, const std::string& ns, const std::string& name) {
  return ReplaceAll(ReplaceAll(tmpl, "__NAME__", name), "__NAMESPACE__", ns);
}

int PortOf(const std::string& url) {
  const std::string prefix = "http://127.0.0.1:";
  if (url.rfind(prefix, 0) != 0) Die("URL must be http://127.0.0.1:PORT: " + url);
  return std::atoi(url.c_str() + prefix.size());
}

int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// A keep-alive HTTP/1.1 connection for request/response (Content-Length or chunked answers).
class Conn {
 public:
  explicit Conn(int port) : port_(port) {}
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  // Returns the status (0 on a transport error); the body in *body.
  int Do(const std::string& method, const std::string& path, const std::string& body,
         std::string* out) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (fd_ < 0) fd_ = Connect(port_);
      if (fd_ < 0) return 0;
      std::string req =
          method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n";
      if (!body.empty()) {
        req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
               "\r\n";
      }
      req += "\r\n" + body;
      int status = 0;
      if (SendAll(fd_, req) && ReadResponse(&status, out)) return status;
      ::close(fd_);
      fd_ = -1;
      buf_.clear();
    }
    return 0;
  }

 private:
  bool Fill() {
    char tmp[65536];
    ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }
  bool ReadResponse(int* status, std::string* out) {
    size_t head_end;
    while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return false;
    }
    std::string head = buf_.substr(0, head_end);
    buf_.erase(0, head_end + 4);
    if (head.rfind("HTTP/1.", 0) != 0) return false;
    *status = std::atoi(head.c_str() + 9);
    std::string lower = head;
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    bool close = lower.find("\r\nconnection: close") != std::string::npos;
    out->clear();
    if (auto at = lower.find("\r\ncontent-length:"); at != std::string::npos) {
      size_t len = std::strtoul(lower.c_str() + at + 17, nullptr, 10);
      while (buf_.size() < len) {
        if (!Fill()) return false;
      }
      out->assign(buf_, 0, len);
      buf_.erase(0, len);
    } else if (lower.find("\r\ntransfer-encoding: chunked") != std::string::npos) {
      for (;;) {
        size_t eol;
        while ((eol = buf_.find("\r\n")) == std::string::npos) {
          if (!Fill()) return false;
        }
        size_t size = std::strtoul(buf_.c_str(), nullptr, 16);
        buf_.erase(0, eol + 2);
        while (buf_.size() < size + 2) {
          if (!Fill()) return false;
        }
        out->append(buf_, 0, size);
        buf_.erase(0, size + 2);
        if (size == 0) break;
      }
    } else {
      while (Fill()) {
      }
      *out = buf_;
      buf_.clear();
      close = true;
    }
    if (close) {
      ::close(fd_);
      fd_ = -1;
      buf_.clear();
    }
    return true;
  }

  int port_;
  int fd_ = -1;
  std::string buf_;
};

std::string VmsPath(const std::string& ns) {
  return "/apis/kubevirt.io/v1/namespaces/" + ns + "/virtualmachines";
}

int CmdWait(const std::string& url, const std::string& path, int seconds) {
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  while (Clock::now() < deadline) {
    Conn c(PortOf(url));
    std::string body;
    if (c.Do("GET", path, "", &body) == 200) {
      std::printf("{\"ready\":true}\n");
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Die("no 200 from " + url + path + " within " + std::to_string(seconds) + " s");
}

int CmdPreload(const std::string& url, const std::string& ns, const std::string& prefix, int count,
               int concurrency, const std::string& tmpl) {
  const int port = PortOf(url);
  std::atomic<int> next{0}, created{0}, failed{0};
  std::mutex mu;
  std::string first_error;
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      Conn c(port);
      for (int i; (i = next++) < count;) {
        std::string out;
        int st =
            c.Do("POST", VmsPath(ns), VmBody(tmpl, ns, prefix + "-" + std::to_string(i)), &out);
        if (st == 201) {
          ++created;
        } else {
          ++failed;
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.empty()) first_error = std::to_string(st) + " " + out.substr(0, 300);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  Json j = {{"created", created.load()}, {"failed", failed.load()}, {"seconds", secs}};
  if (!first_error.empty()) j["first_error"] = first_error;
  std::printf("%s\n", j.dump().c_str());
  return failed == 0 ? 0 : 1;
}

// One watch stream: the chunked body decoded incrementally into lines.
struct Watcher {
  int fd = -1;
  std::string raw;
  std::string data;
  bool head_done = false;
  size_t chunk_left = 0;
  bool need_crlf = false;
  bool ended = false;
};

// Decodes what is in w.raw into w.data (chunked coding).
void Dechunk(Watcher& w) {
  for (;;) {
    if (w.chunk_left == 0) {
      if (w.need_crlf) {
        if (w.raw.size() < 2) return;
        w.raw.erase(0, 2);
        w.need_crlf = false;
      }
      auto eol = w.raw.find("\r\n");
      if (eol == std::string::npos) return;
      size_t size = std::strtoul(w.raw.c_str(), nullptr, 16);
      w.raw.erase(0, eol + 2);
      if (size == 0) {
        w.ended = true;
        return;
      }
      w.chunk_left = size;
    }
    size_t take = std::min(w.chunk_left, w.raw.size());
    if (take == 0) return;
    w.data.append(w.raw, 0, take);
    w.raw.erase(0, take);
    w.chunk_left -= take;
    if (w.chunk_left == 0) w.need_crlf = true;
  }
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

int CmdWatch(const std::string& url, const std::string& ns, int watchers, int writes,
             const std::string& tmpl) {
  const int port = PortOf(url);
  Conn control(port);
  std::string out;
  if (control.Do("GET", VmsPath(ns), "", &out) != 200) Die("list failed: " + out.substr(0, 300));
  Json list = Json::parse(out, nullptr, false);
  if (list.is_discarded()) Die("list is not JSON");
  const std::string rv = list["metadata"].value("resourceVersion", "");

  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  std::vector<Watcher> ws(static_cast<size_t>(watchers));
  const std::string req = "GET " + VmsPath(ns) + "?watch=true&resourceVersion=" + rv +
                          " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n";
  for (int i = 0; i < watchers; ++i) {
    Watcher& w = ws[static_cast<size_t>(i)];
    w.fd = Connect(port);
    if (w.fd < 0 || !SendAll(w.fd, req)) Die("watch connect failed");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<uint32_t>(i);
    ::epoll_ctl(ep, EPOLL_CTL_ADD, w.fd, &ev);
  }

  // received[write][watcher], in steady_clock nanoseconds; 0 = not yet.
  std::vector<std::vector<std::atomic<int64_t>>> received(static_cast<size_t>(writes));
  for (auto& r : received) r = std::vector<std::atomic<int64_t>>(static_cast<size_t>(watchers));
  std::atomic<bool> stop{false};
  std::atomic<int> heads{0};
  std::atomic<long> delivered{0};
  const std::string marker = "\"name\":\"bw-";
  std::thread reader([&] {
    epoll_event events[128];
    char buf[65536];
    while (!stop) {
      int n = ::epoll_wait(ep, events, 128, 50);
      const int64_t now = Clock::now().time_since_epoch().count();
      for (int e = 0; e < n; ++e) {
        Watcher& w = ws[events[e].data.u32];
        for (;;) {
          ssize_t got = ::recv(w.fd, buf, sizeof(buf), MSG_DONTWAIT);
          if (got <= 0) break;
          w.raw.append(buf, static_cast<size_t>(got));
        }
        if (!w.head_done) {
          auto end = w.raw.find("\r\n\r\n");
          if (end == std::string::npos) continue;
          w.raw.erase(0, end + 4);
          w.head_done = true;
          ++heads;
        }
        Dechunk(w);
        for (size_t nl; (nl = w.data.find('\n')) != std::string::npos; w.data.erase(0, nl + 1)) {
          // The event's object name, "bw-<index>", without parsing the whole event.
          auto at = w.data.find(marker);
          if (at == std::string::npos || at > nl) continue;
          const int idx = std::atoi(w.data.c_str() + at + marker.size());
          if (idx < 0 || idx >= writes) continue;
          int64_t expected = 0;
          if (received[static_cast<size_t>(idx)][events[e].data.u32].compare_exchange_strong(
                  expected, now)) {
            ++delivered;
          }
        }
      }
    }
  });

  // Every watch has its response head before the first write.
  const auto head_deadline = Clock::now() + std::chrono::seconds(10);
  while (heads < watchers && Clock::now() < head_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (heads < watchers) Die("not every watch started");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  std::vector<int64_t> acked(static_cast<size_t>(writes));
  Conn writer(port);
  for (int i = 0; i < writes; ++i) {
    const long before = delivered.load();
    std::string body;
    int st = writer.Do("POST", VmsPath(ns), VmBody(tmpl, ns, "bw-" + std::to_string(i)), &body);
    acked[static_cast<size_t>(i)] = Clock::now().time_since_epoch().count();
    if (st != 201) Die("watch write failed: " + std::to_string(st) + " " + body.substr(0, 300));
    // Next write once this one has fanned out (or after 2 s): one event in flight at a time.
    const auto wait_until = Clock::now() + std::chrono::seconds(2);
    while (delivered.load() < before + watchers && Clock::now() < wait_until) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  stop = true;
  reader.join();
  for (auto& w : ws) ::close(w.fd);
  ::close(ep);

  std::vector<double> lat_us;
  long missing = 0, before_ack = 0;
  for (int i = 0; i < writes; ++i) {
    for (int w = 0; w < watchers; ++w) {
      const int64_t r = received[static_cast<size_t>(i)][static_cast<size_t>(w)].load();
      if (r == 0) {
        ++missing;
        continue;
      }
      const int64_t d = r - acked[static_cast<size_t>(i)];
      if (d < 0) ++before_ack;
      lat_us.push_back(std::max<int64_t>(0, d) / 1000.0);
    }
  }
  Json j = {{"watchers", watchers},
            {"writes", writes},
            {"delivered", static_cast<long>(lat_us.size())},
            {"missing", missing},
            {"delivered_before_ack", before_ack},
            {"latency_us",
             {{"p50", Percentile(lat_us, 50)},
              {"p99", Percentile(lat_us, 99)},
              {"max", Percentile(lat_us, 100)}}}};
  std::printf("%s\n", j.dump().c_str());
  return missing == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() == 4 && a[0] == "wait") return CmdWait(a[1], a[2], std::stoi(a[3]));
  if (a.size() == 7 && a[0] == "preload") {
    return CmdPreload(a[1], a[2], a[3], std::stoi(a[4]), std::stoi(a[5]), ReadFile(a[6]));
  }
  if (a.size() == 6 && a[0] == "watch") {
    return CmdWatch(a[1], a[2], std::stoi(a[3]), std::stoi(a[4]), ReadFile(a[5]));
  }
  std::fprintf(stderr,
               "usage: bench_api_tool wait URL PATH SECONDS\n"
               "       bench_api_tool preload URL NAMESPACE PREFIX COUNT CONCURRENCY TEMPLATE\n"
               "       bench_api_tool watch URL NAMESPACE WATCHERS WRITES TEMPLATE\n");
  return 2;
}
