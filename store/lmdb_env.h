// Private to store/: RAII owners for LMDB handles and the environment shared by the Store and
// its Watches.
#pragma once

#include <lmdb.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>

#include "common/fd.h"
#include "common/result.h"

namespace edgevirt::store::internal {

inline MDB_val ToVal(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
inline std::string_view ToView(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

// Converts an LMDB return code into an Error with context. MDB_MAP_FULL never reaches callers
// (the committer grows the map and retries), so it maps to kInternal like other surprises.
Error LmdbError(std::string_view context, int rc);

// Owns an MDB_txn: aborts it unless committed. Commit() consumes the handle whatever the result,
// as mdb_txn_commit frees the transaction on failure too.
class Txn {
 public:
  Txn() = default;
  explicit Txn(MDB_txn* txn) : txn_(txn) {}
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  Txn(Txn&& o) noexcept : txn_(std::exchange(o.txn_, nullptr)) {}
  Txn& operator=(Txn&& o) noexcept {
    if (this != &o) {
      Abort();
      txn_ = std::exchange(o.txn_, nullptr);
    }
    return *this;
  }
  ~Txn() { Abort(); }

  MDB_txn* get() const { return txn_; }
  int Commit() { return mdb_txn_commit(std::exchange(txn_, nullptr)); }
  void Abort() {
    if (txn_ != nullptr) mdb_txn_abort(std::exchange(txn_, nullptr));
  }

 private:
  MDB_txn* txn_ = nullptr;
};

// Owns an MDB_cursor. Must be destroyed before its transaction ends: LMDB frees the cursors of a
// write transaction at commit/abort, so a later mdb_cursor_close would be a double free.
class Cursor {
 public:
  Cursor() = default;
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  ~Cursor() {
    if (cursor_ != nullptr) mdb_cursor_close(cursor_);
  }
  int Open(MDB_txn* txn, MDB_dbi dbi) { return mdb_cursor_open(txn, dbi, &cursor_); }
  MDB_cursor* get() const { return cursor_; }

 private:
  MDB_cursor* cursor_ = nullptr;
};

// A read-only transaction plus the shared hold on the map that keeps the committer from
// resizing it underneath (mdb_env_set_mapsize needs every transaction of the process ended).
// Members are destroyed in reverse order: the transaction ends before the hold is dropped.
class ReadTxn {
 public:
  ReadTxn(std::shared_lock<std::shared_mutex> hold, MDB_txn* txn)
      : hold_(std::move(hold)), txn_(txn) {}
  MDB_txn* get() const { return txn_.get(); }

 private:
  std::shared_lock<std::shared_mutex> hold_;
  Txn txn_;
};

// The LMDB environment and its databases. Shared (shared_ptr) between the Store and every
// Watch so that a Watch outliving its Store never touches a closed environment.
//
// Thread rules: DBI handles are fixed after Open. Read transactions come from BeginRead on
// any thread (MDB_NOTLS). Write transactions are begun by the committer thread only, which is
// also the only caller of Resize.
class Env {
 public:
  struct Dbis {
    MDB_dbi objects = 0;
    MDB_dbi events = 0;
    MDB_dbi meta = 0;
    MDB_dbi raw = 0;
  };

  // Creates `dir` (0700) if needed, takes an exclusive flock on `dir/edgevirt.lock` (one
  // process per environment: the in-memory RV and map-resize rules assume it), opens the
  // environment with MDB_NOTLS and synchronous commits, clears reader slots left by dead
  // processes and opens (creating) the databases.
  static Result<std::shared_ptr<Env>> Open(const std::filesystem::path& dir,
                                           uint64_t initial_map_size);
  ~Env();
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;

  MDB_env* env() const { return env_; }
  const Dbis& dbis() const { return dbis_; }
  uint64_t map_size() const { return map_size_.load(std::memory_order_relaxed); }

  // Begins a read-only transaction. kUnavailable if LMDB's reader table is full.
  Result<ReadTxn> BeginRead() const;
  // Begins the write transaction. Committer thread only.
  Result<Txn> BeginWrite() const;
  // Sets the map size to `new_size` once no read transaction is open; new readers wait. The
  // caller (the committer) must not hold a transaction.
  Status Resize(uint64_t new_size);
  // Committer: call right before every mdb_txn_commit. Waits until no read transaction is in
  // the middle of mdb_txn_begin (see begin_mu_).
  void BeforeCommit();

 private:
  Env() = default;

  MDB_env* env_ = nullptr;
  Dbis dbis_;
  UniqueFd lock_fd_;
  std::atomic<uint64_t> map_size_{0};
  // Writer preference for Resize: a resizer holds turnstile_ while it waits for map_mu_, so new
  // readers queue behind it instead of starving it (glibc rwlocks prefer readers).
  mutable std::mutex turnstile_;
  mutable std::shared_mutex map_mu_;
  // Held shared only inside mdb_txn_begin of read transactions. LMDB 0.9.24's
  // mdb_txn_renew0 reads the last txnid N from the lock file and only then copies the root
  // pointers from meta page N & 1; a reader preempted in between, while the writer commits
  // N+1 and N+2 (which rewrites that meta page), starts from N+2's roots (labelled N), or from a
  // page caught mid-write; its next transaction then sees N+1, i.e. reads go back in time.
  // The committer takes this exclusively (a barrier) before each commit, so a reader that read
  // N has copied its meta before N+2 can be written. Reproduced with plain LMDB: 4 readers
  // against a committing writer see ~1 in 10^6 reads go backwards; none with the barrier.
  // (libmdbx re-checks the txnid after the copy for the same reason.)
  mutable std::shared_mutex begin_mu_;
};

}  // namespace edgevirt::store::internal
