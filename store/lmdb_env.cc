#include "store/lmdb_env.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "common/log.h"

namespace edgevirt::store::internal {
namespace {

// LMDB's reader table is sized at open; each open read transaction (MDB_NOTLS) holds one
// slot. 1024 slots cost 64 KiB of lock file and cover every API thread plus long watches.
constexpr unsigned kMaxReaders = 1024;
constexpr unsigned kMaxDbs = 8;

uint64_t RoundUpToPage(uint64_t size) {
  long page = sysconf(_SC_PAGESIZE);
  uint64_t p = page > 0 ? static_cast<uint64_t>(page) : 4096;
  return (size + p - 1) / p * p;
}

}  // namespace

Error LmdbError(std::string_view context, int rc) {
  Code code = Code::kInternal;
  switch (rc) {
    case MDB_READERS_FULL:
    case ENOSPC:
    case ENOMEM:
    case EAGAIN:
      code = Code::kUnavailable;
      break;
    case MDB_NOTFOUND:
      code = Code::kNotFound;
      break;
    default:
      break;
  }
  return MakeError(code, std::string(context) + ": " + mdb_strerror(rc));
}

Result<std::shared_ptr<Env>> Env::Open(const std::filesystem::path& dir,
                                       uint64_t initial_map_size) {
  std::error_code ec;
  if (dir.has_parent_path()) {
    std::filesystem::create_directories(dir.parent_path(), ec);
    if (ec) {
      return MakeError(Code::kUnavailable,
                       "create " + dir.parent_path().string() + ": " + ec.message());
    }
  }
  if (::mkdir(dir.c_str(), 0700) == 0) {
    // mkdir applies the umask; the state holds every secret the API stores, so be exact.
    if (::chmod(dir.c_str(), 0700) != 0) return ErrnoError("chmod " + dir.string(), errno);
  } else if (errno != EEXIST) {
    return ErrnoError("create " + dir.string(), errno);
  }

  std::shared_ptr<Env> env(new Env());
  std::filesystem::path lock_path = dir / "edgevirt.lock";
  env->lock_fd_.reset(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!env->lock_fd_) return ErrnoError("open " + lock_path.string(), errno);
  if (::flock(env->lock_fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return MakeError(Code::kUnavailable,
                       "state " + dir.string() + " is in use by another process");
    }
    return ErrnoError("lock " + lock_path.string(), errno);
  }

  // Start at least as large as the data file so a reopened big store does not go through a
  // series of MAP_FULL retries before its first write.
  uint64_t map_size = RoundUpToPage(initial_map_size);
  struct stat st;
  if (::stat((dir / "data.mdb").c_str(), &st) == 0) {
    while (map_size < static_cast<uint64_t>(st.st_size)) map_size *= 2;
  }

  int rc = mdb_env_create(&env->env_);
  if (rc != 0) return LmdbError("mdb_env_create", rc);
  if ((rc = mdb_env_set_maxdbs(env->env_, kMaxDbs)) != 0 ||
      (rc = mdb_env_set_maxreaders(env->env_, kMaxReaders)) != 0 ||
      (rc = mdb_env_set_mapsize(env->env_, map_size)) != 0) {
    return LmdbError("configure LMDB environment", rc);
  }
  // MDB_NOTLS: read transactions are not tied to threads, so API threads and watch consumers
  // may run them anywhere. No MDB_NOSYNC / MDB_NOMETASYNC / MDB_WRITEMAP: every commit is
  // fsynced (data pages, then the meta page) before mdb_txn_commit returns.
  rc = mdb_env_open(env->env_, dir.c_str(), MDB_NOTLS, 0600);
  if (rc != 0) return LmdbError("open LMDB environment " + dir.string(), rc);

  // Reader slots of crashed processes would otherwise pin old pages forever.
  int dead = 0;
  rc = mdb_reader_check(env->env_, &dead);
  if (rc != 0) return LmdbError("mdb_reader_check", rc);
  if (dead > 0) EV_LOG(kNotice) << "store: cleared " << dead << " stale LMDB reader slots";

  MDB_envinfo info;
  if ((rc = mdb_env_info(env->env_, &info)) != 0) return LmdbError("mdb_env_info", rc);
  env->map_size_.store(info.me_mapsize, std::memory_order_relaxed);

  // DBI handles opened in a committed write transaction stay valid for the environment's life.
  MDB_txn* raw_txn = nullptr;
  rc = mdb_txn_begin(env->env_, nullptr, 0, &raw_txn);
  if (rc != 0) return LmdbError("begin open transaction", rc);
  Txn txn(raw_txn);
  struct {
    const char* name;
    MDB_dbi* dbi;
  } dbs[] = {{"objects", &env->dbis_.objects},
             {"events", &env->dbis_.events},
             {"meta", &env->dbis_.meta},
             {"raw", &env->dbis_.raw}};
  for (auto& db : dbs) {
    rc = mdb_dbi_open(txn.get(), db.name, MDB_CREATE, db.dbi);
    if (rc != 0) return LmdbError(std::string("open database ") + db.name, rc);
  }
  rc = txn.Commit();
  if (rc != 0) return LmdbError("commit open transaction", rc);
  return env;
}

Env::~Env() {
  if (env_ != nullptr) mdb_env_close(env_);
}

Result<ReadTxn> Env::BeginRead() const {
  { std::lock_guard<std::mutex> turn(turnstile_); }
  std::shared_lock<std::shared_mutex> hold(map_mu_);
  MDB_txn* txn = nullptr;
  int rc;
  {
    std::shared_lock<std::shared_mutex> begin(begin_mu_);
    rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
  }
  if (rc != 0) return LmdbError("begin read transaction", rc);
  return ReadTxn(std::move(hold), txn);
}

Result<Txn> Env::BeginWrite() const {
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, 0, &txn);
  if (rc != 0) return LmdbError("begin write transaction", rc);
  return Txn(txn);
}

void Env::BeforeCommit() {
  // Through the turnstile, so that a stream of readers cannot starve the barrier.
  std::lock_guard<std::mutex> turn(turnstile_);
  std::unique_lock<std::shared_mutex> barrier(begin_mu_);
}

Status Env::Resize(uint64_t new_size) {
  new_size = RoundUpToPage(new_size);
  std::lock_guard<std::mutex> turn(turnstile_);
  std::unique_lock<std::shared_mutex> exclusive(map_mu_);
  int rc = mdb_env_set_mapsize(env_, new_size);
  if (rc != 0) return LmdbError("grow map to " + std::to_string(new_size) + " bytes", rc);
  MDB_envinfo info;
  if (mdb_env_info(env_, &info) == 0) {
    map_size_.store(info.me_mapsize, std::memory_order_relaxed);
  }
  return Ok();
}

}  // namespace edgevirt::store::internal
