// WorkQueue: the controller's de-duplicating key queue (client-go's rate-limited work queue,
// reduced to what one reconcile thread needs).
//
// A key is queued at most once however often it is added; a key added while it is being
// processed is queued again when its processing is Done (so a change that arrives mid-reconcile
// is never lost, and one key is never reconciled by two threads). AddAfter delays a key; an
// immediate Add of the same key wins over a pending delay. Thread-safe: store watches, libvirt
// events and the reconcile thread all add.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "common/result.h"

namespace edgevirt::daemon {

class WorkQueue {
 public:
  using Clock = std::chrono::steady_clock;

  void Add(const std::string& key);
  // Queues `key` once `delay` has passed (earliest pending time wins).
  void AddAfter(const std::string& key, Clock::duration delay);
  // Blocks until a key is ready or the queue shuts down (nullopt). The caller must call Done.
  std::optional<std::string> Get();
  void Done(const std::string& key);
  // Wakes every Get with nullopt; later Adds are ignored.
  void ShutDown();

  // Per-key exponential backoff for failures: 1 s, 2 s, 4 s ... capped at `max`; Forget resets.
  Clock::duration NextBackoff(const std::string& key, Clock::duration max);
  void Forget(const std::string& key);

  size_t Len() const;

 private:
  void AddLocked(const std::string& key);
  void PromoteDueLocked(Clock::time_point now);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;                     // guarded by mu_
  std::set<std::string> queued_;                      // guarded by mu_: keys in queue_
  std::set<std::string> processing_;                  // guarded by mu_
  std::set<std::string> dirty_;                       // guarded by mu_: re-added while processing
  std::map<std::string, Clock::time_point> delayed_;  // guarded by mu_
  std::map<std::string, int> failures_;               // guarded by mu_
  bool shut_down_ = false;                            // guarded by mu_
};

// The skeleton every controller of the daemon runs on (VMs, claims): one worker thread draining
// a WorkQueue — a failed key comes back after its backoff (1 s … 60 s), a successful one has
// its backoff forgotten —, one thread calling `resync` every `resync_period`, and idle
// tracking for tests. What feeds the queue (store watches, libvirt events) is the owner's.
class ReconcileLoop {
 public:
  using Reconcile = std::function<Status(const std::string& key)>;
  // `name` prefixes the log line of a failed reconcile.
  ReconcileLoop(std::string name, Reconcile reconcile, std::function<void()> resync,
                std::chrono::milliseconds resync_period);
  ~ReconcileLoop();  // Stop()
  ReconcileLoop(const ReconcileLoop&) = delete;
  ReconcileLoop& operator=(const ReconcileLoop&) = delete;

  void Start();  // the worker and resync threads
  // Shuts the queue down (a reconcile in progress finishes) and joins both threads. Idempotent.
  void Stop();
  bool stopping() const { return stopping_; }
  // Sleeps up to `d`, less if Stop is called (for the owner's retry loops).
  void SleepFor(std::chrono::milliseconds d);
  WorkQueue& queue() { return queue_; }
  // True once no key is queued or being reconciled (waits up to `timeout`).
  bool WaitIdle(std::chrono::milliseconds timeout);

 private:
  void Work();
  void Resync();

  const std::string name_;
  const Reconcile reconcile_;
  const std::function<void()> resync_;
  const std::chrono::milliseconds resync_period_;
  WorkQueue queue_;
  std::thread worker_, resyncer_;
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::mutex idle_mu_;
  std::condition_variable idle_cv_;
  bool busy_ = false;  // guarded by idle_mu_
};

}  // namespace edgevirt::daemon
