// Private to image/: the cache's own small LMDB environment (Options::dir/index). Unlike the
// object store's, it may be open in several processes at once (the daemon and `edgevirtd image
// ...`): the map size is fixed (the index holds only small records) and every write is one
// LMDB write transaction, which LMDB serialises across processes.
//
// Keys (values are JSON):
//   ingest/HEX   {"size", "offset"}: bytes of blob HEX fsynced in ingest/HEX
//   image/HEX    an image record (manifest HEX)
//   ref/REF      "sha256:HEX": the manifest REF resolved to
//   use/OWNER    "sha256:HEX": an image OWNER (a VMI uid) holds
#pragma once

#include <lmdb.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace edgevirt::image::internal {

// A write transaction handed to Index::Update's function.
class IndexTxn {
 public:
  Result<std::optional<std::string>> Get(std::string_view key);
  Result<std::vector<std::pair<std::string, std::string>>> List(std::string_view prefix);
  Status Put(std::string_view key, std::string_view value);
  Status Delete(std::string_view key);  // absent keys are fine

 private:
  friend class Index;
  IndexTxn(MDB_txn* txn, MDB_dbi dbi) : txn_(txn), dbi_(dbi) {}
  MDB_txn* txn_;
  MDB_dbi dbi_;
};

class Index {
 public:
  // Creates `dir` (0700) if needed and opens the environment in it.
  static Result<std::unique_ptr<Index>> Open(const std::filesystem::path& dir);
  ~Index();
  Index(const Index&) = delete;
  Index& operator=(const Index&) = delete;

  Result<std::optional<std::string>> Get(std::string_view key) const;
  Result<std::vector<std::pair<std::string, std::string>>> List(std::string_view prefix) const;
  Status Put(std::string_view key, std::string_view value);
  Status Delete(std::string_view key);
  // Runs `fn` in one write transaction, committed (durably) when it returns OK, aborted else.
  Status Update(const std::function<Status(IndexTxn&)>& fn);

 private:
  Index() = default;
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
};

}  // namespace edgevirt::image::internal
