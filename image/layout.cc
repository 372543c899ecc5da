#include "image/layout.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <nlohmann/json.hpp>
#include <set>

#include "common/fd.h"
#include "image/reference.h"

namespace edgevirt::image {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kMaxIndexBytes = 4 << 20;
constexpr size_t kMaxArchiveEntries = 100'000;
constexpr size_t kMaxNameBytes = 4096;

using ArchivePtr = UniqueHandle<archive, archive_read_free>;
using DigestCtx = UniqueHandle<EVP_MD_CTX, EVP_MD_CTX_free>;

std::string Quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

// The components of an archive entry name, "." and empty ones dropped. Refuses absolute names
// and "..".
Result<std::vector<std::string>> EntryComponents(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) {
    return MakeError(Code::kInvalid, "bad entry name " + Quoted(name));
  }
  if (name.front() == '/') return MakeError(Code::kInvalid, "absolute path " + Quoted(name));
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos <= name.size()) {
    size_t slash = name.find('/', pos);
    if (slash == std::string_view::npos) slash = name.size();
    std::string_view part = name.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") return MakeError(Code::kInvalid, "\"..\" component in " + Quoted(name));
    parts.emplace_back(part);
  }
  return parts;
}

std::string Joined(const std::vector<std::string>& parts, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += (i ? "/" : "") + parts[i];
  return out;
}

// Opens (creating as needed) the directory holding parts[0..n-1] below `root_fd`, never
// following a symlink.
Result<UniqueFd> OpenDirs(int root_fd, const std::vector<std::string>& parts, size_t n) {
  UniqueFd dir(::fcntl(root_fd, F_DUPFD_CLOEXEC, 0));
  if (!dir) return ErrnoError("dup", errno);
  for (size_t i = 0; i < n; ++i) {
    if (::mkdirat(dir.get(), parts[i].c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoError("mkdir " + Joined(parts, i + 1), errno);
    }
    UniqueFd next(
        ::openat(dir.get(), parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next) {
      return MakeError(Code::kInvalid, Joined(parts, i + 1) + " is not a directory");
    }
    dir = std::move(next);
  }
  return dir;
}

// Unpacks an OCI archive into `scratch`: directories and regular files only (plus hardlinks to
// files unpacked before), every path created below a directory fd without following links.
Status Unpack(const std::filesystem::path& file, const std::filesystem::path& scratch) {
  std::error_code ec;
  std::filesystem::create_directories(scratch, ec);
  if (ec) return MakeError(Code::kInternal, "create " + scratch.string() + ": " + ec.message());
  UniqueFd root(::open(scratch.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!root) return ErrnoError("open " + scratch.string(), errno);
  UniqueFd in(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError("open " + file.string(), errno);

  ArchivePtr a(archive_read_new());
  if (!a) return MakeError(Code::kInternal, "archive_read_new failed");
  archive_read_support_filter_gzip(a.get());
  archive_read_support_filter_zstd(a.get());
  archive_read_support_format_tar(a.get());
  const std::string ctx = "OCI archive " + file.string();
  auto fail = [&](std::string_view what) {
    const char* msg = archive_error_string(a.get());
    return MakeError(Code::kInvalid, ctx + ": " + std::string(what) + ": " + (msg ? msg : "error"));
  };
  if (archive_read_open_fd(a.get(), in.get(), 128 * 1024) != ARCHIVE_OK) {
    return fail("not a tar archive");
  }
  std::set<std::string> files;  // unpacked regular files, for hardlinks
  for (size_t count = 0;; ++count) {
    archive_entry* entry = nullptr;
    int rc = archive_read_next_header(a.get(), &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) return fail("reading an entry");
    if (count >= kMaxArchiveEntries) return MakeError(Code::kInvalid, ctx + ": too many entries");
    const char* raw = archive_entry_pathname(entry);
    if (raw == nullptr) return MakeError(Code::kInvalid, ctx + ": an entry without a name");
    auto parts = EntryComponents(raw);
    if (!parts) return std::move(parts).error().Wrap(ctx);
    if (parts->empty()) continue;  // "./"
    const std::string path = Joined(*parts, parts->size());
    const std::string& base = parts->back();
    auto refuse = [&](std::string_view why) {
      return MakeError(Code::kInvalid, ctx + ": entry " + Quoted(raw) + ": " + std::string(why));
    };

    if (const char* hard = archive_entry_hardlink(entry)) {
      auto target = EntryComponents(hard);
      if (!target) return refuse("hardlink target outside the archive: " + target.error().message);
      std::string t = Joined(*target, target->size());
      if (!files.contains(t))
        return refuse("hardlink to " + Quoted(hard) + ", not a file before it");
      ASSIGN_OR_RETURN(UniqueFd dir, OpenDirs(root.get(), *parts, parts->size() - 1));
      ::unlinkat(dir.get(), base.c_str(), 0);
      if (::linkat(root.get(), t.c_str(), dir.get(), base.c_str(), 0) != 0) {
        return ErrnoError(ctx + ": link " + path, errno);
      }
      files.insert(path);
      continue;
    }
    switch (archive_entry_filetype(entry)) {
      case AE_IFDIR: {
        ASSIGN_OR_RETURN(UniqueFd dir, OpenDirs(root.get(), *parts, parts->size()));
        break;
      }
      case AE_IFREG: {
        ASSIGN_OR_RETURN(UniqueFd dir, OpenDirs(root.get(), *parts, parts->size() - 1));
        // A later entry of the same name replaces the file, as tar does; never through a link.
        if (::unlinkat(dir.get(), base.c_str(), 0) != 0 && errno != ENOENT) {
          return refuse("cannot replace what is there");
        }
        UniqueFd out(::openat(dir.get(), base.c_str(),
                              O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (!out) return ErrnoError(ctx + ": create " + path, errno);
        while (true) {
          const void* buf = nullptr;
          size_t len = 0;
          la_int64_t offset = 0;
          int r = archive_read_data_block(a.get(), &buf, &len, &offset);
          if (r == ARCHIVE_EOF) break;
          if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return fail("reading " + path);
          if (offset < 0) return refuse("bad data offset");
          RETURN_IF_ERROR(WriteAllAt(out.get(), buf, len, static_cast<uint64_t>(offset), path));
        }
        if (::ftruncate(out.get(), archive_entry_size(entry)) != 0) {
          return ErrnoError(ctx + ": truncate " + path, errno);
        }
        files.insert(path);
        break;
      }
      case AE_IFLNK: {
        const char* target = archive_entry_symlink(entry);
        return refuse(std::string("symlink to ") + Quoted(target ? target : "") +
                      ": links are not allowed in an OCI archive");
      }
      default:
        return refuse("not a file or directory");
    }
  }
  return Ok();
}

Result<std::string> ReadSmallFile(const std::filesystem::path& path, uint64_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) {
    if (errno == ENOENT) return MakeError(Code::kNotFound, path.string() + " not found");
    return ErrnoError("open " + path.string(), errno);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("stat " + path.string(), errno);
  if (!S_ISREG(st.st_mode)) {
    return MakeError(Code::kInvalid, path.string() + " is not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return MakeError(Code::kTooLarge,
                     path.string() + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read " + path.string(), errno);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

std::string Hex(const unsigned char* p, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += kDigits[p[i] >> 4];
    out += kDigits[p[i] & 15];
  }
  return out;
}

// Hashes the file behind `fd` (or `data` when fd < 0) and compares with the digest's hex.
Status CheckSha256(std::string_view digest, int fd, std::string_view data, uint64_t* size) {
  DigestCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return MakeError(Code::kInternal, "sha256 init failed");
  }
  uint64_t total = 0;
  if (fd >= 0) {
    std::string buf(1 << 20, '\0');
    while (true) {
      ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("read blob " + std::string(digest), errno);
      if (n == 0) break;
      EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
      total += static_cast<uint64_t>(n);
    }
  } else {
    EVP_DigestUpdate(ctx.get(), data.data(), data.size());
    total = data.size();
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1) {
    return MakeError(Code::kInternal, "sha256 final failed");
  }
  std::string got = "sha256:" + Hex(md, len);
  if (got != digest) {
    return MakeError(Code::kInvalid, "blob " + std::string(digest) +
                                         " does not match its digest (got " + got + ")");
  }
  if (size) *size = total;
  return Ok();
}

}  // namespace

Result<Layout> Layout::Open(const std::filesystem::path& path,
                            const std::filesystem::path& scratch_dir) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return MakeError(Code::kNotFound, path.string() + " not found");
    return ErrnoError("stat " + path.string(), errno);
  }
  Layout layout;
  if (S_ISDIR(st.st_mode)) {
    layout.root_ = path;
  } else if (S_ISREG(st.st_mode)) {
    if (scratch_dir.empty())
      return MakeError(Code::kInvalid, "no scratch directory for " + path.string());
    RETURN_IF_ERROR(Unpack(path, scratch_dir));
    layout.root_ = scratch_dir;
  } else {
    return MakeError(Code::kInvalid, path.string() + " is neither a directory nor an OCI archive");
  }
  const std::string ctx = "OCI layout " + path.string();

  auto marker = ReadSmallFile(layout.root_ / "oci-layout", 64 * 1024);
  if (!marker) return std::move(marker).error().Wrap(ctx);
  Json m = Json::parse(*marker, nullptr, false);
  if (m.is_discarded() || !m.is_object() || m.value("imageLayoutVersion", Json()) != "1.0.0") {
    return MakeError(Code::kInvalid,
                     ctx + ": oci-layout is not {\"imageLayoutVersion\":\"1.0.0\"}");
  }
  auto index_text = ReadSmallFile(layout.root_ / "index.json", kMaxIndexBytes);
  if (!index_text) return std::move(index_text).error().Wrap(ctx);
  Json index = Json::parse(*index_text, nullptr, false);
  if (index.is_discarded() || !index.is_object()) {
    return MakeError(Code::kInvalid, ctx + ": index.json is not a JSON object");
  }
  if (index.value("schemaVersion", Json()) != 2) {
    return MakeError(Code::kInvalid, ctx + ": index.json schemaVersion is not 2");
  }
  auto manifests = index.find("manifests");
  if (manifests == index.end() || !manifests->is_array()) {
    return MakeError(Code::kInvalid, ctx + ": index.json has no \"manifests\" array");
  }
  for (const auto& d : *manifests) {
    if (!d.is_object())
      return MakeError(Code::kInvalid, ctx + ": a manifest entry is not an object");
    LayoutEntry e;
    auto mt = d.find("mediaType");
    auto digest = d.find("digest");
    auto size = d.find("size");
    if (mt == d.end() || !mt->is_string() || digest == d.end() || !digest->is_string() ||
        size == d.end() || !size->is_number_unsigned()) {
      return MakeError(Code::kInvalid,
                       ctx + ": a manifest entry lacks mediaType, digest or size: " + d.dump());
    }
    e.media_type = mt->get<std::string>();
    e.digest = digest->get<std::string>();
    e.size = size->get<uint64_t>();
    if (!IsValidDigest(e.digest)) {
      return MakeError(Code::kInvalid, ctx + ": bad digest " + Quoted(e.digest));
    }
    if (auto ann = d.find("annotations"); ann != d.end() && ann->is_object()) {
      auto ref = ann->find("org.opencontainers.image.ref.name");
      if (ref != ann->end() && ref->is_string()) e.ref_name = ref->get<std::string>();
    }
    layout.entries_.push_back(std::move(e));
  }
  return layout;
}

std::filesystem::path Layout::BlobPath(std::string_view digest) const {
  if (!IsValidDigest(digest)) return {};
  return root_ / "blobs" / "sha256" / std::string(digest.substr(7));
}

Result<std::string> Layout::ReadBlob(std::string_view digest, uint64_t max_bytes) const {
  if (!IsValidDigest(digest)) {
    return MakeError(Code::kInvalid, "bad digest " + Quoted(digest));
  }
  ASSIGN_OR_RETURN(std::string data, ReadSmallFile(BlobPath(digest), max_bytes));
  RETURN_IF_ERROR(CheckSha256(digest, -1, data, nullptr));
  return data;
}

Result<uint64_t> Layout::VerifyBlob(std::string_view digest) const {
  if (!IsValidDigest(digest)) {
    return MakeError(Code::kInvalid, "bad digest " + Quoted(digest));
  }
  auto path = BlobPath(digest);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) {
    if (errno == ENOENT)
      return MakeError(Code::kNotFound, "blob " + std::string(digest) + " not found");
    return ErrnoError("open " + path.string(), errno);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return MakeError(Code::kInvalid, path.string() + " is not a regular file");
  }
  uint64_t size = 0;
  RETURN_IF_ERROR(CheckSha256(digest, fd.get(), {}, &size));
  return size;
}

}  // namespace edgevirt::image
