// The content store under Options::dir: verified, immutable blobs (blobs/sha256/HEX, mode 0444)
// and resumable partial downloads (ingest/HEX). Private to image/.
//
// Ingest protocol (crash-safe, several processes may share the directory):
//   - one writer per blob: ingest/HEX.lock is flock()ed for as long as an Ingest lives;
//   - Checkpoint() fdatasync()s ingest/HEX, then records {"size","offset","started"} under
//   ingest/HEX in
//     the index: the bytes before `offset` are durable;
//   - Open after a crash truncates ingest/HEX to the recorded offset (anything after the last
//     checkpoint is untrusted) and re-hashes that prefix (one sequential read) to rebuild the
//     SHA-256 state;
//   - Commit() checks size and digest, renames ingest/HEX to blobs/sha256/HEX, fsyncs the
//     directory and drops the record. A mismatch removes the partial file and the record.
#pragma once

#include <openssl/evp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "image/index.h"

namespace edgevirt::image {

class ContentStore;

// One partial download, owned by one writer (see the protocol above). Not thread-safe: one
// thread calls it. Writing, hashing and checkpoints (fdatasync + index record) each run on a
// private thread of the Ingest, so that the caller (libcurl's receive loop) never waits for the
// disk, a flush or SHA-256 unless the bounded queue between them (kQueueChunks chunks of
// kChunkBytes) is full, and the disk and SHA-256 work at the same time.
//
// Chunks end on kChunkBytes boundaries of the file and sit in buffers aligned to kDirectAlign
// (a chunk that starts off a boundary is placed at the same offset modulo kDirectAlign), so
// the aligned part of every chunk is written with O_DIRECT from the buffer: no copy into the
// page cache and no page-cache writeback, whose CPU cost and slow flush bounded the pull
// (bench/README.md, images). Unaligned heads and tails, and file systems that refuse O_DIRECT,
// use ordinary buffered writes. Durability is unchanged: a checkpoint and Commit fdatasync the
// file, which also flushes the device's write cache for the O_DIRECT writes.
class Ingest {
 public:
  ~Ingest();
  Ingest(const Ingest&) = delete;
  Ingest& operator=(const Ingest&) = delete;

  static constexpr size_t kChunkBytes = size_t{1} << 20;
  static constexpr size_t kQueueChunks = 6;
  // O_DIRECT alignment of file offsets, lengths and buffers; file systems asking for more
  // (statx STATX_DIOALIGN) get buffered writes.
  static constexpr size_t kDirectAlign = 4096;

  // True while the aligned parts of chunks go through O_DIRECT (for tests and the bench).
  bool direct() const { return direct_.load(); }

  // Bytes accepted by Append. They are written and hashed in order; a write error is returned
  // by the next Append, Checkpoint, Reset or Commit.
  uint64_t offset() const { return offset_; }
  uint64_t committed() const { return committed_.load(); }  // bytes known durable
  uint64_t size() const { return size_; }
  const std::string& digest() const { return digest_; }

  // Queues `n` bytes at offset() for writing and hashing. Bytes past size() are refused
  // (kInvalid) and nothing is written.
  Status Append(const char* data, size_t n);
  // Waits until every accepted byte is written, fdatasyncs, then records offset() as committed
  // in the index.
  Status Checkpoint();
  // Like Checkpoint, but done by the writing thread in order with the data: returns at once
  // (committed() advances later). Does nothing when less than `every` bytes were accepted since
  // the last checkpoint asked for.
  Status CheckpointEvery(uint64_t every);
  // Back to zero bytes (a server ignored Range or answered a wrong one).
  Status Reset();
  // Verifies size and digest and makes the blob; on a mismatch the partial and its record are
  // removed and the error is kInvalid.
  Status Commit();
  // Removes the partial file and its record (the data is known bad).
  void Discard();

 private:
  friend class ContentStore;
  struct Writer;  // the writing, hashing and syncing threads and their queue (content.cc)
  // A kChunkBytes buffer aligned to kDirectAlign; the data starts `skew` bytes in, so that a
  // byte's address and its file offset are congruent modulo kDirectAlign.
  struct Chunk {
    std::unique_ptr<char, void (*)(void*)> buf{nullptr, &std::free};
    size_t skew = 0, size = 0;
    char* data() const { return buf.get() + skew; }
  };
  Ingest();
  Status Rehash();
  // Hands the chunk being filled (possibly empty) to the writer; with `checkpoint` the writer
  // then fdatasyncs and records offset_.
  Status Submit(bool checkpoint);
  // Waits until the writer has done everything queued; its first error, if any.
  Status Drain();
  void StopWriter();
  // Writer side.
  Status WriteChunk(const Chunk& chunk);
  Status WriteBuffered(const char* data, size_t n, uint64_t at);
  Status SyncAndRecord(uint64_t offset);

  ContentStore* store_ = nullptr;
  std::string digest_, hex_;
  uint64_t size_ = 0, offset_ = 0;
  std::atomic<uint64_t> committed_{0};
  uint64_t requested_ = 0;  // offset of the last checkpoint asked for
  uint64_t written_ = 0;    // writer: bytes written
  uint64_t kicked_ = 0;     // writer: writeback started up to here (sync_file_range)
  Chunk fill_;              // the chunk being filled by Append
  std::unique_ptr<Writer> writer_;
  int64_t started_ = 0;  // unix seconds, kept across resumes
  UniqueFd fd_, lock_fd_;
  UniqueFd direct_fd_;  // the same file opened O_DIRECT; closed if the file system refuses it
  std::atomic<bool> direct_{false};
  EVP_MD_CTX* md_ = nullptr;
  bool done_ = false;
};

// A partial download as recorded in the index (for Prune).
struct IngestInfo {
  std::string digest;
  uint64_t size = 0;
  uint64_t offset = 0;  // committed bytes
  int64_t started = 0;  // unix seconds the download first began
};

class ContentStore {
 public:
  // `index` may be null: then nothing is recorded and every ingest starts from zero.
  ContentStore(std::filesystem::path dir, internal::Index* index);

  // dir/blobs/sha256/HEX; `digest` must be valid (IsValidDigest), else an empty path.
  std::filesystem::path BlobPath(std::string_view digest) const;
  std::filesystem::path IngestPath(std::string_view digest) const;
  bool Has(std::string_view digest) const;
  // Verifies size and sha256 of a local file, then places it (copy, or rename when `move`) as
  // the blob. kInvalid on a mismatch (the file is left alone).
  Status Add(const std::filesystem::path& file, std::string_view digest, uint64_t size,
             bool move = false);
  Status Remove(std::string_view digest);         // not found is fine; also drops a partial
  Result<std::vector<std::string>> List() const;  // digests present
  // Of an ingest, 0 if none.
  Result<uint64_t> CommittedOffset(std::string_view digest) const;
  // Every recorded partial download.
  Result<std::vector<IngestInfo>> Ingests() const;
  // Removes a partial download (file, record, lock) unless a writer holds it right now, in which
  // case it is kept and kConflict is returned. For Prune's stale partials.
  Status RemoveIngest(std::string_view digest);
  // Opens (or resumes) the ingest of `digest` of `size` bytes, waiting for another writer of the
  // same blob to finish (checking `cancel`, kUnavailable "cancelled"). Returns null when the
  // blob is already present (another writer made it meanwhile).
  Result<std::unique_ptr<Ingest>> OpenIngest(std::string_view digest, uint64_t size,
                                             const std::atomic<bool>* cancel = nullptr);
  // Ingests opened afterwards write only through the page cache (the path taken where the
  // file system refuses O_DIRECT). For tests and the bench.
  void DisableDirectIoForTest() { direct_io_ = false; }

 private:
  friend class Ingest;
  Status EnsureDirs() const;
  Status Record(std::string_view hex, uint64_t size, uint64_t offset, int64_t started);
  Status DropRecord(std::string_view hex);

  std::filesystem::path dir_;
  internal::Index* index_;
  bool direct_io_ = true;
};

}  // namespace edgevirt::image
