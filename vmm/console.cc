// The guest's serial console on a non-blocking libvirt stream, and screenshots. See console.h.
#include <libvirt/virterror.h>

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "common/fd.h"
#include "vmm/console_libvirt.h"

namespace edgevirt::vmm {
namespace {

using StreamPtr = UniqueHandle<virStream, virStreamFree>;

std::string TakeLibvirtError() {
  const virError* err = virGetLastError();
  std::string msg = err && err->message ? err->message : "unknown libvirt error";
  virResetLastError();
  return msg;
}

// Shared between the stream object and libvirt's callback (which holds a reference until
// libvirt calls the free function: a callback removed while it is dispatched is freed later).
class Core {
 public:
  explicit Core(StreamPtr st) : st_(std::move(st)) {}

  Status Register(const std::shared_ptr<Core>& self) {
    auto* ref = new std::shared_ptr<Core>(self);
    std::lock_guard lock(mu_);
    if (virStreamEventAddCallback(st_.get(), 0, &Core::OnEventThunk, ref, &Core::FreeThunk) < 0) {
      delete ref;
      return MakeError(Code::kInternal, "console stream callback: " + TakeLibvirtError());
    }
    registered_ = true;
    return Ok();
  }

  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) {
    std::lock_guard lock(mu_);
    if (started_ || closed_) return;
    on_data_ = std::move(on_data);
    on_end_ = std::move(on_end);
    started_ = true;
    UpdateLocked();
  }

  void Resume() {
    std::lock_guard lock(mu_);
    if (!paused_) return;
    paused_ = false;
    UpdateLocked();
  }

  void OnWritable(std::function<void()> fn) {
    std::lock_guard lock(mu_);
    on_writable_ = std::move(fn);
  }

  bool Write(std::string_view bytes) {
    std::lock_guard lock(mu_);
    if (closed_ || ended_) return true;  // dropped: the caller gets (or got) on_end
    if (!wbuf_.empty() && wbuf_.size() + bytes.size() > ConsoleStream::kWriteBufferBytes) {
      want_writable_ = true;
      return false;
    }
    wbuf_.append(bytes);
    UpdateLocked();
    return true;
  }

  void Close() {
    std::unique_lock lock(mu_);
    if (closed_) return;
    closed_ = true;
    FinishLocked(/*abort=*/true);
    if (delivering_ && deliver_thread_ != std::this_thread::get_id()) {
      cv_.wait(lock, [&] { return !delivering_; });
    }
    on_data_ = nullptr;
    on_end_ = nullptr;
    on_writable_ = nullptr;
  }

 private:
  static void OnEventThunk(virStreamPtr, int events, void* opaque) {
    std::shared_ptr<Core> self = *static_cast<std::shared_ptr<Core>*>(opaque);
    self->OnEvent(events);
  }
  static void FreeThunk(void* opaque) { delete static_cast<std::shared_ptr<Core>*>(opaque); }

  // The interest the loop should have: READABLE while started and not paused, WRITABLE while
  // bytes wait. Called with mu_ held.
  void UpdateLocked() {
    if (!registered_ || closed_ || ended_) return;
    int events = 0;
    if (started_ && !paused_) events |= VIR_STREAM_EVENT_READABLE;
    if (!wbuf_.empty()) events |= VIR_STREAM_EVENT_WRITABLE;
    if (events == events_) return;
    if (virStreamEventUpdateCallback(st_.get(), events) < 0) {
      virResetLastError();
      return;
    }
    events_ = events;
  }

  // Stops the loop's callbacks and ends the stream. Called with mu_ held.
  void FinishLocked(bool abort) {
    if (registered_) {
      virStreamEventRemoveCallback(st_.get());
      registered_ = false;
    }
    if (st_) {
      if ((abort ? virStreamAbort(st_.get()) : virStreamFinish(st_.get())) < 0) {
        virResetLastError();
      }
    }
  }

  void OnEvent(int events) {
    std::string data;
    bool end = false;
    std::string reason;
    bool notify_writable = false;
    std::function<bool(std::string_view)> on_data;
    std::function<void(std::string)> on_end;
    std::function<void()> on_writable;
    {
      std::lock_guard lock(mu_);
      if (closed_ || ended_ || delivering_) return;
      // Drain client bytes first (each send takes what the device accepts now).
      while (!wbuf_.empty()) {
        int n = virStreamSend(st_.get(), wbuf_.data(), wbuf_.size());
        if (n == -2) break;
        if (n < 0) {
          end = true;
          reason = "console write: " + TakeLibvirtError();
          break;
        }
        wbuf_.erase(0, size_t(n));
      }
      if (!end && want_writable_ && wbuf_.size() < ConsoleStream::kWriteBufferBytes) {
        want_writable_ = false;
        notify_writable = true;
      }
      const bool hangup = events & (VIR_STREAM_EVENT_HANGUP | VIR_STREAM_EVENT_ERROR);
      // On a hangup read even while paused: poll reports it until the stream ends.
      if (!end && started_ && (hangup || (!paused_ && (events & VIR_STREAM_EVENT_READABLE)))) {
        data.resize(ConsoleStream::kReadChunkBytes);
        int n = virStreamRecv(st_.get(), data.data(), data.size());
        if (n > 0) {
          data.resize(size_t(n));
        } else {
          data.clear();
          if (n == 0 || (n == -2 && hangup)) {
            end = true;
          } else if (n == -1) {
            end = true;
            reason = "console read: " + TakeLibvirtError();
          }
        }
      }
      if (end) {
        ended_ = true;
        FinishLocked(/*abort=*/!reason.empty());
      } else {
        UpdateLocked();
      }
      if (!notify_writable && data.empty() && !end) return;
      delivering_ = true;
      deliver_thread_ = std::this_thread::get_id();
      on_data = on_data_;
      on_end = on_end_;
      on_writable = on_writable_;
    }
    if (notify_writable && on_writable) on_writable();
    bool more = true;
    if (!data.empty() && on_data) more = on_data(data);
    if (end && on_end) {
      bool closed;
      {
        std::lock_guard lock(mu_);
        closed = closed_;
      }
      if (!closed) on_end(reason);
    }
    std::lock_guard lock(mu_);
    if (!more && !paused_) {
      paused_ = true;
      UpdateLocked();
    }
    delivering_ = false;
    cv_.notify_all();
  }

  std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  StreamPtr st_;
  bool registered_ = false;
  int events_ = 0;
  bool started_ = false;
  bool paused_ = false;
  bool closed_ = false;
  bool ended_ = false;
  bool want_writable_ = false;
  bool delivering_ = false;
  std::thread::id deliver_thread_;
  std::string wbuf_;
  std::function<bool(std::string_view)> on_data_;
  std::function<void(std::string)> on_end_;
  std::function<void()> on_writable_;
};

class LibvirtConsole final : public ConsoleStream {
 public:
  explicit LibvirtConsole(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  ~LibvirtConsole() override { core_->Close(); }
  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) override {
    core_->Start(std::move(on_data), std::move(on_end));
  }
  void Resume() override { core_->Resume(); }
  bool Write(std::string_view bytes) override { return core_->Write(bytes); }
  void OnWritable(std::function<void()> fn) override { core_->OnWritable(std::move(fn)); }
  void Close() override { core_->Close(); }

 private:
  std::shared_ptr<Core> core_;
};

}  // namespace

Result<std::unique_ptr<ConsoleStream>> OpenLibvirtConsole(virConnectPtr conn, virDomainPtr dom,
                                                          const std::string& what) {
  int active = virDomainIsActive(dom);
  if (active < 0)
    return MakeError(Code::kInternal, "console of " + what + ": " + TakeLibvirtError());
  if (active == 0) return MakeError(Code::kConflict, "console of " + what + ": it is not running");
  StreamPtr st(virStreamNew(conn, VIR_STREAM_NONBLOCK));
  if (!st) return MakeError(Code::kInternal, "console stream: " + TakeLibvirtError());
  if (virDomainOpenConsole(dom, nullptr, st.get(), VIR_DOMAIN_CONSOLE_FORCE) < 0) {
    return MakeError(Code::kUnavailable, "open console of " + what + ": " + TakeLibvirtError());
  }
  auto core = std::make_shared<Core>(std::move(st));
  if (auto s = core->Register(core); !s) {
    core->Close();
    return std::move(s).error();
  }
  return std::unique_ptr<ConsoleStream>(new LibvirtConsole(std::move(core)));
}

Result<std::string> LibvirtScreenshot(virConnectPtr conn, virDomainPtr dom,
                                      const std::string& what) {
  int active = virDomainIsActive(dom);
  if (active < 0) {
    return MakeError(Code::kInternal, "screenshot of " + what + ": " + TakeLibvirtError());
  }
  if (active == 0) {
    return MakeError(Code::kConflict, "screenshot of " + what + ": it is not running");
  }
  StreamPtr st(virStreamNew(conn, 0));
  if (!st) return MakeError(Code::kInternal, "screenshot stream: " + TakeLibvirtError());
  char* mime = virDomainScreenshot(dom, st.get(), 0, 0);
  if (!mime) {
    // No video device (a domain without VNC has none) is libvirt's operation-invalid error.
    const virError* err = virGetLastError();
    Code code = err && err->code == VIR_ERR_OPERATION_INVALID ? Code::kConflict : Code::kInternal;
    return MakeError(code, "screenshot of " + what + ": " + TakeLibvirtError());
  }
  std::string type(mime);
  std::free(mime);
  constexpr size_t kMaxBytes = 256u << 20;
  std::string data;
  char buf[64 * 1024];
  for (;;) {
    int n = virStreamRecv(st.get(), buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      std::string msg = TakeLibvirtError();
      virStreamAbort(st.get());
      virResetLastError();
      return MakeError(Code::kInternal, "screenshot of " + what + ": read: " + msg);
    }
    data.append(buf, size_t(n));
    if (data.size() > kMaxBytes) {
      virStreamAbort(st.get());
      virResetLastError();
      return MakeError(Code::kTooLarge, "screenshot of " + what + ": larger than 256 MiB");
    }
  }
  if (virStreamFinish(st.get()) < 0) {
    return MakeError(Code::kInternal, "screenshot of " + what + ": " + TakeLibvirtError());
  }
  if (type == "image/png") return data;
  auto png = PpmToPng(data);
  if (!png) return std::move(png).error().Wrap("screenshot of " + what + " (" + type + ")");
  return png;
}

}  // namespace edgevirt::vmm
