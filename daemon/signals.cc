#include "daemon/signals.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>

#include <cerrno>

namespace edgevirt::daemon {

Result<SignalWaiter> SignalWaiter::Create(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals) sigaddset(&set, s);
  if (int r = pthread_sigmask(SIG_BLOCK, &set, nullptr); r != 0) {
    return ErrnoError("block signals", r);
  }
  int fd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd < 0) return ErrnoError("signalfd", errno);
  return SignalWaiter(UniqueFd(fd));
}

Result<std::optional<int>> SignalWaiter::Wait(std::optional<std::chrono::milliseconds> timeout) {
  const auto deadline =
      std::chrono::steady_clock::now() + timeout.value_or(std::chrono::milliseconds(0));
  for (;;) {
    signalfd_siginfo info;
    ssize_t n = ::read(fd_.get(), &info, sizeof(info));
    if (n == static_cast<ssize_t>(sizeof(info))) return std::optional<int>(info.ssi_signo);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return ErrnoError("read signalfd", errno);

    int wait_ms = -1;
    if (timeout) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::optional<int>();
      wait_ms = static_cast<int>(left.count());
    }
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, wait_ms);
    if (r < 0 && errno != EINTR) return ErrnoError("poll signalfd", errno);
  }
}

Deadline::Deadline(std::chrono::milliseconds timeout, std::function<void()> on_expire) {
  thread_ = std::thread([this, timeout, on_expire = std::move(on_expire)] {
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, timeout, [this] { return disarmed_; })) return;
    lock.unlock();
    on_expire();
  });
}

Deadline::~Deadline() { Disarm(); }

void Deadline::Disarm() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    disarmed_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

}  // namespace edgevirt::daemon
