#include "image/index.h"

#include <sys/stat.h>

#include <system_error>

namespace edgevirt::image::internal {
namespace {

// Plenty for records of a few hundred bytes each; the file is sparse.
constexpr size_t kMapSize = size_t{1} << 30;

MDB_val Val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
std::string_view View(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}
Error LmdbError(std::string_view what, int rc) {
  return MakeError(Code::kInternal, "image index: " + std::string(what) + ": " + mdb_strerror(rc));
}

struct TxnGuard {
  MDB_txn* txn = nullptr;
  ~TxnGuard() {
    if (txn != nullptr) mdb_txn_abort(txn);
  }
  int Commit() {
    int rc = mdb_txn_commit(txn);
    txn = nullptr;
    return rc;
  }
};

Result<std::optional<std::string>> GetIn(MDB_txn* txn, MDB_dbi dbi, std::string_view key) {
  MDB_val k = Val(key), v;
  int rc = mdb_get(txn, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<std::string>();
  if (rc != 0) return LmdbError("get", rc);
  return std::optional<std::string>(std::string(View(v)));
}

Result<std::vector<std::pair<std::string, std::string>>> ListIn(MDB_txn* txn, MDB_dbi dbi,
                                                                std::string_view prefix) {
  MDB_cursor* cursor = nullptr;
  int rc = mdb_cursor_open(txn, dbi, &cursor);
  if (rc != 0) return LmdbError("cursor", rc);
  std::vector<std::pair<std::string, std::string>> out;
  MDB_val k = Val(prefix), v;
  for (rc = mdb_cursor_get(cursor, &k, &v, prefix.empty() ? MDB_FIRST : MDB_SET_RANGE); rc == 0;
       rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
    std::string_view key = View(k);
    if (key.substr(0, prefix.size()) != prefix) break;
    out.emplace_back(std::string(key), std::string(View(v)));
  }
  mdb_cursor_close(cursor);
  if (rc != 0 && rc != MDB_NOTFOUND) return LmdbError("cursor", rc);
  return out;
}

}  // namespace

Result<std::optional<std::string>> IndexTxn::Get(std::string_view key) {
  return GetIn(txn_, dbi_, key);
}
Result<std::vector<std::pair<std::string, std::string>>> IndexTxn::List(std::string_view prefix) {
  return ListIn(txn_, dbi_, prefix);
}
Status IndexTxn::Put(std::string_view key, std::string_view value) {
  MDB_val k = Val(key), v = Val(value);
  int rc = mdb_put(txn_, dbi_, &k, &v, 0);
  if (rc != 0) return LmdbError("put", rc);
  return Ok();
}
Status IndexTxn::Delete(std::string_view key) {
  MDB_val k = Val(key);
  int rc = mdb_del(txn_, dbi_, &k, nullptr);
  if (rc != 0 && rc != MDB_NOTFOUND) return LmdbError("delete", rc);
  return Ok();
}

Result<std::unique_ptr<Index>> Index::Open(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return MakeError(Code::kInternal, "create " + dir.string() + ": " + ec.message());
  ::chmod(dir.c_str(), 0700);
  std::unique_ptr<Index> index(new Index());
  int rc = mdb_env_create(&index->env_);
  if (rc != 0) return LmdbError("create", rc);
  if ((rc = mdb_env_set_mapsize(index->env_, kMapSize)) != 0) return LmdbError("mapsize", rc);
  if ((rc = mdb_env_open(index->env_, dir.c_str(), MDB_NOTLS, 0600)) != 0) {
    return LmdbError("open " + dir.string(), rc);
  }
  int dead = 0;
  mdb_reader_check(index->env_, &dead);
  TxnGuard txn;
  if ((rc = mdb_txn_begin(index->env_, nullptr, 0, &txn.txn)) != 0) return LmdbError("begin", rc);
  if ((rc = mdb_dbi_open(txn.txn, nullptr, 0, &index->dbi_)) != 0) return LmdbError("dbi", rc);
  if ((rc = txn.Commit()) != 0) return LmdbError("commit", rc);
  return index;
}

Index::~Index() {
  if (env_ != nullptr) mdb_env_close(env_);
}

Result<std::optional<std::string>> Index::Get(std::string_view key) const {
  TxnGuard txn;
  int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn.txn);
  if (rc != 0) return LmdbError("begin", rc);
  return GetIn(txn.txn, dbi_, key);
}

Result<std::vector<std::pair<std::string, std::string>>> Index::List(
    std::string_view prefix) const {
  TxnGuard txn;
  int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn.txn);
  if (rc != 0) return LmdbError("begin", rc);
  return ListIn(txn.txn, dbi_, prefix);
}

Status Index::Put(std::string_view key, std::string_view value) {
  return Update([&](IndexTxn& txn) { return txn.Put(key, value); });
}

Status Index::Delete(std::string_view key) {
  return Update([&](IndexTxn& txn) { return txn.Delete(key); });
}

Status Index::Update(const std::function<Status(IndexTxn&)>& fn) {
  TxnGuard txn;
  int rc = mdb_txn_begin(env_, nullptr, 0, &txn.txn);
  if (rc != 0) return LmdbError("begin", rc);
  IndexTxn view(txn.txn, dbi_);
  if (auto status = fn(view); !status) return status;
  if ((rc = txn.Commit()) != 0) return LmdbError("commit", rc);
  return Ok();
}

}  // namespace edgevirt::image::internal
