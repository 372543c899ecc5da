#include "store/store.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <span>
#include <system_error>
#include <thread>

#include "common/clock.h"
#include "common/log.h"
#include "store/codec.h"
#include "store/lmdb_env.h"
#include "store/watch.h"

namespace edgevirt::store {

std::string ObjectKey::ToString() const {
  std::string out;
  if (!group.empty()) out.append(group).push_back('/');
  out.append(kind).push_back(' ');
  if (!ns.empty()) out.append(ns).push_back('/');
  out.append(name);
  return out;
}

std::string_view EventTypeName(EventType t) {
  switch (t) {
    case EventType::kAdded:
      return "ADDED";
    case EventType::kModified:
      return "MODIFIED";
    case EventType::kDeleted:
      return "DELETED";
  }
  return "UNKNOWN";
}

namespace {

using internal::Cursor;
using internal::Env;
using internal::EventPtr;
using internal::LmdbError;
using internal::ReadTxn;
using internal::ToVal;
using internal::ToView;
using internal::Txn;

// One committer transaction takes at most this much: enough to amortize an fsync over every
// concurrent writer, small enough to keep the write transaction (and its dirty pages) short.
constexpr size_t kMaxBatchRequests = 4096;
constexpr size_t kMaxBatchBytes = 64u << 20;
// Retention trims at most this many events per commit beyond the ones the commit adds, so a
// lowered retention after a restart converges over a few commits instead of one huge one.
constexpr uint64_t kMaxTrimPerCommit = 10000;
// Bounds of the group-commit gathering wait (see CommitterLoop).
constexpr std::chrono::microseconds kMinGatherWait{20};
constexpr std::chrono::microseconds kMaxGatherWait{1000};
constexpr uint64_t kMinMapSize = 64u << 10;
constexpr uint64_t kMaxMapSize = 1ull << 40;

constexpr std::string_view kMetaRv = "rv";
constexpr std::string_view kMetaCompacted = "compacted_rv";
constexpr std::string_view kMetaSchema = "schema";

// A one-shot event a writer blocks on until the committer has finished its request. Not
// std::binary_semaphore: libstdc++ 12 spins with sched_yield before sleeping, which with 16
// waiting writers on 2 cores steals the CPU the committer needs. Signal sets and notifies
// under the lock, so the waiter (which then destroys this) returns only after Signal unlocked.
class Completion {
 public:
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }
  void Signal() {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

// One caller's write, queued for the committer. Lives on the caller's stack; the committer
// must not touch it after releasing `done`.
struct WriteRequest {
  enum class Kind { kObjects, kRawPut, kRawDelete };
  Kind kind = Kind::kObjects;
  std::vector<Mutation> mutations;  // kObjects
  std::string raw_key;              // kRawPut/kRawDelete: space \0 key
  std::string raw_value;            // kRawPut
  size_t bytes = 0;                 // payload size, for the batch byte cap
  // Outputs, written by the committer before it releases `done`.
  std::optional<Error> error;
  std::vector<Record> records;
  Completion done;
};

// The effect of one mutation, computed before anything of its request is written.
struct Planned {
  std::string key;  // encoded
  EventType type = EventType::kAdded;
  Record record;  // state after the write; for kDeleted the last state with the delete's RV
};

Status ReadMetaU64(MDB_txn* txn, MDB_dbi meta, std::string_view name, uint64_t* v) {
  MDB_val key = ToVal(name);
  MDB_val val;
  int rc = mdb_get(txn, meta, &key, &val);
  if (rc == MDB_NOTFOUND) {
    *v = 0;
    return Ok();
  }
  if (rc != 0) return LmdbError("read meta " + std::string(name), rc);
  Status s = internal::DecodeU64(ToView(val), v);
  if (!s) return std::move(s).error().Wrap("meta " + std::string(name));
  return Ok();
}

int PutMetaU64(MDB_txn* txn, MDB_dbi meta, std::string_view name, uint64_t v) {
  std::string bytes = internal::EncodeU64(v);
  MDB_val key = ToVal(name);
  MDB_val val = ToVal(bytes);
  return mdb_put(txn, meta, &key, &val, 0);
}

Status CheckData(const std::string& data) {
  if (data.size() > internal::kMaxDataLen) {
    return MakeError(Code::kTooLarge, "object body of " + std::to_string(data.size()) +
                                          " bytes exceeds the limit of " +
                                          std::to_string(internal::kMaxDataLen));
  }
  return Ok();
}

void AddNanos(std::atomic<uint64_t>* sum, std::chrono::steady_clock::duration d) {
  sum->fetch_add(static_cast<uint64_t>(std::chrono::nanoseconds(d).count()),
                 std::memory_order_relaxed);
}

Error InternalFromException(std::string_view where, const std::exception& e) {
  return MakeError(Code::kInternal, std::string(where) + ": " + e.what());
}

class StoreImpl final : public Store {
 public:
  StoreImpl(const Options& options, std::shared_ptr<Env> env, uint64_t rv, uint64_t compacted)
      : options_(options),
        env_(std::move(env)),
        hub_(std::make_shared<internal::Hub>(rv)),
        rv_(rv),
        compacted_(compacted),
        durable_rv_(rv),
        compacted_rv_(compacted) {
    if (!options_.clock) options_.clock = [] { return WallClock::now(); };
  }

  ~StoreImpl() override { Close(); }

  Status Start() {
    try {
      committer_ = std::thread([this] { CommitterLoop(); });
    } catch (const std::system_error& e) {
      return MakeError(Code::kUnavailable, std::string("start store committer: ") + e.what());
    }
    return Ok();
  }

  Result<Record> Create(const ObjectKey& key, std::string data) override {
    Mutation m;
    m.op = Mutation::Op::kCreate;
    m.key = key;
    m.data = std::move(data);
    return One(std::move(m));
  }

  Result<Record> Update(const ObjectKey& key, std::string data, uint64_t expected_rv,
                        bool bump_generation) override {
    Mutation m;
    m.op = Mutation::Op::kUpdate;
    m.key = key;
    m.data = std::move(data);
    m.expected_rv = expected_rv;
    m.bump_generation = bump_generation;
    return One(std::move(m));
  }

  Result<Record> Delete(const ObjectKey& key, uint64_t expected_rv,
                        const std::string& expected_uid) override {
    Mutation m;
    m.op = Mutation::Op::kDelete;
    m.key = key;
    m.expected_rv = expected_rv;
    m.expected_uid = expected_uid;
    return One(std::move(m));
  }

  Result<std::vector<Record>> Apply(std::vector<Mutation> mutations) override {
    try {
      if (mutations.empty()) return std::vector<Record>();
      WriteRequest req;
      for (const Mutation& m : mutations) {
        RETURN_IF_ERROR(internal::ValidateKey(m.key));
        RETURN_IF_ERROR(CheckData(m.data));
        req.bytes += m.data.size();
      }
      req.kind = WriteRequest::Kind::kObjects;
      req.mutations = std::move(mutations);
      return Submit(&req);
    } catch (const std::exception& e) {
      return InternalFromException("store write", e);
    }
  }

  Result<Record> Get(const ObjectKey& key) const override {
    try {
      RETURN_IF_ERROR(internal::ValidateKey(key));
      std::string k = internal::EncodeKey(key);
      ASSIGN_OR_RETURN(ReadTxn txn, env_->BeginRead());
      MDB_val mk = ToVal(k);
      MDB_val mv;
      int rc = mdb_get(txn.get(), env_->dbis().objects, &mk, &mv);
      if (rc == MDB_NOTFOUND) return MakeError(Code::kNotFound, key.ToString() + " not found");
      if (rc != 0) return LmdbError("get " + key.ToString(), rc);
      Record record;
      record.key = key;
      Status s = internal::DecodeRecordValue(ToView(mv), &record);
      if (!s) return std::move(s).error().Wrap(key.ToString());
      return record;
    } catch (const std::exception& e) {
      return InternalFromException("store get", e);
    }
  }

  Result<ListResult> List(const ListOptions& options) const override {
    try {
      if (options.kind.empty()) return MakeError(Code::kInvalid, "list: kind is empty");
      std::string prefix = options.ns.empty()
                               ? internal::KindPrefix(options.group, options.kind)
                               : internal::NamespacePrefix(options.group, options.kind, options.ns);
      std::string seek = prefix;
      std::string after;
      if (options.start_after) {
        after = internal::EncodeKey(ObjectKey{
            options.group, options.kind, options.start_after->first, options.start_after->second});
        if (after > seek) seek = after;
      }
      ListResult result;
      ASSIGN_OR_RETURN(ReadTxn txn, env_->BeginRead());
      RETURN_IF_ERROR(ReadMetaU64(txn.get(), env_->dbis().meta, kMetaRv, &result.resource_version));
      Cursor cursor;
      int rc = cursor.Open(txn.get(), env_->dbis().objects);
      if (rc != 0) return LmdbError("open objects cursor", rc);
      MDB_val k = ToVal(seek);
      MDB_val v;
      for (rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_SET_RANGE); rc == 0;
           rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
        std::string_view key = ToView(k);
        if (key.substr(0, prefix.size()) != prefix) break;
        if (!after.empty() && key == after) continue;
        if (options.limit != 0 && result.items.size() == options.limit) {
          result.more = true;
          break;
        }
        Record& record = result.items.emplace_back();
        Status s = internal::DecodeKey(key, &record.key);
        if (s) s = internal::DecodeRecordValue(ToView(v), &record);
        if (!s) return std::move(s).error().Wrap("list " + options.kind);
      }
      if (rc != 0 && rc != MDB_NOTFOUND) return LmdbError("list " + options.kind, rc);
      return result;
    } catch (const std::exception& e) {
      return InternalFromException("store list", e);
    }
  }

  Result<std::unique_ptr<Watch>> StartWatch(const WatchOptions& options) override {
    try {
      internal::WatchFilter filter{options.group, options.kind, options.ns, options.name};
      auto state = std::make_shared<internal::WatchState>(filter, options_.watch_queue_limit);
      // Register first: from here on every committed batch above `published` is queued for
      // this watch, and everything at or below it is in the events database.
      ASSIGN_OR_RETURN(uint64_t published, hub_->Register(state));
      struct Unregister {
        internal::Hub* hub;
        const internal::WatchState* state;
        ~Unregister() {
          if (state != nullptr) hub->Unregister(state);
        }
      } unregister{hub_.get(), state.get()};

      ASSIGN_OR_RETURN(ReadTxn txn, env_->BeginRead());
      uint64_t rv = 0;
      uint64_t compacted = 0;
      RETURN_IF_ERROR(ReadMetaU64(txn.get(), env_->dbis().meta, kMetaRv, &rv));
      RETURN_IF_ERROR(ReadMetaU64(txn.get(), env_->dbis().meta, kMetaCompacted, &compacted));
      if (options.from_rv != 0 && options.from_rv < compacted) {
        return MakeError(Code::kGone,
                         "too old resource version: " + std::to_string(options.from_rv) +
                             " (events with resourceVersion <= " + std::to_string(compacted) +
                             " have been compacted)");
      }
      // The snapshot's rv is at least every RV any caller has been handed, so "now" is rv.
      uint64_t start = (options.from_rv == 0 || options.from_rv > rv) ? rv : options.from_rv;
      auto watch = std::make_unique<internal::WatchImpl>(env_, hub_, state, std::move(filter),
                                                         start, published);
      unregister.state = nullptr;  // the WatchImpl unregisters from now on
      RETURN_IF_ERROR(watch->PrimeReplay(*env_, txn.get()));
      return std::unique_ptr<Watch>(std::move(watch));
    } catch (const std::exception& e) {
      return InternalFromException("store watch", e);
    }
  }

  Status PutRaw(const std::string& space, const std::string& key, std::string value) override {
    try {
      RETURN_IF_ERROR(internal::ValidateRawKey(space, key));
      if (value.size() > internal::kMaxRawValueLen) {
        return MakeError(Code::kTooLarge, "raw value of " + std::to_string(value.size()) +
                                              " bytes exceeds the limit");
      }
      WriteRequest req;
      req.kind = WriteRequest::Kind::kRawPut;
      req.raw_key = internal::EncodeRawKey(space, key);
      req.bytes = value.size();
      req.raw_value = std::move(value);
      RETURN_IF_ERROR(Submit(&req));
      return Ok();
    } catch (const std::exception& e) {
      return InternalFromException("store raw put", e);
    }
  }

  Status DeleteRaw(const std::string& space, const std::string& key) override {
    try {
      RETURN_IF_ERROR(internal::ValidateRawKey(space, key));
      WriteRequest req;
      req.kind = WriteRequest::Kind::kRawDelete;
      req.raw_key = internal::EncodeRawKey(space, key);
      RETURN_IF_ERROR(Submit(&req));
      return Ok();
    } catch (const std::exception& e) {
      return InternalFromException("store raw delete", e);
    }
  }

  Result<std::string> GetRaw(const std::string& space, const std::string& key) const override {
    try {
      RETURN_IF_ERROR(internal::ValidateRawKey(space, key));
      std::string k = internal::EncodeRawKey(space, key);
      ASSIGN_OR_RETURN(ReadTxn txn, env_->BeginRead());
      MDB_val mk = ToVal(k);
      MDB_val mv;
      int rc = mdb_get(txn.get(), env_->dbis().raw, &mk, &mv);
      if (rc == MDB_NOTFOUND) {
        return MakeError(Code::kNotFound, "raw " + space + "/" + key + " not found");
      }
      if (rc != 0) return LmdbError("get raw " + space, rc);
      return std::string(ToView(mv));
    } catch (const std::exception& e) {
      return InternalFromException("store raw get", e);
    }
  }

  Result<std::vector<std::pair<std::string, std::string>>> ListRaw(
      const std::string& space, const std::string& prefix) const override {
    try {
      // Validate the space with a placeholder key: an empty prefix is allowed here.
      RETURN_IF_ERROR(internal::ValidateRawKey(space, "-"));
      std::string seek = internal::EncodeRawKey(space, prefix);
      const size_t strip = space.size() + 1;
      std::vector<std::pair<std::string, std::string>> out;
      ASSIGN_OR_RETURN(ReadTxn txn, env_->BeginRead());
      Cursor cursor;
      int rc = cursor.Open(txn.get(), env_->dbis().raw);
      if (rc != 0) return LmdbError("open raw cursor", rc);
      MDB_val k = ToVal(seek);
      MDB_val v;
      for (rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_SET_RANGE); rc == 0;
           rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
        std::string_view key = ToView(k);
        if (key.substr(0, seek.size()) != seek) break;
        out.emplace_back(std::string(key.substr(strip)), std::string(ToView(v)));
      }
      if (rc != 0 && rc != MDB_NOTFOUND) return LmdbError("list raw " + space, rc);
      return out;
    } catch (const std::exception& e) {
      return InternalFromException("store raw list", e);
    }
  }

  uint64_t CurrentResourceVersion() const override {
    return durable_rv_.load(std::memory_order_acquire);
  }

  Stats GetStats() const override {
    Stats s;
    s.resource_version = durable_rv_.load(std::memory_order_acquire);
    s.compacted_rv = compacted_rv_.load(std::memory_order_relaxed);
    s.map_size = env_->map_size();
    s.commits = commits_.load(std::memory_order_relaxed);
    s.writes = writes_.load(std::memory_order_relaxed);
    s.raw_writes = raw_writes_.load(std::memory_order_relaxed);
    s.map_resizes = map_resizes_.load(std::memory_order_relaxed);
    s.watches = hub_->size();
    s.gather_nanos = gather_nanos_.load(std::memory_order_relaxed);
    s.build_nanos = build_nanos_.load(std::memory_order_relaxed);
    s.commit_nanos = commit_nanos_.load(std::memory_order_relaxed);
    s.release_nanos = release_nanos_.load(std::memory_order_relaxed);
    return s;
  }

  Status Verify() const override {
    try {
      return VerifyImpl();
    } catch (const std::exception& e) {
      return InternalFromException("store verify", e);
    }
  }

  void Close() override {
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      closing_ = true;
    }
    queue_cv_.notify_all();
    {
      std::lock_guard<std::mutex> lock(close_mu_);
      if (committer_.joinable()) committer_.join();
    }
    hub_->Close();
  }

 private:
  Result<Record> One(Mutation m) {
    // Not std::vector<Mutation>{std::move(m)}: an initializer list is copied from, data and all.
    std::vector<Mutation> mutations;
    mutations.push_back(std::move(m));
    ASSIGN_OR_RETURN(std::vector<Record> records, Apply(std::move(mutations)));
    if (records.size() != 1) return MakeError(Code::kInternal, "store: lost a write result");
    return std::move(records.front());
  }

  // Queues `req` for the committer and waits until it is durable (or failed).
  Result<std::vector<Record>> Submit(WriteRequest* req) {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      if (closing_) return MakeError(Code::kUnavailable, "store is closed");
      queue_.push_back(req);
      // The committer waits either for a first request or for a gathering batch to fill up;
      // other enqueues need not wake it.
      wake = queue_.size() == 1 || queue_.size() >= gather_target_;
    }
    if (wake) queue_cv_.notify_one();
    req->done.Wait();
    if (req->error) return *std::move(req->error);
    return std::move(req->records);
  }

  void CommitterLoop() {
    std::vector<WriteRequest*> batch;
    size_t last_batch = 0;  // callers released by the previous commit
    auto last_commit = std::chrono::steady_clock::duration::zero();
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(queue_mu_);
        queue_cv_.wait(lock, [&] { return !queue_.empty() || closing_; });
        if (!closing_ && queue_.size() < last_batch) {
          // The callers released by the last commit are typically a few scheduler ticks away
          // from queueing their next write (2 cores, 16 writers). Waiting a fraction of a
          // commit for them lets one fsync cover them all instead of splitting them over two
          // commits. A lone writer never waits (last_batch == 1), and the target drops as soon
          // as fewer callers show up.
          gather_target_ = last_batch;
          const auto gather_start = std::chrono::steady_clock::now();
          auto wait = std::clamp<std::chrono::steady_clock::duration>(
              last_commit / 2, kMinGatherWait, kMaxGatherWait);
          queue_cv_.wait_for(lock, wait, [&] { return queue_.size() >= last_batch || closing_; });
          gather_target_ = std::numeric_limits<size_t>::max();
          AddNanos(&gather_nanos_, std::chrono::steady_clock::now() - gather_start);
        }
        if (closing_) {
          for (WriteRequest* req : queue_) {
            req->error = MakeError(Code::kUnavailable, "store is closed");
            req->done.Signal();
          }
          queue_.clear();
          return;
        }
        // Group commit: everything that queued up while the previous commit was syncing goes
        // into this one transaction.
        size_t bytes = 0;
        while (!queue_.empty() && batch.size() < kMaxBatchRequests &&
               (batch.empty() || bytes + queue_.front()->bytes <= kMaxBatchBytes)) {
          bytes += queue_.front()->bytes;
          batch.push_back(queue_.front());
          queue_.pop_front();
        }
      }
      const auto started = std::chrono::steady_clock::now();
      ProcessBatch(batch);
      last_commit = std::chrono::steady_clock::now() - started;
      last_batch = batch.size();
      batch.clear();
    }
  }

  // Commits `batch` (growing the map as needed), completes every request, then hands the
  // events to the watches. If the batch fails as a whole for a reason no single precondition
  // explains, each request is retried in its own transaction so only the culprit fails.
  void ProcessBatch(std::span<WriteRequest* const> batch) {
    std::vector<EventPtr> events;
    Error failure;
    int rc = 0;
    try {
      for (;;) {
        rc = CommitBatch(batch, &events, &failure);
        if (rc != MDB_MAP_FULL) break;
        uint64_t size = env_->map_size() * 2;
        Status grown = size <= kMaxMapSize
                           ? env_->Resize(size)
                           : Status(MakeError(Code::kUnavailable, "store map at its maximum"));
        if (!grown) {
          failure = std::move(grown).error();
          rc = -1;
          break;
        }
        map_resizes_.fetch_add(1, std::memory_order_relaxed);
        EV_LOG(kInfo) << "store: map full, grew it to " << env_->map_size() << " bytes";
      }
    } catch (const std::exception& e) {
      failure = InternalFromException("store commit", e);
      rc = -1;
    }
    if (rc != 0) {
      if (batch.size() > 1) {
        for (WriteRequest* req : batch) ProcessBatch(std::span<WriteRequest* const>(&req, 1));
        return;
      }
      EV_LOG(kError) << "store: write failed: " << failure.ToString();
      batch[0]->records.clear();
      batch[0]->error = std::move(failure);
      batch[0]->done.Signal();
      return;
    }
    const uint64_t rv = rv_;
    const auto release_start = std::chrono::steady_clock::now();
    for (WriteRequest* req : batch) req->done.Signal();  // `req` may be gone after this
    AddNanos(&release_nanos_, std::chrono::steady_clock::now() - release_start);
    try {
      hub_->Publish(rv, events);
    } catch (const std::exception& e) {
      // Only allocation can fail here. The watches would miss events, so cut them off (they
      // restart from their last RV) rather than let them skip silently.
      EV_LOG(kError) << "store: event fan-out failed: " << e.what();
      hub_->BreakAll(MakeError(Code::kUnavailable, "store event fan-out failed; restart the watch"),
                     false);
    }
  }

  // Checks and applies the mutations of one request against the transaction, with `rv` the last
  // RV assigned so far. Nothing is written here: a failed precondition leaves no trace.
  Result<std::vector<Planned>> Plan(MDB_txn* txn, const std::vector<Mutation>& mutations,
                                    uint64_t rv, const std::string& now) {
    // State of keys touched earlier in this request (nullopt = deleted).
    std::map<std::string, std::optional<Record>> overlay;
    std::vector<Planned> out;
    out.reserve(mutations.size());
    for (const Mutation& m : mutations) {
      std::string key = internal::EncodeKey(m.key);
      std::optional<Record> current;
      if (auto it = overlay.find(key); it != overlay.end()) {
        current = it->second;
      } else {
        MDB_val mk = ToVal(key);
        MDB_val mv;
        int rc = mdb_get(txn, env_->dbis().objects, &mk, &mv);
        if (rc == 0) {
          current.emplace();
          current->key = m.key;
          Status s = internal::DecodeRecordValue(ToView(mv), &*current);
          if (!s) return std::move(s).error().Wrap(m.key.ToString());
        } else if (rc != MDB_NOTFOUND) {
          return LmdbError("read " + m.key.ToString(), rc);
        }
      }
      Planned p;
      p.key = std::move(key);
      switch (m.op) {
        case Mutation::Op::kCreate:
          if (current) {
            return MakeError(Code::kAlreadyExists, m.key.ToString() + " already exists");
          }
          p.type = EventType::kAdded;
          p.record.key = m.key;
          p.record.uid = NewUuid();
          p.record.generation = 1;
          p.record.creation_timestamp = now;
          p.record.data = m.data;
          break;
        case Mutation::Op::kUpdate:
        case Mutation::Op::kDelete: {
          const char* verb = m.op == Mutation::Op::kUpdate ? "update" : "delete";
          if (!current) return MakeError(Code::kNotFound, m.key.ToString() + " not found");
          if (m.expected_rv != 0 && m.expected_rv != current->resource_version) {
            return MakeError(Code::kConflict,
                             std::string(verb) + " " + m.key.ToString() + ": resourceVersion " +
                                 std::to_string(m.expected_rv) + " does not match the current " +
                                 std::to_string(current->resource_version));
          }
          if (!m.expected_uid.empty() && m.expected_uid != current->uid) {
            return MakeError(Code::kConflict, std::string(verb) + " " + m.key.ToString() +
                                                  ": uid " + m.expected_uid +
                                                  " does not match the current " + current->uid);
          }
          p.record = std::move(*current);
          if (m.op == Mutation::Op::kUpdate) {
            p.type = EventType::kModified;
            p.record.data = m.data;
            if (m.bump_generation) ++p.record.generation;
          } else {
            p.type = EventType::kDeleted;
          }
          break;
        }
        default:
          return MakeError(Code::kInvalid, "unknown mutation op");
      }
      p.record.resource_version = ++rv;
      if (p.type == EventType::kDeleted) {
        overlay[p.key] = std::nullopt;
      } else {
        overlay[p.key] = p.record;
      }
      out.push_back(std::move(p));
    }
    return out;
  }

  // Drops the oldest events beyond the count limit or older than the age limit.
  int TrimEvents(MDB_txn* txn, uint64_t rv, int64_t now_nanos, uint64_t added,
                 uint64_t* compacted) {
    const int64_t age_nanos =
        std::chrono::duration_cast<std::chrono::nanoseconds>(options_.event_retention_age).count();
    const int64_t cutoff = now_nanos - age_nanos;
    uint64_t budget = kMaxTrimPerCommit + added;
    Cursor cursor;
    int rc = cursor.Open(txn, env_->dbis().events);
    if (rc != 0) return rc;
    while (*compacted < rv && budget-- > 0) {
      MDB_val k;
      MDB_val v;
      rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST);
      if (rc != 0) return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
      if (k.mv_size != 8 ||
          internal::LoadU64(static_cast<const char*>(k.mv_data)) != *compacted + 1) {
        return MDB_CORRUPTED;  // the log must be contiguous above compacted_rv
      }
      bool drop = rv - *compacted > options_.event_retention_count;
      if (!drop) {
        int64_t commit_nanos = 0;
        if (!internal::DecodeEventCommitNanos(ToView(v), &commit_nanos)) return MDB_CORRUPTED;
        drop = commit_nanos < cutoff;
      }
      if (!drop) break;
      rc = mdb_cursor_del(cursor.get(), 0);
      if (rc != 0) return rc;
      ++*compacted;
    }
    return 0;
  }

  // One attempt at committing `batch` in one transaction. Returns 0 on success (requests
  // carry their results), MDB_MAP_FULL when the map must grow, another code (with *failure
  // set) when the attempt failed as a whole.
  int CommitBatch(std::span<WriteRequest* const> batch, std::vector<EventPtr>* events,
                  Error* failure) {
    events->clear();
    const auto build_start = std::chrono::steady_clock::now();
    Result<Txn> begun = env_->BeginWrite();
    if (!begun) {
      *failure = std::move(begun).error();
      return -1;
    }
    Txn txn = std::move(begun).value();
    const internal::Env::Dbis& dbis = env_->dbis();
    const WallClock::time_point now = options_.clock();
    const int64_t now_nanos = UnixNanos(now);
    const std::string now_text = FormatRfc3339(now);
    uint64_t rv = rv_;
    uint64_t compacted = compacted_;
    uint64_t writes = 0;
    uint64_t raw_writes = 0;
    std::string value;
    std::string event_key;
    auto fail = [&](std::string_view what, int rc) {
      *failure = LmdbError(what, rc);
      return rc;
    };

    for (WriteRequest* req : batch) {
      req->error.reset();
      req->records.clear();
      switch (req->kind) {
        case WriteRequest::Kind::kObjects: {
          Result<std::vector<Planned>> plan = Plan(txn.get(), req->mutations, rv, now_text);
          if (!plan) {
            req->error = std::move(plan).error();
            continue;
          }
          for (Planned& p : *plan) {
            MDB_val k = ToVal(p.key);
            int rc;
            if (p.type == EventType::kDeleted) {
              rc = mdb_del(txn.get(), dbis.objects, &k, nullptr);
            } else {
              value.clear();
              internal::EncodeRecordValue(p.record, &value);
              MDB_val v = ToVal(value);
              rc = mdb_put(txn.get(), dbis.objects, &k, &v, 0);
            }
            if (rc != 0) return fail("write " + p.record.key.ToString(), rc);
            value.clear();
            internal::EncodeEventValue(p.type, now_nanos, p.key, p.record, &value);
            event_key = internal::EncodeU64(p.record.resource_version);
            MDB_val ek = ToVal(event_key);
            MDB_val ev = ToVal(value);
            // MDB_APPEND also asserts that RVs only grow: a smaller key fails with KEYEXIST.
            rc = mdb_put(txn.get(), dbis.events, &ek, &ev, MDB_APPEND);
            if (rc != 0) return fail("append event", rc);
            events->push_back(std::make_shared<const Event>(Event{p.type, p.record}));
            req->records.push_back(std::move(p.record));
          }
          rv += plan->size();
          writes += plan->size();
          break;
        }
        case WriteRequest::Kind::kRawPut: {
          MDB_val k = ToVal(req->raw_key);
          MDB_val v = ToVal(req->raw_value);
          int rc = mdb_put(txn.get(), dbis.raw, &k, &v, 0);
          if (rc != 0) return fail("put raw", rc);
          ++raw_writes;
          break;
        }
        case WriteRequest::Kind::kRawDelete: {
          MDB_val k = ToVal(req->raw_key);
          int rc = mdb_del(txn.get(), dbis.raw, &k, nullptr);
          if (rc != 0 && rc != MDB_NOTFOUND) return fail("delete raw", rc);
          ++raw_writes;
          break;
        }
      }
    }

    if (rv == rv_ && raw_writes == 0) return 0;  // every request failed its preconditions
    if (rv != rv_) {
      int rc = TrimEvents(txn.get(), rv, now_nanos, rv - rv_, &compacted);
      if (rc != 0) return fail("trim events", rc);
      if ((rc = PutMetaU64(txn.get(), dbis.meta, kMetaRv, rv)) != 0) return fail("put rv", rc);
      if (compacted != compacted_ &&
          (rc = PutMetaU64(txn.get(), dbis.meta, kMetaCompacted, compacted)) != 0) {
        return fail("put compacted_rv", rc);
      }
    }
    const auto commit_start = std::chrono::steady_clock::now();
    AddNanos(&build_nanos_, commit_start - build_start);
    env_->BeforeCommit();
    int rc = txn.Commit();
    AddNanos(&commit_nanos_, std::chrono::steady_clock::now() - commit_start);
    if (rc != 0) return fail("commit", rc);

    rv_ = rv;
    compacted_ = compacted;
    durable_rv_.store(rv, std::memory_order_release);
    compacted_rv_.store(compacted, std::memory_order_relaxed);
    commits_.fetch_add(1, std::memory_order_relaxed);
    writes_.fetch_add(writes, std::memory_order_relaxed);
    raw_writes_.fetch_add(raw_writes, std::memory_order_relaxed);
    return 0;
  }

  Status VerifyImpl() const {
    auto bad = [](std::string what) { return MakeError(Code::kInternal, "verify: " + what); };
    ASSIGN_OR_RETURN(ReadTxn txn, env_->BeginRead());
    const internal::Env::Dbis& dbis = env_->dbis();
    uint64_t schema = 0, rv = 0, compacted = 0;
    RETURN_IF_ERROR(ReadMetaU64(txn.get(), dbis.meta, kMetaSchema, &schema));
    RETURN_IF_ERROR(ReadMetaU64(txn.get(), dbis.meta, kMetaRv, &rv));
    RETURN_IF_ERROR(ReadMetaU64(txn.get(), dbis.meta, kMetaCompacted, &compacted));
    if (schema != internal::kSchemaVersion) {
      return bad("schema version " + std::to_string(schema));
    }
    if (compacted > rv) {
      return bad("compacted_rv " + std::to_string(compacted) + " > rv " + std::to_string(rv));
    }

    // events: exactly compacted+1 .. rv.
    std::vector<std::pair<EventType, std::string>> log;  // index = rv - compacted - 1
    log.reserve(rv - compacted);
    {
      Cursor cursor;
      int rc = cursor.Open(txn.get(), dbis.events);
      if (rc != 0) return LmdbError("verify: open events cursor", rc);
      MDB_val k, v;
      uint64_t expect = compacted + 1;
      for (rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST); rc == 0;
           rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT), ++expect) {
        uint64_t erv = 0;
        if (!internal::DecodeU64(ToView(k), &erv)) return bad("event key size");
        if (erv != expect) {
          return bad("event " + std::to_string(erv) + " where " + std::to_string(expect) +
                     " was expected");
        }
        if (erv > rv) return bad("event " + std::to_string(erv) + " above rv");
        Event event;
        int64_t nanos = 0;
        if (Status s = internal::DecodeEventValue(ToView(v), &event, &nanos, false); !s) {
          return bad("event " + std::to_string(erv) + ": " + s.error().message);
        }
        if (event.object.resource_version != erv) {
          return bad("event " + std::to_string(erv) + " carries RV " +
                     std::to_string(event.object.resource_version));
        }
        log.emplace_back(event.type, internal::EncodeKey(event.object.key));
      }
      if (rc != MDB_NOTFOUND) return LmdbError("verify: scan events", rc);
      if (expect != rv + 1) {
        return bad("event log ends at " + std::to_string(expect - 1) + ", rv is " +
                   std::to_string(rv));
      }
    }

    // objects: decodable, RVs unique and <= rv, matching their retained event.
    std::vector<uint64_t> rvs;
    {
      Cursor cursor;
      int rc = cursor.Open(txn.get(), dbis.objects);
      if (rc != 0) return LmdbError("verify: open objects cursor", rc);
      MDB_val k, v;
      for (rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST); rc == 0;
           rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
        Record record;
        Status s = internal::DecodeKey(ToView(k), &record.key);
        if (s) s = internal::ValidateKey(record.key);
        if (s) s = internal::DecodeRecordValue(ToView(v), &record, false);
        if (!s) return bad("object: " + s.error().message);
        const std::string name = record.key.ToString();
        if (record.resource_version == 0 || record.resource_version > rv) {
          return bad(name + " has RV " + std::to_string(record.resource_version));
        }
        if (record.generation < 1 || record.uid.empty() || record.creation_timestamp.empty()) {
          return bad(name + " has bad metadata");
        }
        if (record.resource_version > compacted) {
          const auto& [type, key] = log[record.resource_version - compacted - 1];
          if (type == EventType::kDeleted || key != ToView(k)) {
            return bad(name + " RV " + std::to_string(record.resource_version) +
                       " does not match its event");
          }
        }
        rvs.push_back(record.resource_version);
      }
      if (rc != MDB_NOTFOUND) return LmdbError("verify: scan objects", rc);
    }
    std::sort(rvs.begin(), rvs.end());
    if (auto dup = std::adjacent_find(rvs.begin(), rvs.end()); dup != rvs.end()) {
      return bad("two objects share RV " + std::to_string(*dup));
    }

    // raw: space \0 key.
    {
      Cursor cursor;
      int rc = cursor.Open(txn.get(), dbis.raw);
      if (rc != 0) return LmdbError("verify: open raw cursor", rc);
      MDB_val k, v;
      for (rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST); rc == 0;
           rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
        std::string_view key = ToView(k);
        size_t nul = key.find('\0');
        if (nul == 0 || nul == std::string_view::npos || nul + 1 == key.size()) {
          return bad("malformed raw key");
        }
      }
      if (rc != MDB_NOTFOUND) return LmdbError("verify: scan raw", rc);
    }
    return Ok();
  }

  Options options_;
  const std::shared_ptr<Env> env_;
  const std::shared_ptr<internal::Hub> hub_;

  // Committer-thread state (set before the thread starts).
  uint64_t rv_;         // last committed RV
  uint64_t compacted_;  // last committed compacted_rv

  std::atomic<uint64_t> durable_rv_;
  std::atomic<uint64_t> compacted_rv_;
  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> raw_writes_{0};
  std::atomic<uint64_t> map_resizes_{0};
  std::atomic<uint64_t> gather_nanos_{0};
  std::atomic<uint64_t> build_nanos_{0};
  std::atomic<uint64_t> commit_nanos_{0};
  std::atomic<uint64_t> release_nanos_{0};

  std::mutex queue_mu_;  // guards queue_, closing_, gather_target_
  std::condition_variable queue_cv_;
  std::deque<WriteRequest*> queue_;
  bool closing_ = false;
  size_t gather_target_ = std::numeric_limits<size_t>::max();  // see CommitterLoop

  std::mutex close_mu_;  // serializes joining the committer
  std::thread committer_;
};

// Writes the schema version and zero counters into a fresh environment and returns (rv,
// compacted_rv).
Result<std::pair<uint64_t, uint64_t>> InitMeta(Env& env) {
  for (int attempt = 0;; ++attempt) {
    ASSIGN_OR_RETURN(Txn txn, env.BeginWrite());
    MDB_dbi meta = env.dbis().meta;
    uint64_t schema = 0, rv = 0, compacted = 0;
    RETURN_IF_ERROR(ReadMetaU64(txn.get(), meta, kMetaSchema, &schema));
    RETURN_IF_ERROR(ReadMetaU64(txn.get(), meta, kMetaRv, &rv));
    RETURN_IF_ERROR(ReadMetaU64(txn.get(), meta, kMetaCompacted, &compacted));
    if (schema != 0 && schema != internal::kSchemaVersion) {
      return MakeError(Code::kUnsupported, "state has schema version " + std::to_string(schema) +
                                               ", this build reads version " +
                                               std::to_string(internal::kSchemaVersion));
    }
    if (schema != 0) return std::make_pair(rv, compacted);
    int rc = PutMetaU64(txn.get(), meta, kMetaSchema, internal::kSchemaVersion);
    if (rc == 0) rc = PutMetaU64(txn.get(), meta, kMetaRv, 0);
    if (rc == 0) rc = PutMetaU64(txn.get(), meta, kMetaCompacted, 0);
    if (rc == 0) rc = txn.Commit();
    if (rc == 0) return std::make_pair(uint64_t{0}, uint64_t{0});
    if (rc != MDB_MAP_FULL || attempt > 8) return LmdbError("initialize meta", rc);
    txn.Abort();
    RETURN_IF_ERROR(env.Resize(env.map_size() * 2));
  }
}

}  // namespace

Result<std::unique_ptr<Store>> Store::Open(const Options& options) {
  try {
    if (options.dir.empty()) return MakeError(Code::kInvalid, "store: options.dir is empty");
    if (options.watch_queue_limit == 0) {
      return MakeError(Code::kInvalid, "store: watch_queue_limit must be positive");
    }
    ASSIGN_OR_RETURN(std::shared_ptr<Env> env,
                     Env::Open(options.dir, std::max(options.initial_map_size, kMinMapSize)));
    ASSIGN_OR_RETURN(auto counters, InitMeta(*env));
    auto store =
        std::make_unique<StoreImpl>(options, std::move(env), counters.first, counters.second);
    RETURN_IF_ERROR(store->Start());
    EV_LOG(kInfo) << "store: opened " << options.dir.string() << " at resourceVersion "
                  << counters.first;
    return std::unique_ptr<Store>(std::move(store));
  } catch (const std::exception& e) {
    return InternalFromException("open store " + options.dir.string(), e);
  }
}

}  // namespace edgevirt::store
