#include "daemon/notify.h"

#include <systemd/sd-daemon.h>

#include <cstdlib>

#include "common/log.h"

namespace edgevirt::daemon {

Status Notifier::Send(const std::string& state) {
  // unset_environment=0: later calls (the watchdog) still need NOTIFY_SOCKET.
  int r = sd_notify(0, state.c_str());
  if (r < 0) return ErrnoError("sd_notify(" + state + ")", r);
  return Ok();
}

bool Notifier::Enabled() {
  const char* s = std::getenv("NOTIFY_SOCKET");
  return s != nullptr && *s != '\0';
}

std::optional<std::chrono::microseconds> WatchdogPingInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
  // sd_watchdog_enabled(3) recommends pinging at half the timeout.
  return std::chrono::microseconds(usec / 2);
}

Watchdog::Watchdog(Notifier& notifier, std::chrono::microseconds interval, Check check)
    : notifier_(notifier), interval_(interval), check_(std::move(check)) {
  thread_ = std::thread([this] { Loop(); });
}

Watchdog::~Watchdog() { Stop(); }

void Watchdog::EnterShutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutdown_ = true;
}

void Watchdog::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint64_t Watchdog::pings() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pings_;
}

void Watchdog::Loop() {
  bool failing = false;
  auto next = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    bool shutting_down = shutdown_;
    lock.unlock();
    Status alive = shutting_down || !check_ ? Ok() : check_();
    if (alive) {
      if (failing && !shutting_down) EV_LOG(kNotice) << "watchdog: health check passes again";
      failing = false;
      Status sent = notifier_.Ping();
      if (!sent) EV_LOG(kWarning) << "watchdog: " << sent.error().message;
    } else if (!failing) {
      failing = true;
      EV_LOG(kError).Field("ERROR", alive.error().message)
          << "watchdog: health check failed, not pinging the service manager: "
          << alive.error().message;
    }
    lock.lock();
    if (alive) ++pings_;
    // A fixed schedule, so a slow check does not stretch the period.
    next += interval_;
    auto now = std::chrono::steady_clock::now();
    if (next < now) next = now;
    cv_.wait_until(lock, next, [this] { return stop_; });
  }
}

}  // namespace edgevirt::daemon
