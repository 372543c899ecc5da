// image::Cache: the index of pulled and imported containerDisks, tying the registry client
// (registry.h), the blob store (content.h), layer extraction and validation (disk.h) and OCI
// layouts (layout.h) together. See image.h for the layout on disk and index.h for the keys.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "image/content.h"
#include "image/disk.h"
#include "image/image.h"
#include "image/index.h"
#include "image/layout.h"
#include "image/manifest.h"
#include "image/reference.h"
#include "image/registry.h"

namespace edgevirt::image {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// Unreferenced blobs and disk directories younger than this belong to a pull in progress.
constexpr auto kOrphanGrace = std::chrono::hours(1);
// Partial downloads older than this are dropped by Prune.
constexpr int64_t kStaleIngestSeconds = 24 * 3600;

// "sha256:HEX" -> HEX, or "" when it is not such a digest.
std::string DigestHex(std::string_view digest) {
  return IsValidDigest(digest) ? std::string(digest.substr(7)) : std::string();
}

// The index key of an image: the manifest, plus the containerDisk path when one is given (the
// same manifest yields another disk then).
std::string ImageId(const std::string& manifest_hex, std::string_view path_in_image) {
  if (path_in_image.empty()) return manifest_hex;
  return manifest_hex + "-" + DigestHex(Sha256Digest(path_in_image)).substr(0, 16);
}

int64_t NowSeconds() { return static_cast<int64_t>(::time(nullptr)); }

Status FsyncDir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + dir.string(), errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync " + dir.string(), err);
  return Ok();
}

Status MakeDir(const fs::path& dir, mode_t mode) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return MakeError(Code::kInternal, "create " + dir.string() + ": " + ec.message());
  // QEMU (an unprivileged user) must reach the disks: traverse-only directories on the way.
  if (::chmod(dir.c_str(), mode) != 0) return ErrnoError("chmod " + dir.string(), errno);
  return Ok();
}

uint64_t AllocatedBytes(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

struct Record {
  std::string id;  // the key under image/
  Image image;
  std::string path_in_image;
  std::vector<std::string> layers;  // blob digests
};

Json ToJson(const Record& r) {
  return Json{{"references", r.image.references},
              {"manifestDigest", r.image.manifest_digest},
              {"disk", r.image.disk_path},
              {"format", r.image.format},
              {"virtualSize", r.image.virtual_size},
              {"diskBytes", r.image.disk_bytes},
              {"created", r.image.created},
              {"lastUsed", r.image.last_used},
              {"path", r.path_in_image},
              {"layers", r.layers}};
}

Result<Record> FromJson(std::string id, std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  if (!j.is_object()) return MakeError(Code::kInternal, "image record " + id + " is not JSON");
  Record r;
  r.id = std::move(id);
  try {
    r.image.references = j.value("references", std::vector<std::string>{});
    r.image.manifest_digest = j.value("manifestDigest", "");
    r.image.disk_path = j.value("disk", "");
    r.image.format = j.value("format", "");
    r.image.virtual_size = j.value("virtualSize", uint64_t{0});
    r.image.disk_bytes = j.value("diskBytes", uint64_t{0});
    r.image.created = j.value("created", int64_t{0});
    r.image.last_used = j.value("lastUsed", int64_t{0});
    r.path_in_image = j.value("path", "");
    r.layers = j.value("layers", std::vector<std::string>{});
  } catch (const Json::exception& e) {
    return MakeError(Code::kInternal, "image record " + r.id + ": " + e.what());
  }
  return r;
}

// use/OWNER holds a JSON array of image ids.
std::vector<std::string> ParseUses(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  std::vector<std::string> out;
  if (!j.is_array()) return out;
  for (const auto& v : j) {
    if (v.is_string()) out.push_back(v.get<std::string>());
  }
  return out;
}

Result<Keychain> ReadAuthFile(const std::string& path) {
  if (path.empty()) return Keychain{};
  std::ifstream in(path);
  if (!in) return MakeError(Code::kNotFound, "read auth file " + path + ": cannot open it");
  std::stringstream ss;
  ss << in.rdbuf();
  auto keychain = ParseDockerConfig(ss.str());
  if (!keychain) return std::move(keychain).error().Wrap("auth file " + path);
  return keychain;
}

class CacheImpl final : public Cache {
 public:
  explicit CacheImpl(Options options) : options_(std::move(options)) {}

  Status Open() {
    if (options_.dir.empty() || !options_.dir.is_absolute()) {
      return MakeError(Code::kInvalid, "image cache dir must be absolute");
    }
    RETURN_IF_ERROR(MakeDir(options_.dir, 0711));
    RETURN_IF_ERROR(MakeDir(options_.dir / "disks", 0711));
    RETURN_IF_ERROR(MakeDir(options_.dir / "tmp", 0700));
    ASSIGN_OR_RETURN(index_, internal::Index::Open(options_.dir / "index"));
    content_ = std::make_unique<ContentStore>(options_.dir, index_.get());
    client_ = std::make_unique<RegistryClient>(ClientOptionsFrom(options_, Keychain{}));
    return Ok();
  }

  Result<std::optional<Image>> Lookup(const std::string& reference,
                                      const std::string& path_in_image) override {
    ASSIGN_OR_RETURN(Reference ref, ParseReference(reference));
    std::string manifest_hex;
    if (!ref.digest.empty()) {
      const std::string hex = DigestHex(ref.digest);
      if (hex.empty()) return std::optional<Image>();
      ASSIGN_OR_RETURN(auto alias, index_->Get("digest/" + hex));  // an index's digest
      manifest_hex = alias ? DigestHex(*alias) : hex;
    } else {
      ASSIGN_OR_RETURN(auto target, index_->Get("ref/" + ref.String()));
      if (!target) return std::optional<Image>();
      manifest_hex = DigestHex(*target);
    }
    if (manifest_hex.empty()) return std::optional<Image>();
    ASSIGN_OR_RETURN(auto record, LoadRecord(ImageId(manifest_hex, path_in_image)));
    if (!record) return std::optional<Image>();
    return std::optional<Image>(std::move(record->image));
  }

  Result<Image> Pull(const std::string& reference, const PullOptions& options) override {
    auto pulled = PullImpl(reference, options);
    if (!pulled) return std::move(pulled).error().Wrap("pull " + reference);
    return pulled;
  }

  Result<std::vector<Image>> Import(const fs::path& path) override {
    char tmpl[] = "import-XXXXXX";
    fs::path scratch = options_.dir / "tmp" / tmpl;
    std::string scratch_s = scratch.string();
    if (::mkdtemp(scratch_s.data()) == nullptr) {
      return ErrnoError("create a scratch directory in " + (options_.dir / "tmp").string(), errno);
    }
    scratch = scratch_s;
    auto imported = ImportImpl(path, scratch);
    std::error_code ec;
    fs::remove_all(scratch, ec);
    if (!imported) return std::move(imported).error().Wrap("import " + path.string());
    return imported;
  }

  Result<std::vector<Image>> List() override {
    ASSIGN_OR_RETURN(auto records, LoadAll());
    std::vector<Image> out;
    for (auto& r : records) out.push_back(std::move(r.image));
    return out;
  }

  Status Use(const std::string& owner, const std::string& manifest_digest) override {
    if (owner.empty() || owner.find('/') != std::string::npos) {
      return MakeError(Code::kInvalid, "image user \"" + owner + "\" is not a valid name");
    }
    return index_->Update([&](internal::IndexTxn& txn) -> Status {
      // The image a VMI booted from: the record whose manifest digest matches (a custom
      // containerDisk path gives another id; the VMI holds every disk of that manifest).
      ASSIGN_OR_RETURN(auto records, txn.List("image/"));
      std::vector<std::string> ids;
      for (auto& [key, value] : records) {
        auto r = FromJson(key.substr(6), value);
        if (!r || r->image.manifest_digest != manifest_digest) continue;
        r->image.last_used = NowSeconds();
        RETURN_IF_ERROR(txn.Put(key, ToJson(*r).dump()));
        ids.push_back(r->id);
      }
      if (ids.empty()) {
        return MakeError(Code::kNotFound,
                         "image " + manifest_digest + " is no longer in the cache");
      }
      ASSIGN_OR_RETURN(auto existing, txn.Get("use/" + owner));
      std::vector<std::string> uses = existing ? ParseUses(*existing) : std::vector<std::string>{};
      for (auto& id : ids) {
        if (std::find(uses.begin(), uses.end(), id) == uses.end()) uses.push_back(id);
      }
      return txn.Put("use/" + owner, Json(uses).dump());
    });
  }

  Status Release(const std::string& owner) override { return index_->Delete("use/" + owner); }

  Result<PruneReport> Prune(uint64_t budget_bytes) override {
    PruneReport report;
    std::vector<Record> removed;
    // Decide and unlink from the index in one transaction, so a concurrent Use (another
    // process) either sees the image and keeps it, or does not find it.
    Status decided = index_->Update([&](internal::IndexTxn& txn) -> Status {
      removed.clear();
      report = PruneReport{};
      ASSIGN_OR_RETURN(auto uses, txn.List("use/"));
      std::set<std::string> used;
      for (const auto& [key, value] : uses) {
        for (auto& id : ParseUses(value)) used.insert(std::move(id));
      }
      ASSIGN_OR_RETURN(auto raw, txn.List("image/"));
      std::vector<Record> records;
      uint64_t total = 0;
      for (const auto& [key, value] : raw) {
        auto r = FromJson(key.substr(6), value);
        if (!r) continue;
        total += r->image.disk_bytes;
        records.push_back(std::move(*r));
      }
      std::sort(records.begin(), records.end(), [](const Record& a, const Record& b) {
        return std::max(a.image.last_used, a.image.created) <
               std::max(b.image.last_used, b.image.created);
      });
      for (auto& r : records) {
        if (budget_bytes > 0 && total <= budget_bytes) break;
        if (used.count(r.id) != 0) continue;
        total -= std::min(total, r.image.disk_bytes);
        RETURN_IF_ERROR(txn.Delete("image/" + r.id));
        removed.push_back(std::move(r));
      }
      // References and index aliases that point at nothing any more.
      ASSIGN_OR_RETURN(auto remaining, txn.List("image/"));
      std::set<std::string> live_manifests;
      for (const auto& [key, value] : remaining) live_manifests.insert(key.substr(6, 64));
      for (const char* prefix : {"ref/", "digest/"}) {
        ASSIGN_OR_RETURN(auto entries, txn.List(prefix));
        for (const auto& [key, value] : entries) {
          if (live_manifests.count(DigestHex(value)) == 0) RETURN_IF_ERROR(txn.Delete(key));
        }
      }
      report.kept_bytes = total;
      return Ok();
    });
    if (!decided) return std::move(decided).error();
    for (const auto& r : removed) {
      report.removed.push_back(r.image.manifest_digest);
      report.freed_bytes += r.image.disk_bytes;
      std::error_code ec;
      fs::remove_all(options_.dir / "disks" / r.id, ec);
      if (ec) EV_LOG(kWarning) << "image cache: remove " << r.id << ": " << ec.message();
    }
    // Blobs no remaining image needs: those of the images removed now at once; others only
    // once they are old, because a pull running meanwhile (here or in another process) has
    // its layers in the store before it records its image.
    ASSIGN_OR_RETURN(auto records, LoadAll());
    std::set<std::string> needed, released, live_ids;
    for (const auto& r : records) {
      needed.insert(r.layers.begin(), r.layers.end());
      live_ids.insert(r.id);
    }
    for (const auto& r : removed) released.insert(r.layers.begin(), r.layers.end());
    const auto now = fs::file_time_type::clock::now();
    auto old = [&](const fs::path& p) {
      std::error_code ec;
      auto t = fs::last_write_time(p, ec);
      return !ec && now - t > kOrphanGrace;
    };
    ASSIGN_OR_RETURN(auto blobs, content_->List());
    for (const auto& digest : blobs) {
      if (needed.count(digest) != 0) continue;
      if (released.count(digest) != 0 || old(content_->BlobPath(digest))) {
        RETURN_IF_ERROR(content_->Remove(digest));
      }
    }
    // Disk directories without a record (a crash between extraction and the record).
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(options_.dir / "disks", ec)) {
      if (live_ids.count(entry.path().filename().string()) != 0 || !old(entry.path())) continue;
      EV_LOG(kNotice) << "image cache: removing " << entry.path().string() << ": no image owns it";
      fs::remove_all(entry.path(), ec);
    }
    // Scratch copies of archives whose import was killed.
    for (const auto& entry : fs::directory_iterator(options_.dir / "tmp", ec)) {
      if (old(entry.path())) fs::remove_all(entry.path(), ec);
    }
    // Partial downloads nobody resumed for a day.
    ASSIGN_OR_RETURN(auto ingests, content_->Ingests());
    for (const auto& in : ingests) {
      if (NowSeconds() - in.started < kStaleIngestSeconds) continue;
      if (Status st = content_->RemoveIngest(in.digest);
          !st && st.error().code != Code::kConflict) {
        return std::move(st).error();
      }
    }
    return report;
  }

 private:
  Result<std::optional<Record>> LoadRecord(const std::string& id) {
    ASSIGN_OR_RETURN(auto value, index_->Get("image/" + id));
    if (!value) return std::optional<Record>();
    ASSIGN_OR_RETURN(Record r, FromJson(id, *value));
    // A record whose disk is gone (removed by hand) does not count as cached.
    std::error_code ec;
    if (!fs::is_regular_file(r.image.disk_path, ec)) return std::optional<Record>();
    ASSIGN_OR_RETURN(auto users, UsersOf(r.id));
    r.image.users = std::move(users);
    return std::optional<Record>(std::move(r));
  }

  // Image id -> the owners holding it (from the use/ records).
  Result<std::map<std::string, std::vector<std::string>>> Users() {
    ASSIGN_OR_RETURN(auto uses, index_->List("use/"));
    std::map<std::string, std::vector<std::string>> users;
    for (const auto& [key, value] : uses) {
      for (auto& id : ParseUses(value)) users[std::move(id)].push_back(key.substr(4));
    }
    return users;
  }

  Result<std::vector<std::string>> UsersOf(const std::string& id) {
    ASSIGN_OR_RETURN(auto users, Users());
    return std::move(users[id]);
  }

  Result<std::vector<Record>> LoadAll() {
    ASSIGN_OR_RETURN(auto raw, index_->List("image/"));
    ASSIGN_OR_RETURN(auto users, Users());
    std::vector<Record> out;
    for (const auto& [key, value] : raw) {
      auto r = FromJson(key.substr(6), value);
      if (!r) {
        EV_LOG(kWarning) << r.error().message;
        continue;
      }
      r->image.users = users[r->id];
      out.push_back(std::move(*r));
    }
    return out;
  }

  Result<Image> PullImpl(const std::string& reference, const PullOptions& options) {
    ASSIGN_OR_RETURN(Reference ref, ParseReference(reference));
    // Credentials: the pull secrets first, then the daemon's auth file (read per pull, so an
    // operator's change applies without a restart).
    Keychain keychain;
    if (auto file = ReadAuthFile(options_.auth_file)) {
      keychain = std::move(*file);
    } else {
      EV_LOG(kWarning) << file.error().message;
    }
    for (const auto& [host, cred] : options.credentials) keychain[host] = cred;

    std::string index_digest;
    ASSIGN_OR_RETURN(Manifest manifest, client_->Resolve(ref, keychain, &index_digest));
    const std::string hex = DigestHex(manifest.digest);
    if (hex.empty()) return MakeError(Code::kInvalid, "manifest digest " + manifest.digest);
    // Already extracted: only the reference is new.
    ASSIGN_OR_RETURN(auto existing, LoadRecord(ImageId(hex, options.path_in_image)));
    if (existing) {
      RETURN_IF_ERROR(RecordNames(*existing, ref.String(), index_digest));
      return existing->image;
    }

    Progress progress;
    for (const auto& layer : manifest.layers) progress.total_bytes += layer.size;
    for (const auto& layer : manifest.layers) {
      if (content_->Has(layer.digest)) progress.done_bytes += layer.size;
    }
    if (options.progress) options.progress(progress);
    for (const auto& layer : manifest.layers) {
      if (content_->Has(layer.digest)) continue;
      RETURN_IF_ERROR(client_->FetchBlob(
          ref, layer, *content_, keychain,
          [&](uint64_t delta) {
            progress.done_bytes += delta;
            if (options.progress) options.progress(progress);
          },
          options.cancel));
    }
    return Materialise(manifest, ref.String(), index_digest, options.path_in_image);
  }

  // Extracts, validates and records the disk of a manifest whose layers are all in the store.
  Result<Image> Materialise(const Manifest& manifest, const std::string& reference,
                            const std::string& index_digest, const std::string& path_in_image) {
    const std::string hex = DigestHex(manifest.digest);
    const std::string id = ImageId(hex, path_in_image);
    const fs::path dir = options_.dir / "disks" / id;
    const fs::path final_path = dir / "disk";
    RETURN_IF_ERROR(MakeDir(dir, 0755));
    std::vector<Layer> layers;
    for (const auto& l : manifest.layers) {
      layers.push_back(Layer{content_->BlobPath(l.digest), l.media_type, l.digest});
    }
    static std::atomic<uint64_t> counter{0};
    const fs::path tmp = dir / ("disk.tmp-" + std::to_string(::getpid()) + "-" +
                                std::to_string(counter.fetch_add(1)));
    auto cleanup = [&] {
      std::error_code ec;
      fs::remove(tmp, ec);
      fs::remove(dir, ec);  // only if empty: another process may have completed it meanwhile
    };
    auto extracted = ExtractContainerDisk(layers, path_in_image, tmp);
    if (!extracted) {
      cleanup();
      return std::move(extracted).error().Wrap("not a valid containerDisk");
    }
    auto info = ValidateDisk(tmp, options_.max_virtual_size);
    if (!info) {
      cleanup();
      return std::move(info).error().Wrap("not a valid containerDisk");
    }
    ::chmod(tmp.c_str(), 0444);
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
      int err = errno;
      cleanup();
      return ErrnoError("rename " + tmp.string(), err);
    }
    RETURN_IF_ERROR(FsyncDir(dir));

    Record r;
    r.id = id;
    r.path_in_image = path_in_image;
    r.image.manifest_digest = manifest.digest;
    r.image.disk_path = final_path.string();
    r.image.format = info->format;
    r.image.virtual_size = info->virtual_size;
    uint64_t blob_bytes = 0;
    for (const auto& l : manifest.layers) {
      r.layers.push_back(l.digest);
      blob_bytes += l.size;
    }
    r.image.disk_bytes = AllocatedBytes(final_path) + blob_bytes;
    r.image.created = NowSeconds();
    Status merged = index_->Update([&](internal::IndexTxn& txn) -> Status {
      // Another process may have recorded it meanwhile: keep its names.
      ASSIGN_OR_RETURN(auto prior, txn.Get("image/" + id));
      if (prior) {
        if (auto p = FromJson(id, *prior)) {
          r.image.references = p->image.references;
          r.image.created = p->image.created;
          r.image.last_used = p->image.last_used;
        }
      }
      return Ok();
    });
    if (!merged) return std::move(merged).error();
    RETURN_IF_ERROR(RecordNames(r, reference, index_digest));
    ASSIGN_OR_RETURN(auto users, UsersOf(id));
    r.image.users = std::move(users);
    return r.image;
  }

  // Writes the record with `reference` among its names, and the reference (and index digest)
  // pointing at its manifest, in one transaction.
  Status RecordNames(Record& r, const std::string& reference, const std::string& index_digest) {
    if (!reference.empty() && std::find(r.image.references.begin(), r.image.references.end(),
                                        reference) == r.image.references.end()) {
      r.image.references.push_back(reference);
    }
    return index_->Update([&](internal::IndexTxn& txn) -> Status {
      RETURN_IF_ERROR(txn.Put("image/" + r.id, ToJson(r).dump()));
      if (!reference.empty()) RETURN_IF_ERROR(txn.Put("ref/" + reference, r.image.manifest_digest));
      if (const std::string ih = DigestHex(index_digest); !ih.empty()) {
        RETURN_IF_ERROR(txn.Put("digest/" + ih, r.image.manifest_digest));
      }
      return Ok();
    });
  }

  Result<std::vector<Image>> ImportImpl(const fs::path& path, const fs::path& scratch) {
    ASSIGN_OR_RETURN(Layout layout, Layout::Open(path, scratch));
    if (layout.entries().empty()) return MakeError(Code::kInvalid, "the layout holds no image");
    std::vector<Image> out;
    for (const auto& entry : layout.entries()) {
      Descriptor chosen{entry.media_type, entry.digest, entry.size, {}, "", "", ""};
      std::string index_digest;
      if (IsIndexMediaType(entry.media_type)) {
        ASSIGN_OR_RETURN(std::string body, layout.ReadBlob(entry.digest, kMaxManifestBytes));
        ASSIGN_OR_RETURN(auto entries, ParseIndex(body));
        ASSIGN_OR_RETURN(chosen, SelectPlatform(entries, options_.platform));
        index_digest = entry.digest;
      } else if (!IsManifestMediaType(entry.media_type)) {
        continue;  // unknown entries of an index are skipped (image-spec)
      }
      ASSIGN_OR_RETURN(std::string body, layout.ReadBlob(chosen.digest, kMaxManifestBytes));
      ASSIGN_OR_RETURN(Manifest manifest, ParseManifest(body, chosen.media_type, chosen.digest));
      for (const auto& layer : manifest.layers) {
        if (content_->Has(layer.digest)) continue;
        RETURN_IF_ERROR(content_->Add(layout.BlobPath(layer.digest), layer.digest, layer.size));
      }
      // The ref.name annotation names the image when it is a full reference
      // ("registry.local/kv/disk:v1", as `skopeo copy ... oci-archive:F:REF` writes it); a bare
      // tag names nothing, and the image is found by its digest.
      std::string reference;
      if (entry.ref_name.find('/') != std::string::npos) {
        if (auto ref = ParseReference(entry.ref_name)) reference = ref->String();
      }
      ASSIGN_OR_RETURN(Image image, Materialise(manifest, reference, index_digest, ""));
      out.push_back(std::move(image));
    }
    if (out.empty()) return MakeError(Code::kInvalid, "the layout holds no image manifest");
    return out;
  }

  Options options_;
  std::unique_ptr<internal::Index> index_;
  std::unique_ptr<ContentStore> content_;
  std::unique_ptr<RegistryClient> client_;
};

}  // namespace

Result<std::unique_ptr<Cache>> Cache::Open(const Options& options) {
  auto cache = std::make_unique<CacheImpl>(options);
  RETURN_IF_ERROR(cache->Open());
  return std::unique_ptr<Cache>(std::move(cache));
}

}  // namespace edgevirt::image
