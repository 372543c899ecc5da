#include "daemon/work_queue.h"

#include <algorithm>

#include "common/log.h"

namespace edgevirt::daemon {

void WorkQueue::AddLocked(const std::string& key) {
  if (shut_down_) return;
  delayed_.erase(key);
  if (processing_.count(key) != 0) {
    dirty_.insert(key);
    return;
  }
  if (queued_.insert(key).second) {
    queue_.push_back(key);
    cv_.notify_one();
  }
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard lock(mu_);
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, Clock::duration delay) {
  if (delay <= Clock::duration::zero()) return Add(key);
  std::lock_guard lock(mu_);
  if (shut_down_ || queued_.count(key) != 0) return;
  const auto due = Clock::now() + delay;
  auto [it, inserted] = delayed_.emplace(key, due);
  if (!inserted) it->second = std::min(it->second, due);
  cv_.notify_one();
}

void WorkQueue::PromoteDueLocked(Clock::time_point now) {
  for (auto it = delayed_.begin(); it != delayed_.end();) {
    if (it->second <= now) {
      std::string key = it->first;
      it = delayed_.erase(it);
      AddLocked(key);
    } else {
      ++it;
    }
  }
}

std::optional<std::string> WorkQueue::Get() {
  std::unique_lock lock(mu_);
  while (true) {
    if (shut_down_) return std::nullopt;
    PromoteDueLocked(Clock::now());
    if (!queue_.empty()) {
      std::string key = std::move(queue_.front());
      queue_.pop_front();
      queued_.erase(key);
      processing_.insert(key);
      return key;
    }
    if (delayed_.empty()) {
      cv_.wait(lock);
    } else {
      auto next = std::min_element(delayed_.begin(), delayed_.end(), [](auto& a, auto& b) {
                    return a.second < b.second;
                  })->second;
      cv_.wait_until(lock, next);
    }
  }
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard lock(mu_);
  processing_.erase(key);
  if (dirty_.erase(key) != 0) AddLocked(key);
}

void WorkQueue::ShutDown() {
  std::lock_guard lock(mu_);
  shut_down_ = true;
  cv_.notify_all();
}

WorkQueue::Clock::duration WorkQueue::NextBackoff(const std::string& key, Clock::duration max) {
  std::lock_guard lock(mu_);
  int n = failures_[key]++;
  Clock::duration d = std::chrono::seconds(1);
  for (int i = 0; i < n && d < max; ++i) d *= 2;
  return std::min(d, max);
}

void WorkQueue::Forget(const std::string& key) {
  std::lock_guard lock(mu_);
  failures_.erase(key);
}

size_t WorkQueue::Len() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

ReconcileLoop::ReconcileLoop(std::string name, Reconcile reconcile, std::function<void()> resync,
                             std::chrono::milliseconds resync_period)
    : name_(std::move(name)),
      reconcile_(std::move(reconcile)),
      resync_(std::move(resync)),
      resync_period_(resync_period) {}

ReconcileLoop::~ReconcileLoop() { Stop(); }

void ReconcileLoop::Start() {
  worker_ = std::thread([this] { Work(); });
  resyncer_ = std::thread([this] { Resync(); });
}

void ReconcileLoop::Stop() {
  {
    std::lock_guard lock(stop_mu_);
    if (stopping_.exchange(true)) return;
  }
  stop_cv_.notify_all();
  queue_.ShutDown();
  if (worker_.joinable()) worker_.join();
  if (resyncer_.joinable()) resyncer_.join();
}

void ReconcileLoop::SleepFor(std::chrono::milliseconds d) {
  std::unique_lock lock(stop_mu_);
  stop_cv_.wait_for(lock, d, [this] { return stopping_.load(); });
}

void ReconcileLoop::Resync() {
  std::unique_lock lock(stop_mu_);
  while (!stopping_) {
    stop_cv_.wait_for(lock, resync_period_);
    if (stopping_) return;
    lock.unlock();
    resync_();
    lock.lock();
  }
}

void ReconcileLoop::Work() {
  while (true) {
    auto key = queue_.Get();
    if (!key) return;
    {
      std::lock_guard lock(idle_mu_);
      busy_ = true;
    }
    Status s = reconcile_(*key);
    if (!s) {
      auto delay = queue_.NextBackoff(*key, std::chrono::seconds(60));
      EV_LOG(kWarning).Field("KEY", *key)
          << name_ << ": reconcile " << *key << ": " << s.error().message << " (retry in "
          << std::chrono::duration_cast<std::chrono::seconds>(delay).count() << "s)";
      queue_.AddAfter(*key, delay);
    } else {
      queue_.Forget(*key);
    }
    queue_.Done(*key);
    {
      std::lock_guard lock(idle_mu_);
      busy_ = false;
    }
    idle_cv_.notify_all();
  }
}

bool ReconcileLoop::WaitIdle(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::unique_lock lock(idle_mu_);
    if (!busy_ && queue_.Len() == 0) return true;
    idle_cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace edgevirt::daemon
