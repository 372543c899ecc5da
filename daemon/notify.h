// systemd service notification (sd_notify(3)) and the watchdog keep-alive.
//
// Every call is a no-op when NOTIFY_SOCKET is unset (not started by systemd, or Type=simple),
// so the daemon behaves the same with and without a service manager.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "common/result.h"

namespace edgevirt::daemon {

// Sends state lines to the service manager through sd_notify(3). NOTIFY_SOCKET is left in the
// environment: the watchdog thread keeps using it after start. Thread-safe (each call is one
// datagram).
class Notifier {
 public:
  // "READY=1": the store is open and every API socket listens.
  Status Ready() { return Send("READY=1"); }
  // "STATUS=<text>": free text shown by `systemctl status`.
  Status SetStatus(std::string_view text) { return Send("STATUS=" + std::string(text)); }
  // "STOPPING=1": a graceful stop has begun.
  Status Stopping() { return Send("STOPPING=1"); }
  // "WATCHDOG=1": the daemon is alive.
  Status Ping() { return Send("WATCHDOG=1"); }

  // Sends one or more newline-separated assignments. Returns kUnavailable if the socket could
  // not be reached; Ok (and nothing is sent) when NOTIFY_SOCKET is unset.
  Status Send(const std::string& state);

  // Whether NOTIFY_SOCKET is set.
  static bool Enabled();
};

// The keep-alive period asked for by the service manager: half of WATCHDOG_USEC
// (sd_watchdog_enabled(3), which also honours WATCHDOG_PID), or nullopt when there is no
// watchdog.
std::optional<std::chrono::microseconds> WatchdogPingInterval();

// Sends "WATCHDOG=1" every `interval` from its own thread, but only while `check` succeeds:
// a daemon whose store or io threads stopped answering stops pinging, and the service manager
// restarts it (WatchdogSec=). A failing check is logged (once per failure streak).
class Watchdog {
 public:
  using Check = std::function<Status()>;

  Watchdog(Notifier& notifier, std::chrono::microseconds interval, Check check);
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog();  // stops the thread

  // From now on pings without checking: during a graceful stop the checked parts go away
  // on purpose, and the stop is bounded by shutdown.timeout instead.
  void EnterShutdown();
  // Stops and joins the thread. Idempotent.
  void Stop();

  // Pings sent so far (tests).
  uint64_t pings() const;

 private:
  void Loop();

  Notifier& notifier_;
  const std::chrono::microseconds interval_;
  const Check check_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;      // guarded by mu_
  bool shutdown_ = false;  // guarded by mu_
  uint64_t pings_ = 0;     // guarded by mu_
  std::thread thread_;
};

}  // namespace edgevirt::daemon
