#include "image/content.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/log.h"
#include "image/manifest.h"
#include "image/reference.h"

namespace edgevirt::image {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kHashBuffer = size_t{1} << 20;
constexpr uint64_t kWritebackBytes = uint64_t{8} << 20;

std::string HexOf(std::string_view digest) { return std::string(digest.substr(7)); }

Status FsyncDir(const fs::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoError("open " + dir.string(), errno);
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + dir.string(), errno);
  return Ok();
}

std::string HexString(const unsigned char* md, unsigned int len) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t RoundDown(uint64_t v, uint64_t a) { return v / a * a; }

// pwrite(2) of all `n` bytes at `at`; 0 or the errno. `done` (optional) gets the bytes written.
int PwriteAll(int fd, const char* data, size_t n, uint64_t at, size_t* done) {
  size_t total = 0;
  while (total < n) {
    ssize_t w = ::pwrite(fd, data + total, n - total, static_cast<off_t>(at + total));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (done != nullptr) *done = total;
      return errno;
    }
    total += static_cast<size_t>(w);
  }
  if (done != nullptr) *done = total;
  return 0;
}

// The file `path` opened for O_DIRECT writes with at most kDirectAlign alignment, or an invalid
// fd (file systems without O_DIRECT, or asking for a larger alignment).
UniqueFd OpenDirect(const fs::path& path, size_t align) {
  struct statx sx;
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) != 0) {
    // Linux >= 6.1 says what it needs; 0 means no O_DIRECT on this file.
    if (sx.stx_dio_offset_align == 0 || sx.stx_dio_offset_align > align ||
        sx.stx_dio_mem_align > align) {
      return UniqueFd();
    }
  }
  // Older kernels: try; a write refused with EINVAL falls back to buffered (WriteChunk).
  return UniqueFd(::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
}

Status WriteAll(int fd, const char* data, size_t n, const std::string& what) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write " + what, errno);
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return Ok();
}

// sha256 and size of an open file, read from the start.
Status HashFile(int fd, EVP_MD_CTX* md, uint64_t limit, uint64_t* read_bytes,
                const std::string& what) {
  std::vector<char> buf(kHashBuffer);
  uint64_t total = 0;
  while (total < limit) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), limit - total));
    ssize_t r = ::pread(fd, buf.data(), want, static_cast<off_t>(total));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read " + what, errno);
    }
    if (r == 0) break;
    EVP_DigestUpdate(md, buf.data(), static_cast<size_t>(r));
    total += static_cast<uint64_t>(r);
  }
  *read_bytes = total;
  return Ok();
}

Error BadDigest(std::string_view digest) {
  return MakeError(Code::kInvalid, "invalid digest \"" + std::string(digest.substr(0, 80)) + "\"");
}

}  // namespace

// ---- Ingest ----

struct Ingest::Writer {
  struct Item {
    Chunk chunk;
    bool checkpoint = false;
    uint64_t offset = 0;  // offset_ after this item (for the checkpoint)
  };
  std::mutex mu;
  // work: an item queued or stop (writer and hasher); space: an item retired or the syncer
  // done; sync_work: a checkpoint to take.
  std::condition_variable work, space, sync_work;
  // Items stay queued until both the writer and the hasher are past them; they take them in
  // order: queue[write_next] is the writer's next, queue[hash_next] the hasher's (deque
  // elements keep their address while others are pushed and popped).
  std::deque<Item> queue;
  size_t write_next = 0, hash_next = 0;
  std::vector<Chunk> spare;  // buffers to reuse
  bool writing = false, hashing = false, stop = false;
  // Checkpoints run on a thread of their own, so that neither the writer nor libcurl's
  // receive loop waits for a flush: the writer hands over the offset it has written up to, the
  // syncer fdatasyncs (also flushing bytes written after it, which is harmless) and records it.
  uint64_t sync_target = 0, synced = 0;
  bool syncing = false;
  Status error = Ok();
  std::thread writer, hasher, syncer;

  // Drops the items both threads are done with, keeping their buffers. Called with mu held.
  void Retire() {
    const size_t done = std::min(write_next, hash_next);
    for (size_t i = 0; i < done; ++i) {
      Chunk& c = queue.front().chunk;
      c.size = c.skew = 0;
      if (c.buf && spare.size() < kQueueChunks) spare.push_back(std::move(c));
      queue.pop_front();
    }
    write_next -= done;
    hash_next -= done;
  }
};

Ingest::Ingest() : writer_(std::make_unique<Writer>()) {}

Ingest::~Ingest() {
  StopWriter();
  if (md_ != nullptr) EVP_MD_CTX_free(md_);
}

void Ingest::StopWriter() {
  {
    std::lock_guard lock(writer_->mu);
    writer_->stop = true;
  }
  writer_->work.notify_all();
  writer_->sync_work.notify_all();
  if (writer_->writer.joinable()) writer_->writer.join();
  if (writer_->hasher.joinable()) writer_->hasher.join();
  if (writer_->syncer.joinable()) writer_->syncer.join();
}

Status Ingest::WriteBuffered(const char* data, size_t n, uint64_t at) {
  int err = PwriteAll(fd_.get(), data, n, at, nullptr);
  if (err != 0) return ErrnoError("write ingest " + hex_, err);
  return Ok();
}

Status Ingest::WriteChunk(const Chunk& chunk) {
  const char* data = chunk.data();
  const size_t n = chunk.size;
  const uint64_t at = written_;
  const uint64_t a = RoundUp(at, kDirectAlign), b = RoundDown(at + n, kDirectAlign);
  if (direct_fd_ && a < b) {
    // Head and tail that do not fill an aligned block go through the page cache; the aligned
    // middle straight to the device (its address is aligned too: see Chunk::skew).
    RETURN_IF_ERROR(WriteBuffered(data, a - at, at));
    size_t done = 0;
    int err = PwriteAll(direct_fd_.get(), data + (a - at), b - a, a, &done);
    if (err == EINVAL) {
      // The file system took O_DIRECT at open but refuses these writes (alignment it did not
      // report, or no support at all): the rest of this ingest is buffered.
      EV_LOG(kInfo) << "ingest " << hex_ << ": O_DIRECT write refused (EINVAL); buffered writes";
      direct_fd_.reset();
      direct_.store(false);
      RETURN_IF_ERROR(WriteBuffered(data + (a - at) + done, (b - a) - done, a + done));
    } else if (err != 0) {
      return ErrnoError("write ingest " + hex_, err);
    }
    RETURN_IF_ERROR(WriteBuffered(data + (b - at), at + n - b, b));
    written_ += n;
    kicked_ = written_;  // nothing of the middle waits in the page cache
    return Ok();
  }
  RETURN_IF_ERROR(WriteBuffered(data, n, at));
  written_ += n;
  // Start writeback of what has accumulated without waiting for it, so that the disk works
  // while the network does and the checkpoint's fdatasync finds little left to write.
  if (written_ - kicked_ >= kWritebackBytes) {
    ::sync_file_range(fd_.get(), static_cast<off_t>(kicked_),
                      static_cast<off_t>(written_ - kicked_), SYNC_FILE_RANGE_WRITE);
    kicked_ = written_;
  }
  return Ok();
}

Status Ingest::SyncAndRecord(uint64_t offset) {
  if (offset == committed_.load()) return Ok();
  if (::fdatasync(fd_.get()) != 0) return ErrnoError("fdatasync ingest " + hex_, errno);
  RETURN_IF_ERROR(store_->Record(hex_, size_, offset, started_));
  committed_.store(offset);
  return Ok();
}

Status Ingest::Submit(bool checkpoint) {
  Writer& w = *writer_;
  std::unique_lock lock(w.mu);
  if (!w.writer.joinable()) {
    w.writer = std::thread([this] {
      Writer& wr = *writer_;
      std::unique_lock l(wr.mu);
      for (;;) {
        wr.work.wait(l, [&] { return wr.stop || wr.write_next < wr.queue.size(); });
        if (wr.stop) return;  // the owner drains before it stops when the data matters
        Writer::Item& item = wr.queue[wr.write_next];
        wr.writing = true;
        const bool failed = !wr.error;
        l.unlock();
        Status st = Ok();
        if (!failed && item.chunk.size > 0) st = WriteChunk(item.chunk);
        l.lock();
        if (!st && wr.error) wr.error = st;
        if (st && item.checkpoint && item.offset > wr.sync_target) {
          wr.sync_target = item.offset;
          wr.sync_work.notify_one();
        }
        ++wr.write_next;
        wr.writing = false;
        wr.Retire();
        wr.space.notify_all();
      }
    });
  }
  if (!w.hasher.joinable()) {
    w.hasher = std::thread([this] {
      Writer& wr = *writer_;
      std::unique_lock l(wr.mu);
      for (;;) {
        wr.work.wait(l, [&] { return wr.stop || wr.hash_next < wr.queue.size(); });
        if (wr.stop) return;
        Writer::Item& item = wr.queue[wr.hash_next];
        wr.hashing = true;
        const bool failed = !wr.error;
        l.unlock();
        // After an error the digest no longer matters: the ingest is reset or abandoned.
        if (!failed && item.chunk.size > 0) {
          EVP_DigestUpdate(md_, item.chunk.data(), item.chunk.size);
        }
        l.lock();
        ++wr.hash_next;
        wr.hashing = false;
        wr.Retire();
        wr.space.notify_all();
      }
    });
  }
  if (!w.syncer.joinable()) {
    w.syncer = std::thread([this] {
      Writer& wr = *writer_;
      std::unique_lock l(wr.mu);
      for (;;) {
        wr.sync_work.wait(l, [&] { return wr.stop || wr.sync_target != wr.synced; });
        if (wr.stop) return;
        const uint64_t target = wr.sync_target;
        const bool failed = !wr.error;
        wr.syncing = true;
        l.unlock();
        Status st = failed ? Ok() : SyncAndRecord(target);
        l.lock();
        if (!st && wr.error) wr.error = st;
        wr.synced = target;
        wr.syncing = false;
        wr.space.notify_all();
      }
    });
  }
  w.space.wait(lock, [&] { return w.queue.size() < kQueueChunks || !w.error; });
  if (!w.error) return w.error;
  w.queue.push_back(Writer::Item{std::move(fill_), checkpoint, offset_});
  fill_ = Chunk();
  if (!w.spare.empty()) {
    fill_ = std::move(w.spare.back());
    w.spare.pop_back();
  }
  lock.unlock();
  w.work.notify_all();
  return Ok();
}

Status Ingest::Drain() {
  if (fill_.size > 0) RETURN_IF_ERROR(Submit(false));
  Writer& w = *writer_;
  std::unique_lock lock(w.mu);
  w.space.wait(lock, [&] {
    return (w.queue.empty() && !w.writing && !w.hashing && !w.syncing &&
            w.sync_target == w.synced) ||
           !w.error;
  });
  return w.error;
}

Status Ingest::Rehash() {
  EVP_DigestInit_ex(md_, EVP_sha256(), nullptr);
  uint64_t got = 0;
  RETURN_IF_ERROR(HashFile(fd_.get(), md_, offset_, &got, hex_));
  if (got != offset_) {
    // Shorter than the record says (the file was tampered with): start over.
    offset_ = 0;
    committed_.store(0);
    if (::ftruncate(fd_.get(), 0) != 0) return ErrnoError("truncate ingest " + hex_, errno);
    EVP_DigestInit_ex(md_, EVP_sha256(), nullptr);
  }
  return Ok();
}

Status Ingest::Append(const char* data, size_t n) {
  if (done_) return MakeError(Code::kInternal, "ingest " + hex_ + " already finished");
  if (n > size_ - offset_) {
    return MakeError(Code::kInvalid, "blob " + digest_ + " is larger than its descriptor size " +
                                         std::to_string(size_));
  }
  while (n > 0) {
    if (!fill_.buf) {
      fill_.buf.reset(static_cast<char*>(std::aligned_alloc(kDirectAlign, kChunkBytes)));
      if (!fill_.buf) return MakeError(Code::kInternal, "out of memory for ingest " + hex_);
    }
    // The chunk's first byte is at file offset `start`; it ends on the next kChunkBytes
    // boundary of the file. skew + capacity <= kChunkBytes because kDirectAlign divides
    // kChunkBytes.
    const uint64_t start = offset_ - fill_.size;
    if (fill_.size == 0) fill_.skew = static_cast<size_t>(start % kDirectAlign);
    const size_t capacity = kChunkBytes - static_cast<size_t>(start % kChunkBytes);
    const size_t take = std::min(n, capacity - fill_.size);
    std::memcpy(fill_.data() + fill_.size, data, take);
    fill_.size += take;
    data += take;
    n -= take;
    offset_ += take;
    if (fill_.size == capacity) RETURN_IF_ERROR(Submit(false));
  }
  return Ok();
}

Status Ingest::CheckpointEvery(uint64_t every) {
  if (done_ || offset_ - requested_ < every) return Ok();
  requested_ = offset_;
  return Submit(true);
}

Status Ingest::Checkpoint() {
  if (done_) return Ok();
  RETURN_IF_ERROR(Drain());
  requested_ = offset_;
  return SyncAndRecord(offset_);
}

Status Ingest::Reset() {
  if (done_) return MakeError(Code::kInternal, "ingest " + hex_ + " already finished");
  RETURN_IF_ERROR(Drain());
  if (::ftruncate(fd_.get(), 0) != 0) return ErrnoError("truncate ingest " + hex_, errno);
  if (::lseek(fd_.get(), 0, SEEK_SET) < 0) return ErrnoError("seek ingest " + hex_, errno);
  EVP_DigestInit_ex(md_, EVP_sha256(), nullptr);
  offset_ = written_ = kicked_ = requested_ = 0;
  {
    std::lock_guard lock(writer_->mu);
    writer_->sync_target = writer_->synced = 0;
  }
  if (committed_.load() != 0) {
    RETURN_IF_ERROR(store_->Record(hex_, size_, 0, started_));
    committed_.store(0);
  }
  return Ok();
}

void Ingest::Discard() {
  StopWriter();
  done_ = true;
  std::error_code ec;
  fs::remove(store_->IngestPath(digest_), ec);
  (void)store_->DropRecord(hex_);
}

Status Ingest::Commit() {
  if (done_) return MakeError(Code::kInternal, "ingest " + hex_ + " already finished");
  RETURN_IF_ERROR(Drain());
  if (offset_ != size_) {
    return MakeError(Code::kInvalid, "blob " + digest_ + ": got " + std::to_string(offset_) +
                                         " bytes, expected " + std::to_string(size_));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md_, md, &len);
  std::string got = HexString(md, len);
  if (got != digest_) {
    Discard();
    return MakeError(Code::kInvalid, "blob digest mismatch: expected " + digest_ + ", got " + got);
  }
  if (::fdatasync(fd_.get()) != 0) return ErrnoError("fdatasync ingest " + hex_, errno);
  if (::fchmod(fd_.get(), 0444) != 0) return ErrnoError("chmod ingest " + hex_, errno);
  fs::path blob = store_->BlobPath(digest_);
  if (::rename(store_->IngestPath(digest_).c_str(), blob.c_str()) != 0) {
    return ErrnoError("rename ingest " + hex_, errno);
  }
  RETURN_IF_ERROR(FsyncDir(blob.parent_path()));
  done_ = true;
  // Waiters for this lock notice the unlinked inode and then find the blob (OpenIngest).
  std::error_code ec;
  fs::remove(store_->dir_ / "ingest" / (hex_ + ".lock"), ec);
  return store_->DropRecord(hex_);
}

// ---- ContentStore ----

ContentStore::ContentStore(fs::path dir, internal::Index* index)
    : dir_(std::move(dir)), index_(index) {}

fs::path ContentStore::BlobPath(std::string_view digest) const {
  if (!IsValidDigest(digest)) return {};
  return dir_ / "blobs" / "sha256" / HexOf(digest);
}

fs::path ContentStore::IngestPath(std::string_view digest) const {
  if (!IsValidDigest(digest)) return {};
  return dir_ / "ingest" / HexOf(digest);
}

bool ContentStore::Has(std::string_view digest) const {
  if (!IsValidDigest(digest)) return false;
  struct stat st;
  return ::stat(BlobPath(digest).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Status ContentStore::EnsureDirs() const {
  std::error_code ec;
  fs::create_directories(dir_ / "blobs" / "sha256", ec);
  if (ec)
    return MakeError(Code::kInternal, "create " + (dir_ / "blobs").string() + ": " + ec.message());
  fs::create_directories(dir_ / "ingest", ec);
  if (ec)
    return MakeError(Code::kInternal, "create " + (dir_ / "ingest").string() + ": " + ec.message());
  return Ok();
}

Status ContentStore::Record(std::string_view hex, uint64_t size, uint64_t offset, int64_t started) {
  if (index_ == nullptr) return Ok();
  json j = {{"size", size}, {"offset", offset}, {"started", started}};
  return index_->Put("ingest/" + std::string(hex), j.dump());
}

Status ContentStore::DropRecord(std::string_view hex) {
  if (index_ == nullptr) return Ok();
  return index_->Delete("ingest/" + std::string(hex));
}

Status ContentStore::Add(const fs::path& file, std::string_view digest, uint64_t size, bool move) {
  if (!IsValidDigest(digest)) return BadDigest(digest);
  RETURN_IF_ERROR(EnsureDirs());
  UniqueFd in(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError("open " + file.string(), errno);
  struct stat st;
  if (::fstat(in.get(), &st) != 0) return ErrnoError("stat " + file.string(), errno);
  if (!S_ISREG(st.st_mode))
    return MakeError(Code::kInvalid, file.string() + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) != size) {
    return MakeError(Code::kInvalid, file.string() + ": size " + std::to_string(st.st_size) +
                                         ", expected " + std::to_string(size));
  }
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(md, EVP_sha256(), nullptr);
  uint64_t got = 0;
  Status hashed = HashFile(in.get(), md, size, &got, file.string());
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md, out, &len);
  EVP_MD_CTX_free(md);
  RETURN_IF_ERROR(hashed);
  std::string actual = HexString(out, len);
  if (got != size || actual != digest) {
    return MakeError(Code::kInvalid,
                     file.string() + ": digest " + actual + ", expected " + std::string(digest));
  }
  if (Has(digest)) return Ok();
  fs::path blob = BlobPath(digest);
  if (move && ::rename(file.c_str(), blob.c_str()) == 0) {
    ::chmod(blob.c_str(), 0444);
    return FsyncDir(blob.parent_path());
  }
  // Copy through a temporary name in the same directory, then rename.
  fs::path tmp = dir_ / "ingest" / (HexOf(digest) + ".add." + std::to_string(::getpid()));
  UniqueFd out_fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!out_fd) return ErrnoError("create " + tmp.string(), errno);
  std::vector<char> buf(kHashBuffer);
  uint64_t copied = 0;
  while (copied < size) {
    ssize_t r = ::pread(in.get(), buf.data(), buf.size(), static_cast<off_t>(copied));
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      int err = r < 0 ? errno : EIO;
      ::unlink(tmp.c_str());
      return ErrnoError("read " + file.string(), err);
    }
    Status w = WriteAll(out_fd.get(), buf.data(), static_cast<size_t>(r), tmp.string());
    if (!w) {
      ::unlink(tmp.c_str());
      return w;
    }
    copied += static_cast<uint64_t>(r);
  }
  if (::fdatasync(out_fd.get()) != 0 || ::fchmod(out_fd.get(), 0444) != 0 ||
      ::rename(tmp.c_str(), blob.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("place blob " + std::string(digest), err);
  }
  return FsyncDir(blob.parent_path());
}

Status ContentStore::Remove(std::string_view digest) {
  if (!IsValidDigest(digest)) return BadDigest(digest);
  std::error_code ec;
  fs::remove(BlobPath(digest), ec);
  if (ec)
    return MakeError(Code::kInternal, "remove blob " + std::string(digest) + ": " + ec.message());
  fs::remove(IngestPath(digest), ec);
  return DropRecord(HexOf(digest));
}

Result<std::vector<std::string>> ContentStore::List() const {
  std::vector<std::string> out;
  std::error_code ec;
  fs::path dir = dir_ / "blobs" / "sha256";
  if (!fs::exists(dir, ec)) return out;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string digest = "sha256:" + it->path().filename().string();
    if (IsValidDigest(digest) && it->is_regular_file(ec)) out.push_back(digest);
  }
  if (ec) return MakeError(Code::kInternal, "list " + dir.string() + ": " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

Result<uint64_t> ContentStore::CommittedOffset(std::string_view digest) const {
  if (!IsValidDigest(digest)) return BadDigest(digest);
  if (index_ == nullptr) return uint64_t{0};
  ASSIGN_OR_RETURN(auto value, index_->Get("ingest/" + HexOf(digest)));
  if (!value) return uint64_t{0};
  json j = json::parse(*value, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("offset") ||
      !j["offset"].is_number_unsigned()) {
    return uint64_t{0};
  }
  return j["offset"].get<uint64_t>();
}

Result<std::vector<IngestInfo>> ContentStore::Ingests() const {
  std::vector<IngestInfo> out;
  if (index_ == nullptr) return out;
  ASSIGN_OR_RETURN(auto records, index_->List("ingest/"));
  for (const auto& [key, value] : records) {
    IngestInfo info;
    info.digest = "sha256:" + key.substr(std::string_view("ingest/").size());
    if (!IsValidDigest(info.digest)) continue;
    json j = json::parse(value, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    info.size = j.value("size", uint64_t{0});
    info.offset = j.value("offset", uint64_t{0});
    info.started = j.value("started", int64_t{0});
    out.push_back(std::move(info));
  }
  return out;
}

Status ContentStore::RemoveIngest(std::string_view digest) {
  if (!IsValidDigest(digest)) return BadDigest(digest);
  std::string hex = HexOf(digest);
  fs::path lock_path = dir_ / "ingest" / (hex + ".lock");
  UniqueFd lock_fd(::open(lock_path.c_str(), O_RDWR | O_CLOEXEC));
  if (lock_fd) {
    if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
      return MakeError(Code::kConflict, "ingest " + std::string(digest) + " is being written");
    }
  }
  std::error_code ec;
  fs::remove(IngestPath(digest), ec);
  if (ec) return MakeError(Code::kInternal, "remove ingest " + hex + ": " + ec.message());
  RETURN_IF_ERROR(DropRecord(hex));
  if (lock_fd) fs::remove(lock_path, ec);
  return Ok();
}

Result<std::unique_ptr<Ingest>> ContentStore::OpenIngest(std::string_view digest, uint64_t size,
                                                         const std::atomic<bool>* cancel) {
  if (!IsValidDigest(digest)) return BadDigest(digest);
  RETURN_IF_ERROR(EnsureDirs());
  std::string hex = HexOf(digest);
  fs::path lock_path = dir_ / "ingest" / (hex + ".lock");
  UniqueFd lock_fd;
  while (true) {
    lock_fd.reset(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!lock_fd) return ErrnoError("open " + lock_path.string(), errno);
    if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) == 0) {
      // The lock file may have been replaced between open and flock; hold the current one.
      struct stat held, now;
      if (::fstat(lock_fd.get(), &held) == 0 && ::stat(lock_path.c_str(), &now) == 0 &&
          held.st_ino == now.st_ino && held.st_dev == now.st_dev) {
        break;
      }
      continue;
    }
    if (errno != EWOULDBLOCK) return ErrnoError("lock " + lock_path.string(), errno);
    if (cancel != nullptr && cancel->load()) return MakeError(Code::kUnavailable, "cancelled");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (Has(digest)) return std::unique_ptr<Ingest>();

  auto ingest = std::unique_ptr<Ingest>(new Ingest());
  ingest->store_ = this;
  ingest->digest_ = std::string(digest);
  ingest->hex_ = hex;
  ingest->size_ = size;
  ingest->lock_fd_ = std::move(lock_fd);
  ingest->md_ = EVP_MD_CTX_new();
  if (ingest->md_ == nullptr) return MakeError(Code::kInternal, "EVP_MD_CTX_new failed");

  uint64_t committed = 0;
  if (index_ != nullptr) {
    ASSIGN_OR_RETURN(auto value, index_->Get("ingest/" + hex));
    if (value) {
      json j = json::parse(*value, nullptr, false);
      if (!j.is_discarded() && j.is_object() && j.value("size", uint64_t{0}) == size &&
          j.contains("offset") && j["offset"].is_number_unsigned()) {
        committed = std::min<uint64_t>(j["offset"].get<uint64_t>(), size);
        if (j.contains("started") && j["started"].is_number_integer()) {
          ingest->started_ = j["started"].get<int64_t>();
        }
      }
    }
  }
  fs::path path = IngestPath(digest);
  ingest->fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!ingest->fd_) return ErrnoError("open " + path.string(), errno);
  // Bytes after the last checkpoint may be garbage after a crash: drop them.
  if (::ftruncate(ingest->fd_.get(), static_cast<off_t>(committed)) != 0) {
    return ErrnoError("truncate " + path.string(), errno);
  }
  ingest->offset_ = committed;
  ingest->committed_.store(committed);
  RETURN_IF_ERROR(ingest->Rehash());
  ingest->written_ = ingest->kicked_ = ingest->requested_ = ingest->offset_;
  if (direct_io_) ingest->direct_fd_ = OpenDirect(path, Ingest::kDirectAlign);
  ingest->direct_.store(static_cast<bool>(ingest->direct_fd_));
  if (::lseek(ingest->fd_.get(), static_cast<off_t>(ingest->offset_), SEEK_SET) < 0) {
    return ErrnoError("seek " + path.string(), errno);
  }
  if (ingest->started_ == 0) ingest->started_ = static_cast<int64_t>(::time(nullptr));
  if (ingest->committed_.load() != committed || committed == 0) {
    RETURN_IF_ERROR(Record(hex, size, ingest->committed_.load(), ingest->started_));
  }
  return ingest;
}

}  // namespace edgevirt::image
