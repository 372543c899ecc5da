#include "image/disk.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/exec.h"
#include "common/fd.h"
#include "image/image.h"

namespace edgevirt::image {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxEntries = 1'000'000;  // entries over all layers: bounds the model's memory
constexpr size_t kMaxNameBytes = 4096;
constexpr size_t kSparseBlock = 4096;
constexpr size_t kTarBlock = 512;

using ArchivePtr = UniqueHandle<archive, archive_read_free>;

std::string Quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

// What the model keeps of one path of the final tree.
enum class Kind { kDir, kFile, kSymlink, kOther };

struct Node {
  Kind kind = Kind::kDir;
  size_t layer = 0;      // the layer that wrote it (whiteouts only remove lower layers' nodes)
  uint64_t ordinal = 0;  // kFile: the entry in `data_layer` holding the data
  size_t data_layer = 0;
  std::string link;  // kSymlink: the target as written; kFile: a hardlink's target
  std::string what;  // kOther: "character device", "fifo", ...
};

// "a/b/c" of an entry name: leading "./" and "." components dropped, "" for the root. Refuses
// absolute names and ".." components.
Result<std::string> CanonicalEntryName(std::string_view name, bool allow_absolute) {
  if (name.empty()) return MakeError(Code::kInvalid, "empty name");
  if (name.size() > kMaxNameBytes) return MakeError(Code::kInvalid, "name too long");
  if (name.front() == '/' && !allow_absolute) {
    return MakeError(Code::kInvalid, "absolute path " + Quoted(name));
  }
  std::string out;
  size_t pos = 0;
  while (pos <= name.size()) {
    size_t slash = name.find('/', pos);
    if (slash == std::string_view::npos) slash = name.size();
    std::string_view part = name.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") return MakeError(Code::kInvalid, "\"..\" component in " + Quoted(name));
    if (!out.empty()) out += '/';
    out += part;
  }
  return out;
}

std::string_view Parent(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
}

std::string_view Base(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// Whether a relative symlink target, resolved lexically from the link's directory, stays inside
// the root. (Absolute targets are resolved inside the root by a container: not an escape.)
bool RelativeTargetStaysInside(std::string_view link_path, std::string_view target) {
  int depth = 0;
  for (std::string_view dir = Parent(link_path); !dir.empty(); dir = Parent(dir)) ++depth;
  size_t pos = 0;
  while (pos <= target.size()) {
    size_t slash = target.find('/', pos);
    if (slash == std::string_view::npos) slash = target.size();
    std::string_view part = target.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (--depth < 0) return false;
    } else {
      ++depth;
    }
  }
  return true;
}

std::string_view KindName(Kind kind) {
  switch (kind) {
    case Kind::kDir:
      return "a directory";
    case Kind::kFile:
      return "a regular file";
    case Kind::kSymlink:
      return "a symlink";
    case Kind::kOther:
      return "a special file";
  }
  return "?";
}

std::string LayerName(const Layer& layer, size_t index) {
  return "layer " + std::to_string(index + 1) + " (" +
         (layer.digest.empty() ? layer.blob.filename().string() : layer.digest) + ")";
}

// Reads the tar stream of one layer blob. Two libarchive readers are chained: the first only
// decompresses (the filter chosen by media type, "raw" format), the second parses tar from the
// decompressed bytes. In between, a missing end of the stream is completed with zero padding to
// the next 512-byte block and an end-of-archive footer, because umoci 0.4.7 `insert` writes
// layers without either (umoci #436) and libarchive 3.6 then fails the last entry with
// "Truncated input file". Padding could also complete a truncated entry with zeros, so the disk
// entry's data is checked to end within the real bytes (DataWasComplete).
class LayerReader {
 public:
  static Result<std::unique_ptr<LayerReader>> Open(const Layer& layer, size_t index) {
    std::unique_ptr<LayerReader> r(new LayerReader());
    r->name_ = LayerName(layer, index);
    int want_filter = ARCHIVE_FILTER_NONE;
    r->decoder_.reset(archive_read_new());
    r->tar_.reset(archive_read_new());
    if (!r->decoder_ || !r->tar_) return MakeError(Code::kInternal, "archive_read_new failed");
    const std::string& mt = layer.media_type;
    if (mt == kMediaTypeOciLayer) {
      // No filter registered: anything compressed fails as "not a tar".
    } else if (mt == kMediaTypeOciLayerGzip || mt == kMediaTypeDockerLayerGzip) {
      archive_read_support_filter_gzip(r->decoder_.get());
      want_filter = ARCHIVE_FILTER_GZIP;
    } else if (mt == kMediaTypeOciLayerZstd) {
      archive_read_support_filter_zstd(r->decoder_.get());
      want_filter = ARCHIVE_FILTER_ZSTD;
    } else {
      return MakeError(Code::kInvalid,
                       r->name_ + ": unsupported layer media type " + Quoted(mt) +
                           " (only OCI tar, tar+gzip, tar+zstd and Docker tar.gzip layers)");
    }
    archive_read_support_format_raw(r->decoder_.get());
    r->fd_.reset(::open(layer.blob.c_str(), O_RDONLY | O_CLOEXEC));
    if (!r->fd_) return ErrnoError("open " + layer.blob.string(), errno);
    if (archive_read_open_fd(r->decoder_.get(), r->fd_.get(), 128 * 1024) != ARCHIVE_OK) {
      return r->DecoderError("not a " + mt + " blob");
    }
    archive_entry* raw = nullptr;
    if (archive_read_next_header(r->decoder_.get(), &raw) != ARCHIVE_OK) {
      return r->DecoderError("not a " + mt + " blob");
    }
    if (archive_filter_code(r->decoder_.get(), 0) != want_filter) {
      return MakeError(Code::kInvalid,
                       r->name_ + ": the blob is not compressed as its media type " + Quoted(mt) +
                           " says (found " + archive_filter_name(r->decoder_.get(), 0) + ")");
    }
    archive_read_support_format_tar(r->tar_.get());
    archive_read_support_format_empty(r->tar_.get());
    if (archive_read_open(r->tar_.get(), r.get(), nullptr, &LayerReader::ReadCallback, nullptr) !=
        ARCHIVE_OK) {
      return r->TarError("not a tar archive");
    }
    return r;
  }

  const std::string& name() const { return name_; }
  archive* tar() { return tar_.get(); }

  // The next entry, nullptr at the end of the archive.
  Result<archive_entry*> Next() {
    archive_entry* entry = nullptr;
    int rc = archive_read_next_header(tar_.get(), &entry);
    if (rc == ARCHIVE_EOF) return static_cast<archive_entry*>(nullptr);
    if (rc == ARCHIVE_OK || rc == ARCHIVE_WARN) {
      ++ordinal_;
      return entry;
    }
    return TarError("reading entry " + std::to_string(ordinal_ + 1));
  }
  // 1-based number of the entry Next() returned last.
  uint64_t ordinal() const { return ordinal_; }

  Status Skip() {
    if (archive_read_data_skip(tar_.get()) != ARCHIVE_OK) return TarError("skipping entry data");
    return Ok();
  }

  // After the last data block of a non-sparse entry of `size` bytes has been read: whether all of
  // its bytes came from the blob rather than from the padding added at its end.
  bool DataWasComplete(uint64_t size, bool sparse) const {
    if (!source_eof_) return true;  // padding is only ever served after the real end
    uint64_t consumed = static_cast<uint64_t>(archive_filter_bytes(tar_.get(), 0));
    // libarchive consumes the entry's padding with its last data block.
    uint64_t padding = sparse ? 0 : (kTarBlock - size % kTarBlock) % kTarBlock;
    return consumed >= padding && consumed - padding <= real_bytes_;
  }

  Error TarError(std::string_view what) const {
    const char* msg = archive_error_string(tar_.get());
    return MakeError(Code::kInvalid,
                     name_ + ": " + std::string(what) + ": " +
                         (decoder_error_.empty() ? (msg ? msg : "tar error") : decoder_error_));
  }

 private:
  LayerReader() = default;

  Error DecoderError(std::string_view what) const {
    const char* msg = archive_error_string(decoder_.get());
    return MakeError(Code::kInvalid,
                     name_ + ": " + std::string(what) + ": " + (msg ? msg : "decode error"));
  }

  static la_ssize_t ReadCallback(archive*, void* self, const void** out) {
    auto* r = static_cast<LayerReader*>(self);
    *out = r->buf_.data();
    if (!r->source_eof_) {
      la_ssize_t n = archive_read_data(r->decoder_.get(), r->buf_.data(), r->buf_.size());
      if (n < 0) {
        const char* msg = archive_error_string(r->decoder_.get());
        r->decoder_error_ = std::string("decompressing: ") + (msg ? msg : "error");
        archive_set_error(r->tar_.get(), EIO, "%s", r->decoder_error_.c_str());
        return -1;
      }
      if (n > 0) {
        r->real_bytes_ += static_cast<uint64_t>(n);
        return n;
      }
      r->source_eof_ = true;
      r->padding_left_ = (kTarBlock - r->real_bytes_ % kTarBlock) % kTarBlock + 2 * kTarBlock;
    }
    if (r->padding_left_ == 0) return 0;
    size_t n = std::min<size_t>(r->padding_left_, r->buf_.size());
    std::memset(r->buf_.data(), 0, n);
    r->padding_left_ -= n;
    return static_cast<la_ssize_t>(n);
  }

  std::string name_;
  UniqueFd fd_;
  ArchivePtr decoder_;  // reads fd_
  ArchivePtr tar_;      // reads decoder_ through ReadCallback
  std::array<char, 128 * 1024> buf_{};
  uint64_t real_bytes_ = 0;
  bool source_eof_ = false;
  uint64_t padding_left_ = 0;
  uint64_t ordinal_ = 0;
  std::string decoder_error_;
};

// The final tree of the image, as far as headers tell, built layer by layer.
class Model {
 public:
  // Applies one entry of layer `layer`. Refuses the entries that could escape the root.
  Status Apply(size_t layer, uint64_t ordinal, archive_entry* entry) {
    const char* raw_name = archive_entry_pathname(entry);
    if (raw_name == nullptr) return MakeError(Code::kInvalid, "an entry without a readable name");
    ASSIGN_OR_RETURN(std::string path, CanonicalEntryName(raw_name, false));
    if (path.empty()) return Ok();  // the root itself
    RETURN_IF_ERROR(CheckAncestors(path));

    std::string_view base = Base(path);
    if (base.starts_with(".wh.")) {
      std::string dir(Parent(path));
      if (base == ".wh..wh..opq") {
        EraseLower(dir, layer, /*self=*/false);
      } else if (!base.starts_with(".wh..wh.")) {  // .wh..wh.plnk etc.: aufs metadata, ignored
        std::string_view victim = base.substr(4);
        if (victim.empty() || victim == "." || victim == "..") {
          return MakeError(Code::kInvalid, "bad whiteout " + Quoted(raw_name));
        }
        EraseLower(dir.empty() ? std::string(victim) : dir + "/" + std::string(victim), layer,
                   /*self=*/true);
      }
      return Ok();
    }

    Node node;
    node.layer = layer;
    if (const char* hard = archive_entry_hardlink(entry)) {
      auto target = CanonicalEntryName(hard, false);
      if (!target) {
        return MakeError(Code::kInvalid,
                         "hardlink " + Quoted(raw_name) + " -> " + Quoted(hard) +
                             ": target outside the image: " + target.error().message);
      }
      auto it = nodes_.find(*target);
      if (it == nodes_.end() || it->second.kind != Kind::kFile) {
        return MakeError(Code::kInvalid,
                         "hardlink " + Quoted(raw_name) + " -> " + Quoted(hard) +
                             ": target is not an earlier regular file of the image");
      }
      node.kind = Kind::kFile;
      node.link = hard;
      node.data_layer = it->second.data_layer;
      node.ordinal = it->second.ordinal;
    } else {
      switch (archive_entry_filetype(entry)) {
        case AE_IFREG:
          node.kind = Kind::kFile;
          node.data_layer = layer;
          node.ordinal = ordinal;
          break;
        case AE_IFDIR:
          node.kind = Kind::kDir;
          break;
        case AE_IFLNK: {
          const char* target = archive_entry_symlink(entry);
          if (target == nullptr || *target == '\0') {
            return MakeError(Code::kInvalid, "symlink " + Quoted(raw_name) + " without a target");
          }
          if (target[0] != '/' && !RelativeTargetStaysInside(path, target)) {
            return MakeError(Code::kInvalid, "symlink " + Quoted(raw_name) + " -> " +
                                                 Quoted(target) + " resolves outside the image");
          }
          node.kind = Kind::kSymlink;
          node.link = target;
          break;
        }
        case AE_IFCHR:
          node.kind = Kind::kOther, node.what = "a character device";
          break;
        case AE_IFBLK:
          node.kind = Kind::kOther, node.what = "a block device";
          break;
        case AE_IFIFO:
          node.kind = Kind::kOther, node.what = "a fifo";
          break;
        case AE_IFSOCK:
          node.kind = Kind::kOther, node.what = "a socket";
          break;
        default:
          return MakeError(Code::kInvalid, "entry " + Quoted(raw_name) + " of unknown type");
      }
    }

    auto it = nodes_.find(path);
    if (it != nodes_.end()) {
      if (it->second.kind == Kind::kDir && node.kind == Kind::kDir) {
        it->second.layer = layer;  // a directory entry over a directory keeps its children
        return Ok();
      }
      EraseTree(path);
    }
    if (nodes_.size() >= kMaxEntries) {
      return MakeError(Code::kInvalid, "more than " + std::to_string(kMaxEntries) + " entries");
    }
    nodes_.emplace(std::move(path), std::move(node));
    return Ok();
  }

  // The node at `path` ("" is the root), nullptr when there is none.
  const Node* Find(const std::string& path) const {
    auto it = nodes_.find(path);
    return it == nodes_.end() ? nullptr : &it->second;
  }

  // The names directly under `dir` (also those only implied by deeper entries).
  std::vector<std::string> Children(const std::string& dir) const {
    std::set<std::string> names;
    std::string prefix = dir + "/";
    for (auto it = nodes_.lower_bound(prefix); it != nodes_.end() && it->first.starts_with(prefix);
         ++it) {
      std::string_view rest = std::string_view(it->first).substr(prefix.size());
      names.emplace(rest.substr(0, rest.find('/')));
    }
    return {names.begin(), names.end()};
  }

  // Refuses `path` when one of its ancestors is a symlink or not a directory: writing through
  // it is how `disk -> /etc` then `disk/passwd` escapes a naive extractor.
  Status CheckAncestors(std::string_view path) const {
    for (std::string_view dir = Parent(path); !dir.empty(); dir = Parent(dir)) {
      auto it = nodes_.find(std::string(dir));
      if (it == nodes_.end()) continue;
      if (it->second.kind == Kind::kSymlink) {
        return MakeError(Code::kInvalid, "entry " + Quoted(path) + " is below symlink " +
                                             Quoted(dir) + " -> " + Quoted(it->second.link));
      }
      if (it->second.kind != Kind::kDir) {
        return MakeError(Code::kInvalid, "entry " + Quoted(path) + " is below " + Quoted(dir) +
                                             ", " + std::string(KindName(it->second.kind)));
      }
    }
    return Ok();
  }

 private:
  // Removes the nodes of layers below `layer` at `path` (when `self`) and under it.
  void EraseLower(const std::string& path, size_t layer, bool self) {
    if (self) {
      auto it = nodes_.find(path);
      if (it != nodes_.end() && it->second.layer < layer) nodes_.erase(it);
    }
    std::string prefix = path.empty() ? "" : path + "/";
    for (auto it = nodes_.lower_bound(prefix);
         it != nodes_.end() && it->first.starts_with(prefix);) {
      it = it->second.layer < layer ? nodes_.erase(it) : std::next(it);
    }
  }

  void EraseTree(const std::string& path) {
    nodes_.erase(path);
    std::string prefix = path + "/";
    auto it = nodes_.lower_bound(prefix);
    while (it != nodes_.end() && it->first.starts_with(prefix)) it = nodes_.erase(it);
  }

  std::map<std::string, Node> nodes_;
};

// Locates the disk in the model: the one entry under disk/, or path_in_image.
Result<std::pair<std::string, const Node*>> FindDisk(const Model& model,
                                                     std::string_view path_in_image,
                                                     const std::vector<Layer>& layers) {
  std::string path;
  if (path_in_image.empty()) {
    if (const Node* d = model.Find("disk"); d != nullptr && d->kind != Kind::kDir) {
      return MakeError(Code::kInvalid,
                       "/disk is " + std::string(KindName(d->kind)) +
                           (d->kind == Kind::kSymlink ? " (-> " + Quoted(d->link) + ")" : "") +
                           ", not a directory");
    }
    auto children = model.Children("disk");
    if (children.empty()) return MakeError(Code::kInvalid, "no file found under /disk");
    if (children.size() > 1) {
      std::string names;
      for (const auto& c : children) names += (names.empty() ? "" : ", ") + c;
      return MakeError(
          Code::kInvalid,
          "more than one file found under /disk: only one disk is allowed (" + names + ")");
    }
    path = "disk/" + children.front();
  } else {
    auto canonical = CanonicalEntryName(path_in_image, /*allow_absolute=*/true);
    if (!canonical) return std::move(canonical).error().Wrap("disk path");
    if (canonical->empty()) return MakeError(Code::kInvalid, "disk path names the image root");
    path = std::move(*canonical);
    auto ancestors = model.CheckAncestors(path);
    if (!ancestors) return std::move(ancestors).error().Wrap("disk path");
  }
  const Node* node = model.Find(path);
  if (node == nullptr) {
    // Only implied by deeper entries: a directory.
    if (!model.Children(path).empty()) {
      return MakeError(Code::kInvalid, "disk /" + path + " is a directory, not a regular file");
    }
    return MakeError(Code::kInvalid, "no file found at /" + path);
  }
  const std::string from = " (" + LayerName(layers[node->layer], node->layer) + ")";
  switch (node->kind) {
    case Kind::kFile:
      if (!node->link.empty()) {
        return MakeError(Code::kInvalid, "disk /" + path + " is a hardlink (to " +
                                             Quoted(node->link) + ")" + from +
                                             ": a link cannot be the disk");
      }
      return std::make_pair(path, node);
    case Kind::kSymlink:
      return MakeError(Code::kInvalid, "disk /" + path + " is a symlink (-> " + Quoted(node->link) +
                                           ")" + from + ": a symlink cannot be the disk");
    case Kind::kDir:
      return MakeError(Code::kInvalid,
                       "disk /" + path + " is a directory" + from + ", not a regular file");
    case Kind::kOther:
      return MakeError(Code::kInvalid,
                       "disk /" + path + " is " + node->what + from + ", not a regular file");
  }
  return MakeError(Code::kInternal, "unreachable");
}

bool AllZero(const char* p, size_t n) {
  static const char kZeros[kSparseBlock] = {};
  while (n > 0) {
    size_t k = std::min(n, sizeof kZeros);
    if (std::memcmp(p, kZeros, k) != 0) return false;
    p += k;
    n -= k;
  }
  return true;
}

// Streams the data of the current entry into `fd` (new and empty), leaving all-zero 4 KiB
// blocks as holes. Returns the entry's size; the file is truncated to it.
Result<uint64_t> CopySparse(LayerReader& reader, archive_entry* entry, int fd,
                            const std::string& path) {
  if (!archive_entry_size_is_set(entry) || archive_entry_size(entry) < 0) {
    return MakeError(Code::kInvalid, reader.name() + ": disk entry " + path + " has no size");
  }
  const uint64_t size = static_cast<uint64_t>(archive_entry_size(entry));
  const bool sparse = archive_entry_sparse_count(entry) > 0;
  uint64_t end = 0;
  while (true) {
    const void* buf = nullptr;
    size_t len = 0;
    la_int64_t offset = 0;
    int rc = archive_read_data_block(reader.tar(), &buf, &len, &offset);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
      return reader.TarError("reading disk entry " + path);
    }
    if (offset < 0 || static_cast<uint64_t>(offset) < end || static_cast<uint64_t>(offset) > size ||
        len > size - static_cast<uint64_t>(offset)) {
      return MakeError(Code::kInvalid, reader.name() + ": disk entry " + path +
                                           ": data block outside the entry's size");
    }
    uint64_t pos = static_cast<uint64_t>(offset);
    const char* p = static_cast<const char*>(buf);
    size_t left = len;
    while (left > 0) {
      // Up to the next 4 KiB boundary of the file, so holes line up with file system blocks.
      size_t n = std::min<size_t>(left, kSparseBlock - pos % kSparseBlock);
      if (!AllZero(p, n)) RETURN_IF_ERROR(WriteAllAt(fd, p, n, pos, "disk"));
      p += n;
      pos += n;
      left -= n;
    }
    end = pos;
  }
  if (!sparse && end != size) {
    return MakeError(Code::kInvalid, reader.name() + ": disk entry " + path + " is truncated");
  }
  if (!reader.DataWasComplete(size, sparse)) {
    return MakeError(Code::kInvalid, reader.name() + ": disk entry " + path +
                                         " is truncated (the layer ends inside its data)");
  }
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) return ErrnoError("truncate disk", errno);
  return size;
}

// Removes a file on scope exit unless disarmed.
class UnlinkOnExit {
 public:
  UnlinkOnExit(int dir_fd, std::string name) : dir_fd_(dir_fd), name_(std::move(name)) {}
  ~UnlinkOnExit() {
    if (armed_) ::unlinkat(dir_fd_, name_.c_str(), 0);
  }
  UnlinkOnExit(const UnlinkOnExit&) = delete;
  UnlinkOnExit& operator=(const UnlinkOnExit&) = delete;
  void Disarm() { armed_ = false; }

 private:
  int dir_fd_;
  std::string name_;
  bool armed_ = true;
};

constexpr uint64_t kQemuImgCpuSeconds = 10;
constexpr uint64_t kQemuImgAddressSpace = uint64_t{1} << 30;

uint64_t ReadBe64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

// Refuses a qcow2 that names other files before qemu-img gets to open them: a backing file
// (header backing_file_offset) or an external data file (incompatible feature bit 2, qcow2 v3).
// qemu-img info would otherwise open the path the image names (KubeVirt only checks afterwards).
Status PrecheckQcow2Header(const std::filesystem::path& file) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return ErrnoError("open " + file.string(), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("stat " + file.string(), errno);
  if (!S_ISREG(st.st_mode)) {
    return MakeError(Code::kInvalid, file.string() + " is not a regular file");
  }
  unsigned char h[104] = {};
  ssize_t n = ::pread(fd.get(), h, sizeof h, 0);
  if (n < 0) return ErrnoError("read " + file.string(), errno);
  if (n < 8 || std::memcmp(h, "QFI\xfb", 4) != 0) return Ok();  // not qcow2
  if (n < 72) return MakeError(Code::kInvalid, "qcow2 header truncated");
  uint32_t version = (uint32_t{h[4]} << 24) | (uint32_t{h[5]} << 16) | (uint32_t{h[6]} << 8) | h[7];
  if (ReadBe64(h + 8) != 0) return MakeError(Code::kInvalid, "qcow2 image has a backing file");
  if (version >= 3 && n >= 80 && (ReadBe64(h + 72) & 4) != 0) {
    return MakeError(Code::kInvalid, "qcow2 image has an external data file");
  }
  return Ok();
}

}  // namespace

Result<uint64_t> ExtractContainerDisk(const std::vector<Layer>& layers,
                                      std::string_view path_in_image,
                                      const std::filesystem::path& out_file) {
  if (layers.empty()) return MakeError(Code::kInvalid, "image has no layers");
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!IsLayerMediaType(layers[i].media_type)) {
      return MakeError(Code::kInvalid, LayerName(layers[i], i) + ": unsupported layer media type " +
                                           Quoted(layers[i].media_type));
    }
  }
  if (!path_in_image.empty()) {
    auto p = CanonicalEntryName(path_in_image, /*allow_absolute=*/true);
    if (!p) return std::move(p).error().Wrap("disk path");
  }

  // Pass 1: headers only, every layer, into the model. Nothing is written.
  Model model;
  for (size_t i = 0; i < layers.size(); ++i) {
    ASSIGN_OR_RETURN(auto reader, LayerReader::Open(layers[i], i));
    while (true) {
      ASSIGN_OR_RETURN(archive_entry * entry, reader->Next());
      if (entry == nullptr) break;
      auto applied = model.Apply(i, reader->ordinal(), entry);
      if (!applied) return std::move(applied).error().Wrap(reader->name());
      RETURN_IF_ERROR(reader->Skip());
    }
  }
  ASSIGN_OR_RETURN(auto found, FindDisk(model, path_in_image, layers));
  const auto& [disk_path, node] = found;

  // Pass 2: the disk entry's data, into out_file.tmp.
  const std::filesystem::path dir =
      out_file.has_parent_path() ? out_file.parent_path() : std::filesystem::path(".");
  const std::string out_name = out_file.filename().string();
  if (out_name.empty() || out_name == "." || out_name == "..") {
    return MakeError(Code::kInvalid, "bad output file " + out_file.string());
  }
  const std::string tmp_name = out_name + ".tmp";
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) return ErrnoError("open " + dir.string(), errno);
  if (::unlinkat(dir_fd.get(), tmp_name.c_str(), 0) != 0 && errno != ENOENT) {
    return ErrnoError("remove stale " + tmp_name, errno);
  }
  UniqueFd fd(::openat(dir_fd.get(), tmp_name.c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("create " + (dir / tmp_name).string(), errno);
  UnlinkOnExit cleanup(dir_fd.get(), tmp_name);

  const Layer& layer = layers[node->data_layer];
  ASSIGN_OR_RETURN(auto reader, LayerReader::Open(layer, node->data_layer));
  archive_entry* entry = nullptr;
  while (true) {
    ASSIGN_OR_RETURN(entry, reader->Next());
    if (entry == nullptr || reader->ordinal() == node->ordinal) break;
    RETURN_IF_ERROR(reader->Skip());
  }
  if (entry == nullptr || archive_entry_filetype(entry) != AE_IFREG ||
      archive_entry_hardlink(entry) != nullptr) {
    return MakeError(Code::kInternal,
                     reader->name() + ": the disk entry changed between two reads of the blob");
  }
  ASSIGN_OR_RETURN(uint64_t size, CopySparse(*reader, entry, fd.get(), disk_path));
  if (::fchmod(fd.get(), 0444) != 0) return ErrnoError("chmod disk", errno);
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync disk", errno);
  fd.reset();
  if (::renameat(dir_fd.get(), tmp_name.c_str(), dir_fd.get(), out_name.c_str()) != 0) {
    return ErrnoError("rename " + tmp_name + " to " + out_name, errno);
  }
  cleanup.Disarm();
  if (::fsync(dir_fd.get()) != 0) return ErrnoError("fsync " + dir.string(), errno);
  return size;
}

Result<DiskInfo> ValidateDisk(const std::filesystem::path& file, uint64_t max_virtual_size) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(file, ec);
  if (ec) return MakeError(Code::kInvalid, "disk path " + file.string() + ": " + ec.message());
  RETURN_IF_ERROR(PrecheckQcow2Header(abs));

  ExecOptions options;
  options.timeout = std::chrono::seconds(30);
  options.rlimit_cpu_seconds = kQemuImgCpuSeconds;
  options.rlimit_as_bytes = kQemuImgAddressSpace;
  // An absolute path: qemu-img never reads it as "protocol:..." or "json:{...}".
  ASSIGN_OR_RETURN(ExecResult r,
                   Exec({"qemu-img", "info", "-U", "--output", "json", abs.string()}, options));
  if (!r.ok()) {
    std::string why = r.stderr_text;
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    if (r.signal != 0) why = "killed by signal " + std::to_string(r.signal) + " (limits) " + why;
    return MakeError(Code::kInvalid, "qemu-img cannot read the disk: " + why);
  }
  Json info = Json::parse(r.stdout_text, nullptr, false);
  if (info.is_discarded() || !info.is_object()) {
    return MakeError(Code::kInvalid, "qemu-img info: unreadable output");
  }
  DiskInfo out;
  auto format = info.find("format");
  if (format == info.end() || !format->is_string()) {
    return MakeError(Code::kInvalid, "qemu-img info: no format");
  }
  out.format = format->get<std::string>();
  if (out.format != "qcow2" && out.format != "raw") {
    return MakeError(Code::kInvalid,
                     "disk format " + out.format + " is not allowed (only qcow2 or raw)");
  }
  if (info.contains("backing-filename") || info.contains("full-backing-filename")) {
    std::string b = info.value("backing-filename", info.value("full-backing-filename", ""));
    return MakeError(Code::kInvalid, out.format + " disk has a backing file (" + b + ")");
  }
  const Json* data_file = nullptr;
  if (auto fs = info.find("format-specific"); fs != info.end() && fs->is_object()) {
    if (auto d = fs->find("data"); d != fs->end() && d->is_object()) {
      if (auto df = d->find("data-file"); df != d->end()) data_file = &*df;
    }
  }
  if (data_file != nullptr) {
    return MakeError(
        Code::kInvalid,
        "qcow2 disk has an external data file (" +
            (data_file->is_string() ? data_file->get<std::string>() : data_file->dump()) + ")");
  }
  auto vsize = info.find("virtual-size");
  if (vsize == info.end() || !vsize->is_number_unsigned()) {
    return MakeError(Code::kInvalid, "qemu-img info: no virtual size");
  }
  out.virtual_size = vsize->get<uint64_t>();
  if (out.virtual_size == 0) return MakeError(Code::kInvalid, "disk has a virtual size of 0");
  if (out.virtual_size > max_virtual_size) {
    return MakeError(Code::kInvalid, "disk virtual size " + std::to_string(out.virtual_size) +
                                         " bytes exceeds the limit of " +
                                         std::to_string(max_virtual_size));
  }
  if (auto a = info.find("actual-size"); a != info.end() && a->is_number_unsigned()) {
    out.allocated_bytes = a->get<uint64_t>();
  }
  return out;
}

Status CreateOverlayFile(const std::filesystem::path& base, std::string_view base_format,
                         const std::filesystem::path& overlay) {
  if (base_format != "qcow2" && base_format != "raw") {
    return MakeError(Code::kInvalid, "base format " + Quoted(base_format) + " not allowed");
  }
  std::error_code ec;
  std::filesystem::path abs_base = std::filesystem::absolute(base, ec);
  if (ec) return MakeError(Code::kInvalid, "base path " + base.string() + ": " + ec.message());
  std::filesystem::path abs_overlay = std::filesystem::absolute(overlay, ec);
  if (ec)
    return MakeError(Code::kInvalid, "overlay path " + overlay.string() + ": " + ec.message());
  // Created here first: O_EXCL makes an existing overlay an error and the mode is 0600 from the
  // start; qemu-img then reuses the file.
  UniqueFd fd(
      ::open(abs_overlay.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) {
    if (errno == EEXIST) {
      return MakeError(Code::kAlreadyExists, "overlay " + abs_overlay.string() + " exists");
    }
    return ErrnoError("create overlay " + abs_overlay.string(), errno);
  }
  ::fchmod(fd.get(), 0600);  // whatever the umask
  fd.reset();
  auto r = ExecChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-b", abs_base.string(), "-F",
                        std::string(base_format), abs_overlay.string()},
                       ExecOptions{std::chrono::seconds(60)}, "qemu-img create overlay");
  if (!r) {
    ::unlink(abs_overlay.c_str());
    return std::move(r).error();
  }
  return Ok();
}

Status CreateOverlay(const Image& image, const std::filesystem::path& overlay) {
  return CreateOverlayFile(image.disk_path, image.format, overlay);
}

}  // namespace edgevirt::image
