// Private to store/: the watch fan-out. The committer publishes each committed batch to the
// Hub, which queues matching events on every registered WatchState; a WatchImpl consumes its
// state's queue after replaying older events from the `events` database.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "common/result.h"
#include "store/lmdb_env.h"
#include "store/store.h"

namespace edgevirt::store::internal {

using EventPtr = std::shared_ptr<const Event>;
using NotifyFn = std::shared_ptr<const std::function<void()>>;

// Which events a watch wants. An empty kind selects every object (any group); otherwise group
// and kind must match exactly. Empty ns / name select all.
struct WatchFilter {
  std::string group;
  std::string kind;
  std::string ns;
  std::string name;
  bool Matches(const ObjectKey& key) const;
};

// The part of a watch shared between the committer (producer) and the consumer.
class WatchState {
 public:
  WatchState(WatchFilter filter, size_t queue_limit)
      : filter_(std::move(filter)), queue_limit_(queue_limit) {}

  // Producer: queues the events that match the filter. If the queue would exceed its limit the
  // watch breaks with kUnavailable and the queue is freed. Returns the notify callback to run
  // (after the caller has released its locks) or nullptr.
  NotifyFn Push(const std::vector<EventPtr>& events);
  // Drops queued events with RV <= floor and ignores such events from now on: the watch
  // replays them from the database (or they precede its start).
  void SetFloor(uint64_t floor);
  // Breaks the watch with `error` (first error wins). Returns the callback to run, if any.
  NotifyFn Break(Error error);

  // Consumer: waits up to `timeout` for a queued event. Returns nullptr on timeout and the
  // break error once broken (queued events are dropped then).
  Result<EventPtr> Pop(std::chrono::milliseconds timeout);
  // Consumer: the break error, if any.
  std::optional<Error> broken() const;
  // Consumer: true if an event is queued or the watch is broken.
  bool HasPending() const;
  // Replaces the callback run by Push/Break.
  void SetNotify(std::function<void()> notify);
  NotifyFn notify() const;

 private:
  const WatchFilter filter_;
  const size_t queue_limit_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EventPtr> queue_;   // guarded by mu_
  uint64_t floor_ = 0;           // guarded by mu_
  std::optional<Error> broken_;  // guarded by mu_
  NotifyFn notify_;              // guarded by mu_
};

// The list of live watches and the RV up to which events have been handed to them.
class Hub {
 public:
  explicit Hub(uint64_t published_rv) : published_rv_(published_rv) {}

  // Adds `state` and returns the published RV C: every event with RV > C will be pushed to
  // `state`, every event with RV <= C is already in the events database. kUnavailable once
  // closed.
  Result<uint64_t> Register(std::shared_ptr<WatchState> state);
  void Unregister(const WatchState* state);
  // Hands the events of one committed batch (RVs up to `rv`) to every watch, then runs the
  // notify callbacks outside the lock.
  void Publish(uint64_t rv, const std::vector<EventPtr>& events);
  // Breaks every registered watch with `error`; with `close`, also refuses new ones.
  void BreakAll(const Error& error, bool close);
  void Close() { BreakAll(MakeError(Code::kUnavailable, "store is closing"), true); }
  size_t size() const;

 private:
  mutable std::mutex mu_;
  uint64_t published_rv_;                              // guarded by mu_
  std::vector<std::shared_ptr<WatchState>> watchers_;  // guarded by mu_
  bool closed_ = false;                                // guarded by mu_
};

// The Watch handed to callers. Replays (start, replay_end] from the events database in short
// read transactions, then delivers queued live events with RV > live_floor.
class WatchImpl : public Watch {
 public:
  // `start` is the RV after which events are delivered, `published` the Hub's RV at
  // registration. Events in (start, published] are replayed from the database; live events
  // above max(start, published) come from the queue.
  WatchImpl(std::weak_ptr<Env> env, std::shared_ptr<Hub> hub, std::shared_ptr<WatchState> state,
            WatchFilter filter, uint64_t start, uint64_t published);
  ~WatchImpl() override;

  // Replays the first chunk in `txn`, the transaction in which StartWatch checked retention,
  // so that the check and the first read see the same log.
  Status PrimeReplay(const Env& env, MDB_txn* txn);

  Result<std::optional<Event>> Next(std::chrono::milliseconds timeout) override;
  Result<std::optional<Event>> TryNext() override { return Next(std::chrono::milliseconds(0)); }
  void SetNotify(std::function<void()> notify) override;
  uint64_t last_rv() const override { return last_rv_.load(std::memory_order_relaxed); }

 private:
  // Reads up to one chunk of events after replay_pos_ into replay_buf_ (filtered).
  Status ReplayChunk(const Env& env, MDB_txn* txn);
  Result<std::optional<Event>> Deliver(const Event& event);

  // Weak: a Watch that outlives its Store must not keep the environment (and its lock) open.
  // Closing the Store breaks the watch first, so replay never needs an expired Env.
  std::weak_ptr<Env> env_;
  std::shared_ptr<Hub> hub_;
  std::shared_ptr<WatchState> state_;
  const WatchFilter filter_;
  // Consumer-thread state.
  uint64_t replay_pos_;        // last RV read from the database
  const uint64_t replay_end_;  // replay stops after this RV
  const uint64_t live_floor_;  // live events at or below this RV are skipped
  std::deque<Event> replay_buf_;
  std::atomic<uint64_t> last_rv_;
};

}  // namespace edgevirt::store::internal
