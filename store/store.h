// store/ — the one durable state of edgevirtd: an LMDB environment holding every API object,
// the watch event log and the drivers' own records, with one global resourceVersion.
//
// Contract (every method is thread-safe; call from any API thread or the controller thread):
//  - A write returns only after its LMDB commit is on disk (fsync). Concurrent writers are
//    batched by one committer thread into a single LMDB transaction (group commit), so many
//    writers share one fsync without giving durability up.
//  - Every committed object write gets the next value of one global, strictly increasing
//    resourceVersion (RV), assigned in the same transaction as the write, and appends exactly
//    one event (ADDED / MODIFIED / DELETED) with that RV to the event log.
//  - The event log keeps at most `event_retention_count` events and none older than
//    `event_retention_age`; asking to watch from an RV whose successors were trimmed fails with
//    Code::kGone.
//  - Reads (Get/List) see the latest committed state; they never block on writers.
//  - The map grows by itself when it is full.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/result.h"

namespace edgevirt::store {

// Identity of an API object. `ns` is empty for cluster-scoped kinds.
struct ObjectKey {
  std::string group;  // "kubevirt.io", "" for core/v1
  std::string kind;   // "VirtualMachine"
  std::string ns;
  std::string name;

  bool operator==(const ObjectKey&) const = default;
  std::string ToString() const;  // "kubevirt.io/VirtualMachine default/vm1"
};

// A stored object: server-owned metadata plus the caller's bytes (JSON, opaque to the store).
struct Record {
  ObjectKey key;
  std::string uid;                 // UUID assigned at create
  uint64_t resource_version = 0;   // RV of the write that produced this state
  int64_t generation = 0;          // 1 at create; +1 on writes that ask for it
  std::string creation_timestamp;  // RFC 3339, UTC, second precision
  std::string data;                // the object body as the API layer wrote it
};

enum class EventType { kAdded, kModified, kDeleted };
std::string_view EventTypeName(EventType t);  // "ADDED", "MODIFIED", "DELETED"

// One entry of the event log. For kDeleted, `object` is the last state with the delete's RV.
struct Event {
  EventType type = EventType::kAdded;
  Record object;
};

struct Options {
  std::filesystem::path dir;                       // created if missing (mode 0700)
  uint64_t initial_map_size = 64ull << 20;         // bytes; doubled whenever the map is full
  uint64_t event_retention_count = 100000;         // events kept at most
  std::chrono::seconds event_retention_age{3600};  // events kept at most this long
  size_t watch_queue_limit = 10000;  // events buffered per watcher before it is cut off
  // The wall clock used for creationTimestamp, event commit times and age-based retention.
  // Empty = WallClock::now. Tests inject a fake clock to exercise retention without sleeping.
  std::function<WallClock::time_point()> clock;
};

// A precondition and effect for one object in an atomic write.
struct Mutation {
  enum class Op { kCreate, kUpdate, kDelete };
  Op op = Op::kCreate;
  ObjectKey key;
  std::string data;              // kCreate/kUpdate: the new body
  uint64_t expected_rv = 0;      // kUpdate/kDelete: 0 = unconditional, else must equal current
  std::string expected_uid;      // kUpdate/kDelete: empty = any, else must equal current uid
  bool bump_generation = false;  // kUpdate: generation += 1
};

// Selects objects by group and kind, optionally one namespace ("" = all namespaces).
struct ListOptions {
  std::string group;
  std::string kind;
  std::string ns;
  // Resume after this (namespace, name); empty = from the start. Pairs with ListResult::last.
  std::optional<std::pair<std::string, std::string>> start_after;
  size_t limit = 0;  // 0 = no limit
};

struct ListResult {
  std::vector<Record> items;
  uint64_t resource_version = 0;  // the store's RV when the list was read
  bool more = false;              // true if `limit` cut the list
};

// Receives events after a given RV, first from the log, then live. Not thread-safe itself:
// one consumer thread per Watch. Destroying it unsubscribes.
class Watch {
 public:
  virtual ~Watch() = default;
  // Waits up to `timeout` for the next event. Returns nullopt on timeout. Returns an error when
  // the watch is broken: kUnavailable if the consumer fell behind `watch_queue_limit` or the
  // store is closing.
  virtual Result<std::optional<Event>> Next(std::chrono::milliseconds timeout) = 0;
  // Non-blocking variant of Next.
  virtual Result<std::optional<Event>> TryNext() = 0;
  // Registers a callback run (on the committer thread, must not block) whenever events become
  // available or the watch breaks; lets asynchronous servers poll TryNext without a thread.
  // If events are already available when it is set, it also runs once from SetNotify itself.
  // It may call TryNext; it must not destroy the Watch.
  virtual void SetNotify(std::function<void()> notify) = 0;
  // The highest RV delivered so far (or the starting RV).
  virtual uint64_t last_rv() const = 0;
};

struct WatchOptions {
  std::string group;     // with kind: exact match ("" is the core group)
  std::string kind;      // "" = every object of every group and kind
  std::string ns;        // "" = all namespaces
  std::string name;      // "" = all names
  uint64_t from_rv = 0;  // deliver events with RV > from_rv; see Store::Watch
};

struct Stats {
  uint64_t resource_version = 0;
  uint64_t compacted_rv = 0;  // events with RV <= this are no longer in the log
  uint64_t map_size = 0;
  uint64_t commits = 0;      // LMDB write transactions committed
  uint64_t writes = 0;       // mutations committed
  uint64_t raw_writes = 0;   // PutRaw/DeleteRaw committed
  uint64_t map_resizes = 0;  // times the map was grown after MDB_MAP_FULL
  uint64_t watches = 0;      // watches currently registered
  // Committer time in nanoseconds, summed over commits (for benchmarks): waiting for a
  // gathering batch to fill, building transactions, inside mdb_txn_commit (page writes and the
  // durable syncs), waking the callers of committed batches.
  uint64_t gather_nanos = 0;
  uint64_t build_nanos = 0;
  uint64_t commit_nanos = 0;
  uint64_t release_nanos = 0;
};

class Store {
 public:
  // Opens (creating if needed) the environment under options.dir. Recovers cleanly after a
  // crash at any point: LMDB's copy-on-write commit makes the last durable commit the state.
  static Result<std::unique_ptr<Store>> Open(const Options& options);
  virtual ~Store() = default;

  // Object writes. Errors: kAlreadyExists (create of an existing key), kNotFound (update or
  // delete of a missing key), kConflict (expected_rv or expected_uid mismatch), kInvalid (bad
  // key), kTooLarge (data over 8 MiB), kUnavailable (store closing). Returned records carry the
  // assigned RV.
  virtual Result<Record> Create(const ObjectKey& key, std::string data) = 0;
  virtual Result<Record> Update(const ObjectKey& key, std::string data, uint64_t expected_rv,
                                bool bump_generation) = 0;
  virtual Result<Record> Delete(const ObjectKey& key, uint64_t expected_rv = 0,
                                const std::string& expected_uid = {}) = 0;
  // All mutations in one transaction: either all apply (each with its own RV, in order) or
  // none does and the first failure is returned.
  virtual Result<std::vector<Record>> Apply(std::vector<Mutation> mutations) = 0;

  // Get: kNotFound if absent, kInvalid for a bad key. List: kInvalid if kind is empty; items
  // are sorted by (namespace, name).
  virtual Result<Record> Get(const ObjectKey& key) const = 0;
  virtual Result<ListResult> List(const ListOptions& options) const = 0;

  // Starts a watch. from_rv == 0 means "from now" (no replay). from_rv older than the log's
  // retention gives kGone: events with RV <= compacted_rv are gone, so from_rv < compacted_rv
  // fails and from_rv == compacted_rv still replays everything retained. from_rv greater than
  // the current RV is treated as "from now". If events are trimmed while an old watch is still
  // replaying them, its Next fails with kGone. kUnavailable once the store is closing.
  virtual Result<std::unique_ptr<Watch>> StartWatch(const WatchOptions& options) = 0;

  // Durable key/value records for drivers (device rules, image cache, leases), in a separate
  // keyspace per `space`. Same durability and group commit as object writes; no RV, no events.
  // (All spaces share one `raw` LMDB database with keys "space\0key"; invisible here.)
  // `space`: 1-64 bytes without NUL; `key`: 1-446 arbitrary bytes (else kInvalid); values up to
  // 64 MiB (else kTooLarge). DeleteRaw of a missing key succeeds (idempotent). GetRaw gives
  // kNotFound if absent. ListRaw returns the pairs whose key starts with `prefix`, in key order.
  virtual Status PutRaw(const std::string& space, const std::string& key, std::string value) = 0;
  virtual Status DeleteRaw(const std::string& space, const std::string& key) = 0;
  virtual Result<std::string> GetRaw(const std::string& space, const std::string& key) const = 0;
  virtual Result<std::vector<std::pair<std::string, std::string>>> ListRaw(
      const std::string& space, const std::string& prefix) const = 0;

  // The RV of the last durable commit.
  virtual uint64_t CurrentResourceVersion() const = 0;
  virtual Stats GetStats() const = 0;

  // Scans every database in one read transaction, decodes every record and checks the
  // invariants (schema version; compacted_rv <= rv; events exactly compacted_rv+1 .. rv in order;
  // object RVs unique, <= rv and matching their event when it is retained; raw keys well
  // formed). kInternal describes the first violation. For tests and offline fsck; it reads
  // everything, so it is slow on big stores.
  virtual Status Verify() const = 0;

  // Fails pending and future writes with kUnavailable, breaks all watches, waits for the
  // committer thread. Called by the destructor too. Idempotent; reads keep working until the
  // Store is destroyed.
  virtual void Close() = 0;
};

}  // namespace edgevirt::store
