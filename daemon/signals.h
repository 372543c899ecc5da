// Signal handling on the main thread, and the bound on a graceful stop.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <thread>

#include "common/fd.h"
#include "common/result.h"

namespace edgevirt::daemon {

// Blocks the given signals in the calling thread and reads them from a signalfd(2).
//
// Create it on the main thread before any other thread exists: threads inherit the blocked
// mask, so the signals are then delivered to no thread at all and stay pending on the
// signalfd, where the main thread picks them up synchronously (no async-signal-safety
// concerns, no lost signals while the main thread is busy).
class SignalWaiter {
 public:
  static Result<SignalWaiter> Create(std::initializer_list<int> signals);

  // Waits up to `timeout` (forever if nullopt) for one of the signals; returns its number, or
  // nullopt on timeout. EINTR is retried.
  Result<std::optional<int>> Wait(std::optional<std::chrono::milliseconds> timeout);

  int fd() const { return fd_.get(); }

 private:
  explicit SignalWaiter(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// Runs `on_expire` on its own thread if Disarm() is not called within `timeout`. The daemon
// arms one when a graceful stop begins; on_expire logs and calls _exit(1), so a stop that
// hangs (a stuck connection, a stuck store close) still ends within shutdown.timeout.
class Deadline {
 public:
  Deadline(std::chrono::milliseconds timeout, std::function<void()> on_expire);
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;
  ~Deadline();  // disarms

  void Disarm();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool disarmed_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace edgevirt::daemon
