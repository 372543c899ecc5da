// image/: the containerDisk driver of edgevirt. This is its one public header: a cache of
// KubeVirt containerDisk images pulled from OCI registries (or imported from OCI archives on
// air-gapped hosts), each reduced to one validated, read-only disk file that VMIs boot from
// through a qcow2 overlay of their own. Depends on common/ only (plus libcurl, OpenSSL,
// libarchive, LMDB). See README.md.
//
// Layout under Options::dir (the daemon uses <stateDir>/images):
//   index/            an LMDB environment of its own (index.h): image records, blob ingest
//                     offsets, users of each image. Several processes may open it at once
//                     (`edgevirtd image ...` works on a running daemon's cache).
//   blobs/sha256/HEX  verified, immutable blobs (content.h)
//   ingest/HEX        partial downloads, resumed from the offset committed in the index
//   disks/HEX/disk    the extracted, validated disk of manifest HEX (mode 0444)
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace edgevirt::image {

// How to reach one registry host (as written in image references, e.g. "127.0.0.1:5000").
struct RegistryHost {
  std::string host;
  bool insecure = false;     // plain HTTP
  bool skip_verify = false;  // HTTPS without certificate verification
  std::string ca_file;       // a PEM bundle trusted in addition to the system CAs
  bool operator==(const RegistryHost&) const = default;
};

// Credentials for one registry.
struct Credential {
  std::string username;
  std::string password;
  std::string identity_token;  // docker config "identitytoken": a refresh token for the realm
  bool operator==(const Credential&) const = default;
};

// Registry host ("docker.io" normalised to "registry-1.docker.io"... see NormaliseRegistry)
// -> credential.
using Keychain = std::map<std::string, Credential>;

// Parses a docker-style config ({"auths": {"HOST": {"auth": base64(user:pass)} | {"username",
// "password"} | {"identitytoken"}}}), as in ~/.docker/config.json and in Secrets of type
// kubernetes.io/dockerconfigjson. Keys may be "host", "https://host", "https://host/v1/".
// kInvalid names what is wrong.
Result<Keychain> ParseDockerConfig(std::string_view json);

struct Options {
  std::filesystem::path dir;
  std::vector<RegistryHost> registries;
  std::string auth_file;  // a docker-style config file; empty = none
  // The platform chosen from an image index: "os/arch[/variant]". Empty = this host's
  // (linux/amd64 on x86-64, linux/arm64 on aarch64).
  std::string platform;
  uint64_t max_virtual_size = uint64_t{1} << 40;  // a disk whose virtual size exceeds it is refused
  // Transfers: a stall (no byte for stall_timeout) or a speed under low_speed_limit bytes/s for
  // low_speed_time aborts the attempt; attempts are retried with exponential backoff from
  // retry_base (honouring Retry-After), at most max_attempts times without progress.
  std::chrono::seconds stall_timeout{60};
  uint64_t low_speed_limit = 1024;
  std::chrono::seconds low_speed_time{120};
  int max_attempts = 6;
  std::chrono::milliseconds retry_base{500};
  std::chrono::milliseconds retry_max{30'000};
  // Bytes between fdatasync + committed-offset records of a blob download.
  uint64_t checkpoint_bytes = uint64_t{64} << 20;
};

// One cached containerDisk.
struct Image {
  std::vector<std::string> references;  // every reference it was pulled or imported as
  std::string manifest_digest;          // "sha256:HEX" of the platform's image manifest
  std::string disk_path;                // the read-only base file
  std::string format;                   // "qcow2" | "raw"
  uint64_t virtual_size = 0;            // bytes the guest sees
  uint64_t disk_bytes = 0;              // bytes allocated on the host (disk file + blobs)
  int64_t created = 0;                  // unix seconds it entered the cache
  int64_t last_used = 0;                // unix seconds a VMI last started from it
  std::vector<std::string> users;       // owners (VMI uids) holding it
};

struct Progress {
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;  // sum of the blob sizes the manifest names
};
using ProgressFn = std::function<void(const Progress&)>;

struct PullOptions {
  Keychain credentials;       // from imagePullSecrets; tried before Options::auth_file
  std::string path_in_image;  // containerDisk.path; empty = the one file under /disk
  const std::atomic<bool>* cancel = nullptr;
  ProgressFn progress;  // called from the pulling thread, at most a few times a second
};

struct PruneReport {
  std::vector<std::string> removed;  // manifest digests
  uint64_t freed_bytes = 0;
  uint64_t kept_bytes = 0;
};

// Errors of Pull carry what the registry said, e.g. kPermission "pull 127.0.0.1:5000/kv/disk:v1:
// 401 Unauthorized: authentication required", kNotFound "...: manifest unknown", kInvalid for an
// image that is not a valid containerDisk ("disk/ holds 2 files", "qcow2 has a backing file").
class Cache {
 public:
  static Result<std::unique_ptr<Cache>> Open(const Options& options);
  virtual ~Cache() = default;

  // The cached image a reference (name:tag or name@digest) resolved to when it was last pulled
  // or imported, with the disk at `path_in_image` (empty: the one file under /disk); nullopt
  // when there is none.
  virtual Result<std::optional<Image>> Lookup(const std::string& reference,
                                              const std::string& path_in_image) = 0;
  // Resolves the reference at its registry, downloads what is missing (resuming partial blobs),
  // extracts and validates the disk, records it. Blocking; several threads may pull at once.
  virtual Result<Image> Pull(const std::string& reference, const PullOptions& options) = 0;
  // Imports every image of an OCI image layout directory or an OCI archive (a tar of one).
  virtual Result<std::vector<Image>> Import(const std::filesystem::path& path) = 0;
  virtual Result<std::vector<Image>> List() = 0;
  // Marks `owner` (a VMI uid) as a user of the image (Prune keeps it) / drops every use of it.
  virtual Status Use(const std::string& owner, const std::string& manifest_digest) = 0;
  virtual Status Release(const std::string& owner) = 0;
  // Removes unused images, least recently used first, until the cache holds at most
  // budget_bytes (0: every unused image), and blobs no image needs; stale partial downloads
  // older than a day.
  virtual Result<PruneReport> Prune(uint64_t budget_bytes) = 0;
};

// Creates `overlay` as a qcow2 over the read-only `image.disk_path` with its format given
// explicitly (-F), so QEMU never probes it.
Status CreateOverlay(const Image& image, const std::filesystem::path& overlay);

}  // namespace edgevirt::image
