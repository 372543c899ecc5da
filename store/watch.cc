#include "store/watch.h"

#include <algorithm>

#include "common/log.h"
#include "store/codec.h"

namespace edgevirt::store::internal {
namespace {

// One replay read transaction reads at most this many events or bytes, so a watch replaying a
// long log never holds a read transaction (and thus a map resize) for long.
constexpr size_t kReplayChunkEvents = 512;
constexpr size_t kReplayChunkBytes = 4u << 20;

void RunNotify(const NotifyFn& fn) {
  if (!fn || !*fn) return;
  try {
    (*fn)();
  } catch (...) {
    // The callback belongs to the caller; an exception must not take the committer down.
    EV_LOG(kWarning) << "store: a watch notify callback threw; ignored";
  }
}

}  // namespace

bool WatchFilter::Matches(const ObjectKey& key) const {
  if (!kind.empty() && (key.kind != kind || key.group != group)) return false;
  if (!ns.empty() && key.ns != ns) return false;
  if (!name.empty() && key.name != name) return false;
  return true;
}

NotifyFn WatchState::Push(const std::vector<EventPtr>& events) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_) return nullptr;
  bool added = false;
  for (const EventPtr& event : events) {
    if (event->object.resource_version <= floor_ || !filter_.Matches(event->object.key)) continue;
    if (queue_.size() >= queue_limit_) {
      broken_ = MakeError(Code::kUnavailable, "watch consumer too slow: more than " +
                                                  std::to_string(queue_limit_) +
                                                  " events queued; restart the watch");
      queue_.clear();
      queue_.shrink_to_fit();
      cv_.notify_all();
      return notify_;
    }
    queue_.push_back(event);
    added = true;
  }
  if (!added) return nullptr;
  cv_.notify_all();
  return notify_;
}

void WatchState::SetFloor(uint64_t floor) {
  std::lock_guard<std::mutex> lock(mu_);
  floor_ = floor;
  while (!queue_.empty() && queue_.front()->object.resource_version <= floor) queue_.pop_front();
}

NotifyFn WatchState::Break(Error error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_) return nullptr;
  broken_ = std::move(error);
  queue_.clear();
  queue_.shrink_to_fit();
  cv_.notify_all();
  return notify_;
}

Result<EventPtr> WatchState::Pop(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (queue_.empty() && !broken_ && timeout.count() > 0) {
    cv_.wait_for(lock, timeout, [&] { return !queue_.empty() || broken_.has_value(); });
  }
  if (broken_) return *broken_;
  if (queue_.empty()) return EventPtr();
  EventPtr event = std::move(queue_.front());
  queue_.pop_front();
  return event;
}

std::optional<Error> WatchState::broken() const {
  std::lock_guard<std::mutex> lock(mu_);
  return broken_;
}

bool WatchState::HasPending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return broken_.has_value() || !queue_.empty();
}

NotifyFn WatchState::notify() const {
  std::lock_guard<std::mutex> lock(mu_);
  return notify_;
}

void WatchState::SetNotify(std::function<void()> notify) {
  auto fn = std::make_shared<const std::function<void()>>(std::move(notify));
  std::lock_guard<std::mutex> lock(mu_);
  notify_ = std::move(fn);
}

Result<uint64_t> Hub::Register(std::shared_ptr<WatchState> state) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return MakeError(Code::kUnavailable, "store is closing");
  watchers_.push_back(std::move(state));
  return published_rv_;
}

void Hub::Unregister(const WatchState* state) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(watchers_.begin(), watchers_.end(),
                         [&](const std::shared_ptr<WatchState>& w) { return w.get() == state; });
  if (it != watchers_.end()) {
    std::swap(*it, watchers_.back());
    watchers_.pop_back();
  }
}

void Hub::Publish(uint64_t rv, const std::vector<EventPtr>& events) {
  std::vector<NotifyFn> notify;
  {
    std::lock_guard<std::mutex> lock(mu_);
    published_rv_ = rv;
    if (events.empty()) return;
    for (const auto& w : watchers_) {
      if (NotifyFn fn = w->Push(events)) notify.push_back(std::move(fn));
    }
  }
  for (const NotifyFn& fn : notify) RunNotify(fn);
}

void Hub::BreakAll(const Error& error, bool close) {
  std::vector<NotifyFn> notify;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (close) closed_ = true;
    for (const auto& w : watchers_) {
      if (NotifyFn fn = w->Break(error)) notify.push_back(std::move(fn));
    }
    watchers_.clear();
  }
  for (const NotifyFn& fn : notify) RunNotify(fn);
}

size_t Hub::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return watchers_.size();
}

WatchImpl::WatchImpl(std::weak_ptr<Env> env, std::shared_ptr<Hub> hub,
                     std::shared_ptr<WatchState> state, WatchFilter filter, uint64_t start,
                     uint64_t published)
    : env_(std::move(env)),
      hub_(std::move(hub)),
      state_(std::move(state)),
      filter_(std::move(filter)),
      replay_pos_(start),
      replay_end_(published),
      live_floor_(std::max(start, published)),
      last_rv_(start) {
  state_->SetFloor(live_floor_);
}

WatchImpl::~WatchImpl() { hub_->Unregister(state_.get()); }

Status WatchImpl::PrimeReplay(const Env& env, MDB_txn* txn) {
  if (replay_pos_ >= replay_end_) return Ok();
  return ReplayChunk(env, txn);
}

Status WatchImpl::ReplayChunk(const Env& env, MDB_txn* txn) {
  Cursor cursor;
  int rc = cursor.Open(txn, env.dbis().events);
  if (rc != 0) return LmdbError("open events cursor", rc);
  std::string first = EncodeU64(replay_pos_ + 1);
  MDB_val key = ToVal(first);
  MDB_val val;
  rc = mdb_cursor_get(cursor.get(), &key, &val, MDB_SET_RANGE);
  size_t events = 0;
  size_t bytes = 0;
  while (replay_pos_ < replay_end_ && events < kReplayChunkEvents && bytes < kReplayChunkBytes) {
    uint64_t rv = 0;
    if (rc == 0 && key.mv_size == 8) rv = LoadU64(static_cast<const char*>(key.mv_data));
    if (rc == MDB_NOTFOUND || (rc == 0 && rv != replay_pos_ + 1)) {
      // The log is contiguous above compacted_rv, so a hole here means retention trimmed the
      // events this watch had yet to read.
      return MakeError(Code::kGone, "events after resourceVersion " + std::to_string(replay_pos_) +
                                        " were compacted while the watch replayed them");
    }
    if (rc != 0) return LmdbError("read events", rc);
    Event event;
    int64_t commit_nanos = 0;
    Status decoded = DecodeEventValue(ToView(val), &event, &commit_nanos);
    if (!decoded) return std::move(decoded).error().Wrap("event " + std::to_string(rv));
    if (filter_.Matches(event.object.key)) {
      bytes += event.object.data.size();
      replay_buf_.push_back(std::move(event));
    }
    replay_pos_ = rv;
    ++events;
    rc = mdb_cursor_get(cursor.get(), &key, &val, MDB_NEXT);
  }
  return Ok();
}

Result<std::optional<Event>> WatchImpl::Deliver(const Event& event) {
  last_rv_.store(event.object.resource_version, std::memory_order_relaxed);
  return std::optional<Event>(event);
}

Result<std::optional<Event>> WatchImpl::Next(std::chrono::milliseconds timeout) {
  try {
    if (std::optional<Error> err = state_->broken()) return *err;
    while (replay_buf_.empty() && replay_pos_ < replay_end_) {
      Status replayed = [&]() -> Status {
        std::shared_ptr<Env> env = env_.lock();
        if (!env) return MakeError(Code::kUnavailable, "store is closed");
        ASSIGN_OR_RETURN(ReadTxn txn, env->BeginRead());
        return ReplayChunk(*env, txn.get());
      }();
      if (!replayed) {
        // Break first so every later call reports the same error.
        RunNotify(state_->Break(replayed.error()));
        return replayed.error();
      }
    }
    if (!replay_buf_.empty()) {
      Event event = std::move(replay_buf_.front());
      replay_buf_.pop_front();
      last_rv_.store(event.object.resource_version, std::memory_order_relaxed);
      return std::optional<Event>(std::move(event));
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      ASSIGN_OR_RETURN(EventPtr event, state_->Pop(std::max(left, std::chrono::milliseconds(0))));
      if (!event) return std::optional<Event>();
      // Events up to live_floor_ were replayed (or precede the start): skip the duplicates.
      if (event->object.resource_version <= live_floor_) continue;
      return Deliver(*event);
    }
  } catch (const std::exception& e) {
    return MakeError(Code::kInternal, std::string("watch: ") + e.what());
  }
}

void WatchImpl::SetNotify(std::function<void()> notify) {
  state_->SetNotify(std::move(notify));
  // An event that arrived before the callback was set would otherwise never be signalled.
  if (!replay_buf_.empty() || replay_pos_ < replay_end_ || state_->HasPending()) {
    RunNotify(state_->notify());
  }
}

}  // namespace edgevirt::store::internal
