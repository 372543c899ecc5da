#include "daemon/streams.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <thread>
#include <utility>

#include "common/fd.h"

namespace edgevirt::daemon {
namespace {

// The state of one fd stream, shared by the api::Stream object and its thread.
class FdCore : public std::enable_shared_from_this<FdCore> {
 public:
  FdCore(UniqueFd fd, UniqueFd wake, bool datagram)
      : fd_(std::move(fd)), wake_(std::move(wake)), datagram_(datagram) {}

  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) {
    std::lock_guard lock(mu_);
    if (started_ || closed_) return;
    started_ = true;
    on_data_ = std::move(on_data);
    on_end_ = std::move(on_end);
    thread_ = std::thread([self = shared_from_this()] { self->Run(); });
  }

  void Resume() {
    std::lock_guard lock(mu_);
    if (!paused_) return;
    paused_ = false;
    WakeLocked();
  }

  void OnWritable(std::function<void()> fn) {
    std::lock_guard lock(mu_);
    on_writable_ = std::move(fn);
  }

  bool Write(std::string_view bytes) {
    std::lock_guard lock(mu_);
    if (closed_ || ended_) return true;  // dropped: the caller gets (or got) on_end
    if (queued_ > 0 && queued_ + bytes.size() > kStreamWriteBufferBytes) {
      want_writable_ = true;
      return false;
    }
    if (out_.empty()) {
      // Nothing waits before these bytes: send them on the caller's thread, as much as the
      // socket takes now. The common case then costs no wake-up of the stream's thread (a
      // context switch and an eventfd write and read per message, most of a relayed message's
      // cost). What the socket does not take, and a failed send, go to the buffer: the thread
      // sends the rest once the socket is writable, or meets the error again and ends the
      // stream (on_end with "send: ...").
      const ssize_t n = SendNow(bytes);
      if (n >= 0 && (datagram_ || size_t(n) == bytes.size())) return true;
      if (n > 0) bytes.remove_prefix(size_t(n));
    }
    if (datagram_ || out_.empty()) {
      out_.emplace_back(bytes);
    } else {
      out_.back().append(bytes);
    }
    queued_ += bytes.size();
    WakeLocked();
    return true;
  }

  void Close() {
    std::thread thread;
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      closed_ = true;
      WakeLocked();
      thread = std::move(thread_);
      // The peer sees the end at once (QEMU's chardev socket accepts its next client only
      // then), not when the last reference to this core goes.
      ::shutdown(fd_.get(), SHUT_RDWR);
    }
    if (!thread.joinable()) return;
    if (thread.get_id() == std::this_thread::get_id()) {
      thread.detach();  // inside a callback: the thread sees closed_ when it returns
    } else {
      thread.join();
    }
  }

 private:
  void WakeLocked() {
    uint64_t one = 1;
    if (::write(wake_.get(), &one, sizeof one) < 0) {
      // EAGAIN: the counter is already non-zero, the thread wakes anyway.
    }
  }

  // One non-blocking send of what the socket takes now, retried on EINTR: the bytes sent, or -1
  // with errno set.
  ssize_t SendNow(std::string_view bytes) {
    ssize_t n;
    do {
      n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  // Sends what the socket takes now. Returns an error text when the connection failed.
  std::string FlushLocked() {
    while (!out_.empty()) {
      std::string& front = out_.front();
      const ssize_t n = SendNow(front);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return std::string("send: ") + std::strerror(errno);
      }
      if (datagram_ || size_t(n) == front.size()) {
        queued_ -= front.size();
        out_.pop_front();
      } else {
        front.erase(0, size_t(n));
        queued_ -= size_t(n);
      }
    }
    return "";
  }

  void Run() {
    std::string buf(datagram_ ? kMaxDatagramBytes : 64 * 1024, '\0');
    for (;;) {
      short events = 0;
      {
        std::lock_guard lock(mu_);
        if (closed_ || ended_) return;
        if (!paused_) events |= POLLIN;
        if (!out_.empty()) events |= POLLOUT;
      }
      pollfd fds[2] = {{fd_.get(), events, 0}, {wake_.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
      if (fds[1].revents & POLLIN) {
        uint64_t v;
        if (::read(wake_.get(), &v, sizeof v) < 0) {
          // EAGAIN: nothing to reset.
        }
      }
      std::string data;
      bool have_data = false;
      bool end = false;
      std::string reason;
      bool notify_writable = false;
      std::function<bool(std::string_view)> on_data;
      std::function<void(std::string)> on_end;
      std::function<void()> on_writable;
      {
        std::lock_guard lock(mu_);
        if (closed_) return;
        const short rev = fds[0].revents;
        if (!out_.empty()) reason = FlushLocked();
        if (!reason.empty()) end = true;
        if (!end && want_writable_ && queued_ < kStreamWriteBufferBytes) {
          want_writable_ = false;
          notify_writable = true;
        }
        // After a hangup or an error read even while paused: poll reports it until handled.
        const bool trouble = rev & (POLLHUP | POLLERR);
        if (!end && ((rev & POLLIN && !paused_) || trouble)) {
          ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), MSG_DONTWAIT);
          if (n > 0 || (n == 0 && datagram_)) {
            data.assign(buf.data(), size_t(n));
            have_data = true;
          } else if (n == 0) {
            end = true;  // end of file
          } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            end = true;
            reason = std::string("recv: ") + std::strerror(errno);
          } else if (rev & POLLHUP) {
            end = true;
          }
        }
        if (end) ended_ = true;
        on_data = on_data_;
        on_end = on_end_;
        on_writable = on_writable_;
      }
      if (notify_writable && on_writable) on_writable();
      bool more = true;
      if (have_data && on_data) more = on_data(data);
      if (end) {
        if (on_end) on_end(reason);
        return;
      }
      std::lock_guard lock(mu_);
      if (!more) paused_ = true;
    }
  }

  std::mutex mu_;  // guards everything below but the fds
  UniqueFd fd_;
  UniqueFd wake_;  // eventfd: Write, Resume and Close wake the thread
  const bool datagram_;
  std::thread thread_;
  bool started_ = false;
  bool paused_ = false;
  bool closed_ = false;
  bool ended_ = false;
  bool want_writable_ = false;
  std::deque<std::string> out_;  // datagrams, or one run of bytes
  size_t queued_ = 0;
  std::function<bool(std::string_view)> on_data_;
  std::function<void(std::string)> on_end_;
  std::function<void()> on_writable_;
};

class FdStream final : public api::Stream {
 public:
  explicit FdStream(std::shared_ptr<FdCore> core) : core_(std::move(core)) {}
  ~FdStream() override { core_->Close(); }
  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) override {
    core_->Start(std::move(on_data), std::move(on_end));
  }
  void Resume() override { core_->Resume(); }
  bool Write(std::string_view bytes) override { return core_->Write(bytes); }
  void OnWritable(std::function<void()> fn) override { core_->OnWritable(std::move(fn)); }
  void Close() override { core_->Close(); }

 private:
  std::shared_ptr<FdCore> core_;
};

Result<std::unique_ptr<api::Stream>> MakeFdStream(UniqueFd fd, bool datagram) {
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoError("eventfd", errno);
  int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoError("fcntl O_NONBLOCK", errno);
  }
  auto core = std::make_shared<FdCore>(std::move(fd), std::move(wake), datagram);
  return std::unique_ptr<api::Stream>(new FdStream(std::move(core)));
}

// A connect() that gives up after `timeout` (non-blocking connect, then poll).
Status ConnectWithin(int fd, const sockaddr* addr, socklen_t len, std::chrono::milliseconds timeout,
                     const std::string& what) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoError("fcntl O_NONBLOCK", errno);
  }
  if (::connect(fd, addr, len) == 0) return Ok();
  if (errno != EINPROGRESS && errno != EAGAIN) {
    return MakeError(Code::kUnavailable, "connect to " + what + ": " + std::strerror(errno));
  }
  pollfd p{fd, POLLOUT, 0};
  int r;
  do {
    r = ::poll(&p, 1, int(timeout.count()));
  } while (r < 0 && errno == EINTR);
  if (r == 0) return MakeError(Code::kUnavailable, "connect to " + what + ": timed out");
  int err = 0;
  socklen_t elen = sizeof err;
  if (r < 0 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0) err = errno;
  if (err != 0) {
    return MakeError(Code::kUnavailable, "connect to " + what + ": " + std::strerror(err));
  }
  return Ok();
}

struct IpAddress {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
};

Result<IpAddress> ParseIp(const std::string& ip, uint16_t port) {
  if (port == 0) return MakeError(Code::kInvalid, "port 0");
  IpAddress a;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&a.ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
  if (::inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    a.len = sizeof *v4;
    a.family = AF_INET;
  } else if (::inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    a.len = sizeof *v6;
    a.family = AF_INET6;
  } else {
    return MakeError(Code::kInvalid, "not an IP address: \"" + ip + "\"");
  }
  return a;
}

std::string HostPort(const std::string& ip, uint16_t port) {
  return (ip.find(':') != std::string::npos ? "[" + ip + "]" : ip) + ":" + std::to_string(port);
}

class ConsoleAdapter final : public api::Stream {
 public:
  explicit ConsoleAdapter(std::unique_ptr<vmm::ConsoleStream> console)
      : console_(std::move(console)) {}
  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) override {
    console_->Start(std::move(on_data), std::move(on_end));
  }
  void Resume() override { console_->Resume(); }
  bool Write(std::string_view bytes) override { return console_->Write(bytes); }
  void OnWritable(std::function<void()> fn) override { console_->OnWritable(std::move(fn)); }
  void Close() override { console_->Close(); }

 private:
  std::unique_ptr<vmm::ConsoleStream> console_;
};

}  // namespace

Result<std::unique_ptr<api::Stream>> OpenUnixStream(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path[0] != '/' || path.size() >= sizeof addr.sun_path) {
    return MakeError(Code::kInvalid, "unix socket path \"" + path + "\": not absolute or too long");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket", errno);
  RETURN_IF_ERROR(ConnectWithin(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr,
                                std::chrono::seconds(5), path));
  return MakeFdStream(std::move(fd), false);
}

Result<std::unique_ptr<api::Stream>> OpenTcpStream(const std::string& ip, uint16_t port,
                                                   std::chrono::milliseconds timeout,
                                                   uint32_t mark) {
  ASSIGN_OR_RETURN(IpAddress a, ParseIp(ip, port));
  UniqueFd fd(::socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket", errno);
  if (mark != 0 && ::setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    return ErrnoError("SO_MARK", errno);
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  RETURN_IF_ERROR(ConnectWithin(fd.get(), reinterpret_cast<sockaddr*>(&a.ss), a.len, timeout,
                                HostPort(ip, port)));
  return MakeFdStream(std::move(fd), false);
}

Result<std::unique_ptr<api::Stream>> OpenUdpStream(const std::string& ip, uint16_t port,
                                                   uint32_t mark) {
  ASSIGN_OR_RETURN(IpAddress a, ParseIp(ip, port));
  UniqueFd fd(::socket(a.family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket", errno);
  if (mark != 0 && ::setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    return ErrnoError("SO_MARK", errno);
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a.ss), a.len) < 0) {
    return MakeError(Code::kUnavailable,
                     "connect to udp " + HostPort(ip, port) + ": " + std::strerror(errno));
  }
  return MakeFdStream(std::move(fd), true);
}

std::unique_ptr<api::Stream> WrapConsole(std::unique_ptr<vmm::ConsoleStream> console) {
  return std::make_unique<ConsoleAdapter>(std::move(console));
}

Result<std::unique_ptr<api::Stream>> OpenSerialConsole(vmm::Hypervisor& hv, std::string_view domain,
                                                       const vmm::ConsoleSpec& console) {
  switch (console.kind) {
    case vmm::ConsoleKind::kPty: {
      ASSIGN_OR_RETURN(std::unique_ptr<vmm::ConsoleStream> c, hv.OpenConsole(domain));
      return WrapConsole(std::move(c));
    }
    case vmm::ConsoleKind::kUnix:
      return OpenUnixStream(console.socket_path);
    case vmm::ConsoleKind::kNone:
      break;
  }
  return MakeError(Code::kNotFound, "domain " + std::string(domain) + " has no serial console");
}

// ---- SessionRegistry ----

namespace {
class Session;
}

struct SessionRegistry::State {
  std::mutex mu;  // guards sessions
  struct Entry {
    const void* id = nullptr;
    std::weak_ptr<Session> session;
  };
  std::unordered_map<std::string, Entry> sessions;
};

namespace {

// A registered stream: forwards to the device stream; Replace ends it from the registry.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::unique_ptr<api::Stream> inner, std::weak_ptr<SessionRegistry::State> registry,
          std::string key)
      : inner_(std::move(inner)), registry_(std::move(registry)), key_(std::move(key)) {}

  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) {
    std::string replaced;
    {
      std::lock_guard lock(mu_);
      if (closed_ || started_) return;
      started_ = true;
      if (!ended_) {
        on_end_ = std::move(on_end);
      } else {
        replaced = reason_;
      }
    }
    if (!replaced.empty()) {  // replaced before it started
      on_end(replaced);
      return;
    }
    std::weak_ptr<Session> weak = weak_from_this();
    inner_->Start(std::move(on_data), [weak](std::string reason) {
      if (auto self = weak.lock()) self->End(std::move(reason));
    });
  }

  api::Stream& inner() { return *inner_; }

  void Replace(const std::string& reason) {
    std::function<void(std::string)> on_end;
    {
      std::lock_guard lock(mu_);
      if (closed_ || ended_) return;
      ended_ = true;
      reason_ = reason;
      on_end = std::move(on_end_);
    }
    inner_->Close();  // waits for the device side's callbacks: no on_data after on_end
    if (on_end) on_end(reason);
  }

  void Close() {
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      closed_ = true;
      on_end_ = nullptr;
    }
    inner_->Close();
    Unregister();
  }

 private:
  void End(std::string reason) {
    std::function<void(std::string)> on_end;
    {
      std::lock_guard lock(mu_);
      if (closed_ || ended_) return;
      ended_ = true;
      on_end = std::move(on_end_);
    }
    Unregister();
    if (on_end) on_end(std::move(reason));
  }

  void Unregister() {
    auto registry = registry_.lock();
    if (!registry) return;
    std::lock_guard lock(registry->mu);
    auto it = registry->sessions.find(key_);
    if (it != registry->sessions.end() && it->second.id == this) registry->sessions.erase(it);
  }

  std::mutex mu_;  // guards the flags and on_end_
  std::unique_ptr<api::Stream> inner_;
  std::weak_ptr<SessionRegistry::State> registry_;
  const std::string key_;
  bool started_ = false;
  bool ended_ = false;
  bool closed_ = false;
  std::string reason_;
  std::function<void(std::string)> on_end_;
};

class SessionStream final : public api::Stream {
 public:
  explicit SessionStream(std::shared_ptr<Session> s) : s_(std::move(s)) {}
  ~SessionStream() override { s_->Close(); }
  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) override {
    s_->Start(std::move(on_data), std::move(on_end));
  }
  void Resume() override { s_->inner().Resume(); }
  bool Write(std::string_view bytes) override { return s_->inner().Write(bytes); }
  void OnWritable(std::function<void()> fn) override { s_->inner().OnWritable(std::move(fn)); }
  void Close() override { s_->Close(); }

 private:
  std::shared_ptr<Session> s_;
};

}  // namespace

SessionRegistry::SessionRegistry() : state_(std::make_shared<State>()) {}
SessionRegistry::~SessionRegistry() = default;

std::string SessionRegistry::ReplacedReason(std::string_view kind) {
  return "a new " + std::string(kind) + " connection replaced this one";
}

std::unique_ptr<api::Stream> SessionRegistry::Adopt(const std::string& vmi_uid,
                                                    std::string_view kind,
                                                    std::unique_ptr<api::Stream> stream) {
  std::string key = vmi_uid + '\0' + std::string(kind);
  auto session = std::make_shared<Session>(std::move(stream), state_, key);
  std::shared_ptr<Session> old;
  {
    std::lock_guard lock(state_->mu);
    State::Entry& e = state_->sessions[key];
    old = e.session.lock();
    e = State::Entry{session.get(), session};
  }
  if (old) old->Replace(ReplacedReason(kind));
  return std::make_unique<SessionStream>(std::move(session));
}

Result<std::unique_ptr<api::Stream>> SessionRegistry::Open(
    const std::string& vmi_uid, std::string_view kind,
    const std::function<Result<std::unique_ptr<api::Stream>>()>& open) {
  const std::string key = vmi_uid + '\0' + std::string(kind);
  std::shared_ptr<Session> old;
  {
    std::lock_guard lock(state_->mu);
    auto it = state_->sessions.find(key);
    if (it != state_->sessions.end()) {
      old = it->second.session.lock();
      state_->sessions.erase(it);
    }
  }
  if (old) old->Replace(ReplacedReason(kind));
  ASSIGN_OR_RETURN(std::unique_ptr<api::Stream> stream, open());
  return Adopt(vmi_uid, kind, std::move(stream));
}

size_t SessionRegistry::size() const {
  std::lock_guard lock(state_->mu);
  size_t n = 0;
  for (const auto& [key, e] : state_->sessions) n += e.session.expired() ? 0 : 1;
  return n;
}

}  // namespace edgevirt::daemon
