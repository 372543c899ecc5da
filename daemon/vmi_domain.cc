#include "daemon/vmi_domain.h"

#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>

#include "api/kubevirt/quantity.h"
#include "api/machinery/secrets.h"
#include "api/subresources/subresources.h"
#include "common/exec.h"
#include "common/fd.h"

namespace edgevirt::daemon {
namespace {

namespace fs = std::filesystem;
using api::kubevirt::Quantity;

constexpr uint64_t kMiB = 1024 * 1024;
// Empty PCIe root ports each domain gets for hot-plugged virtio disks (q35 hot-plugs into
// root ports only; libvirt adds them at define time, never later).
constexpr uint32_t kSparePciePorts = 2;

const Json* Get(const Json* j, const char* key) {
  if (j == nullptr || !j->is_object()) return nullptr;
  auto it = j->find(key);
  return it == j->end() || it->is_null() ? nullptr : &*it;
}
template <typename... Keys>
const Json* Path(const Json* j, const char* key, Keys... rest) {
  const Json* v = Get(j, key);
  if constexpr (sizeof...(rest) == 0) {
    return v;
  } else {
    return Path(v, rest...);
  }
}
std::string Str(const Json* j) {
  return j != nullptr && j->is_string() ? j->get<std::string>() : "";
}
std::optional<int64_t> Int(const Json* j) {
  if (j == nullptr || !j->is_number_integer()) return std::nullopt;
  return j->get<int64_t>();
}
bool Bool(const Json* j, bool fallback) {
  return j != nullptr && j->is_boolean() ? j->get<bool>() : fallback;
}

Error Invalid(std::string m) { return MakeError(Code::kInvalid, std::move(m)); }

// A Kubernetes quantity as a byte count (Quantity.Value(): rounded up).
Result<uint64_t> Bytes(const Json* j, const std::string& field) {
  std::string text;
  if (j != nullptr && j->is_string()) {
    text = j->get<std::string>();
  } else if (j != nullptr && j->is_number_integer()) {
    text = std::to_string(j->get<int64_t>());
  } else {
    return Invalid(field + " is missing");
  }
  auto q = Quantity::Parse(text);
  if (!q || q->IsNegative()) return Invalid(field + ": \"" + text + "\" is not a quantity");
  return static_cast<uint64_t>(q->Value());
}

bool IsVolumeName(const std::string& s) {
  if (s.empty() || s.size() > 63) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

// KubeVirt's dns.SanitizeHostname: spec.hostname, else the name up to its first dot, at most
// 63 bytes.
std::string Hostname(const Json& vmi) {
  std::string h = Str(Path(&vmi, "spec", "hostname"));
  if (!h.empty()) return h;
  std::string name = Str(Path(&vmi, "metadata", "name"));
  name = name.substr(0, name.find('.'));
  if (name.size() > 63) name.resize(63);
  return name;
}

// The data of one Secret key, decoded; nullopt when the key is absent.
Result<std::optional<std::string>> SecretKey(const Json& secret, const char* key,
                                             const std::string& what) {
  const Json* v = Path(&secret, "data", key);
  if (v == nullptr) return std::optional<std::string>();
  auto decoded = api::machinery::Base64Decode(Str(v));
  if (!decoded) return Invalid(what + ": key " + key + " is not valid base64");
  return std::optional<std::string>(std::move(*decoded));
}

struct CloudInitData {
  std::string user, network;
};

// KubeVirt v1.0 (pkg/cloud-init): data from a Secret replaces the inline fields; inline text
// wins over base64; at least one of user and network data must be non-empty.
Result<CloudInitData> ReadCloudInit(const std::string& ns, const std::string& volume,
                                    const Json& src, const SecretLookup& secrets) {
  CloudInitData d;
  auto one = [&](const char* plain, const char* b64, const char* ref, const char* key1,
                 const char* key2, std::string* out) -> Status {
    std::string text = Str(Get(&src, plain));
    if (text.empty()) {
      std::string encoded = Str(Get(&src, b64));
      if (!encoded.empty()) {
        auto decoded = api::machinery::Base64Decode(encoded);
        if (!decoded) {
          return Invalid("volume " + volume + ": " + b64 + " is not valid base64");
        }
        text = std::move(*decoded);
      }
    }
    std::string secret_name = Str(Path(&src, ref, "name"));
    if (!secret_name.empty()) {
      std::string what = "volume " + volume + ": " + ref + " Secret " + ns + "/" + secret_name;
      if (!secrets) return MakeError(Code::kUnavailable, what + ": no Secret lookup");
      auto secret = secrets(ns, secret_name);
      if (!secret) return std::move(secret).error().Wrap(what);
      ASSIGN_OR_RETURN(auto value, SecretKey(*secret, key1, what));
      if (!value) {
        ASSIGN_OR_RETURN(value, SecretKey(*secret, key2, what));
      }
      if (!value) {
        return MakeError(Code::kNotFound, what + " has no key " + key1 + " or " + key2);
      }
      text = std::move(*value);
    }
    *out = std::move(text);
    return Ok();
  };
  RETURN_IF_ERROR(one("userData", "userDataBase64", "secretRef", "userdata", "userData", &d.user));
  RETURN_IF_ERROR(one("networkData", "networkDataBase64", "networkDataSecretRef", "networkdata",
                      "networkData", &d.network));
  if (d.user.empty() && d.network.empty()) {
    return Invalid("volume " + volume +
                   ": userDataBase64, userData, networkDataBase64 or networkData is required for "
                   "a cloud-init data source");
  }
  return d;
}

// `path` with every symlink of its existing part resolved; the missing rest appended as is.
Result<std::string> RealPathOfExistingPart(const std::string& path) {
  fs::path p(path);
  fs::path rest;
  while (true) {
    char buf[PATH_MAX];
    if (::realpath(p.c_str(), buf) != nullptr) {
      fs::path real(buf);
      if (!rest.empty()) real /= rest;
      return real.string();
    }
    if (errno != ENOENT) return ErrnoError("resolve " + p.string(), errno);
    if (!p.has_relative_path()) return Invalid("cannot resolve " + path);
    rest = rest.empty() ? p.filename() : p.filename() / rest;
    p = p.parent_path();
  }
}

bool IsUnder(const std::string& path, std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir == "/") return path.size() > 1 && path[0] == '/';
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         path[dir.size()] == '/';
}

struct HostDisk {
  std::string path;  // resolved
  std::optional<VolumeTask> create;
};

Result<HostDisk> PlanHostDisk(const std::string& volume, const Json& hd,
                              const VmiHostOptions& host) {
  const std::string where = "volume " + volume + ": hostDisk.path";
  std::string path = Str(Get(&hd, "path"));
  std::string type = Str(Get(&hd, "type"));
  if (host.host_disk_dirs.empty()) {
    return Invalid(where +
                   ": hostDisk volumes are not allowed on this host (no host disk "
                   "directories configured)");
  }
  if (path.empty() || path[0] != '/') return Invalid(where + " \"" + path + "\" is not absolute");
  fs::path lexical(path);
  bool clean = lexical.lexically_normal().string() == path && path.back() != '/';
  for (const auto& part : lexical) {
    if (part == ".." || part == ".") clean = false;
  }
  if (!clean) {
    return Invalid(where + " \"" + path +
                   "\" is not a clean path (no '.', '..', '//' or trailing '/')");
  }
  ASSIGN_OR_RETURN(std::string real, RealPathOfExistingPart(path));
  bool allowed = false;
  std::string dirs;
  for (const auto& dir : host.host_disk_dirs) {
    dirs += (dirs.empty() ? "" : " ") + dir;
    auto real_dir = RealPathOfExistingPart(dir);
    if (real_dir && IsUnder(real, *real_dir)) allowed = true;
  }
  if (!allowed) {
    std::string shown =
        real == path ? "\"" + path + "\"" : "\"" + path + "\" (resolves to \"" + real + "\")";
    return Invalid(where + " " + shown + " is not under one of the host disk directories [" + dirs +
                   "]");
  }
  HostDisk out;
  out.path = real;
  struct stat st {};
  bool exists = ::stat(real.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) return ErrnoError(where + " " + path, errno);
  if (exists && !S_ISREG(st.st_mode)) {
    return Invalid(where + " \"" + path + "\" is not a regular file");
  }
  if (type == "Disk") {
    if (!exists) return Invalid(where + " \"" + path + "\" does not exist (type Disk)");
  } else if (type == "DiskOrCreate") {
    if (!exists) {
      ASSIGN_OR_RETURN(uint64_t cap,
                       Bytes(Get(&hd, "capacity"),
                             "volume " + volume + ": hostDisk.capacity (type DiskOrCreate)"));
      if (cap == 0) return Invalid("volume " + volume + ": hostDisk.capacity must be > 0");
      VolumeTask t;
      t.kind = VolumeTaskKind::kHostDiskCreate;
      t.volume = volume;
      t.path = real;
      t.capacity_bytes = cap;
      out.create = std::move(t);
    }
  } else {
    return Invalid("volume " + volume + ": hostDisk.type \"" + type +
                   "\" is not Disk or DiskOrCreate");
  }
  return out;
}

Result<vmm::DiskBus> Bus(const std::string& disk, const std::string& bus) {
  if (bus.empty() || bus == "sata") return vmm::DiskBus::kSata;  // KubeVirt's amd64 default
  if (bus == "virtio") return vmm::DiskBus::kVirtio;
  if (bus == "scsi") return vmm::DiskBus::kScsi;
  if (bus == "usb") {
    return MakeError(Code::kUnsupported,
                     "disk " + disk + ": bus usb is not supported (use virtio, sata or scsi)");
  }
  return Invalid("disk " + disk + ": unknown bus \"" + bus + "\"");
}

const Json* FindVolume(const Json& vmi, const std::string& name) {
  const Json* volumes = Path(&vmi, "spec", "volumes");
  if (volumes == nullptr || !volumes->is_array()) return nullptr;
  for (const auto& v : *volumes) {
    if (Str(Get(&v, "name")) == name) return &v;
  }
  return nullptr;
}

Status CheckSocketPath(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Invalid("socket path " + path + " is longer than " +
                   std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                   " bytes (a unix socket limit): choose a shorter state directory");
  }
  return Ok();
}

// ---- files ----

Status SetOwnerAndMode(const std::string& path, gid_t gid, bool chown_group, mode_t mode) {
  if (chown_group && ::chown(path.c_str(), 0, gid) != 0) return ErrnoError("chown " + path, errno);
  if (::chmod(path.c_str(), mode) != 0) return ErrnoError("chmod " + path, errno);
  return Ok();
}

Status EnsureDir(const std::string& path, mode_t mode, gid_t gid, bool chown_group) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST)
    return ErrnoError("mkdir " + path, errno);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return ErrnoError("stat " + path, errno);
  if (!S_ISDIR(st.st_mode)) return Invalid(path + " exists and is not a directory");
  return SetOwnerAndMode(path, gid, chown_group, mode);
}

Status FsyncPath(const std::string& path, int flags) {
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC));
  if (!fd) return ErrnoError("open " + path, errno);
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + path, errno);
  return Ok();
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

Status WriteFile(const std::string& path, const std::string& data) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("create " + path, errno);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write " + path, errno);
    off += static_cast<size_t>(n);
  }
  return Ok();
}

// Moves a finished temporary file into place; the directory entry is made durable.
Status Publish(const std::string& tmp, const std::string& path, mode_t mode) {
  if (::chmod(tmp.c_str(), mode) != 0) return ErrnoError("chmod " + tmp, errno);
  RETURN_IF_ERROR(FsyncPath(tmp, O_RDONLY));
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError("rename " + tmp, errno);
  return FsyncPath(fs::path(path).parent_path().string(), O_RDONLY | O_DIRECTORY);
}

class StagingDir {
 public:
  explicit StagingDir(std::string path) : path_(std::move(path)) {}
  ~StagingDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

 private:
  std::string path_;
};

Status MakeCloudInitIso(const VolumeTask& t) {
  const bool nocloud = t.kind == VolumeTaskKind::kCloudInitNoCloud;
  const std::string dir = fs::path(t.path).parent_path().string();
  std::string tmpl = dir + "/.stage-" + t.volume + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return ErrnoError("mkdtemp " + tmpl, errno);
  StagingDir cleanup(tmpl);
  std::string data_dir = tmpl;
  if (!nocloud) {
    data_dir = tmpl + "/openstack/latest";
    std::error_code ec;
    fs::create_directories(data_dir, ec);
    if (ec) return MakeError(Code::kInternal, "mkdir " + data_dir + ": " + ec.message());
  }
  RETURN_IF_ERROR(WriteFile(data_dir + (nocloud ? "/user-data" : "/user_data"), t.user_data));
  RETURN_IF_ERROR(WriteFile(data_dir + (nocloud ? "/meta-data" : "/meta_data.json"), t.meta_data));
  if (!t.network_data.empty()) {
    RETURN_IF_ERROR(
        WriteFile(data_dir + (nocloud ? "/network-config" : "/network_data.json"), t.network_data));
  }
  std::string tmp = t.path + ".tmp";
  ::unlink(tmp.c_str());
  ExecOptions opts;
  opts.timeout = std::chrono::seconds(60);
  RETURN_IF_ERROR(ExecChecked({"xorriso", "-as", "mkisofs", "-output", tmp, "-volid",
                               nocloud ? "cidata" : "config-2", "-joliet", "-rock", tmpl},
                              opts, "xorriso (cloud-init ISO for volume " + t.volume + ")"));
  return Publish(tmp, t.path, 0600);
}

Status MakeEmptyDisk(const VolumeTask& t) {
  std::string tmp = t.path + ".tmp";
  ::unlink(tmp.c_str());
  ExecOptions opts;
  opts.timeout = std::chrono::seconds(60);
  RETURN_IF_ERROR(ExecChecked(
      {"qemu-img", "create", "-q", "-f", "qcow2", tmp, std::to_string(t.capacity_bytes)}, opts,
      "qemu-img create " + tmp));
  return Publish(tmp, t.path, 0600);
}

// KubeVirt's ephemeral disk (pkg/ephemeral-disk): a qcow2 overlay whose backing is the
// claim, which QEMU then opens read-only.
Status MakeOverlay(const VolumeTask& t) {
  if (t.backing.empty() || t.backing[0] != '/') {
    return Invalid("overlay " + t.path + ": backing \"" + t.backing + "\" is not absolute");
  }
  std::string tmp = t.path + ".tmp";
  ::unlink(tmp.c_str());
  ExecOptions opts;
  opts.timeout = std::chrono::seconds(60);
  RETURN_IF_ERROR(ExecChecked({"qemu-img", "create", "-q", "-f", "qcow2", "-b", t.backing, "-F",
                               t.backing_format == vmm::DiskFormat::kQcow2 ? "qcow2" : "raw", tmp},
                              opts, "qemu-img create (overlay) " + tmp));
  return Publish(tmp, t.path, 0600);
}

Status MakeHostDisk(const VolumeTask& t) {
  fs::path target(t.path);
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  if (ec)
    return MakeError(Code::kInternal,
                     "mkdir " + target.parent_path().string() + ": " + ec.message());
  std::string tmp =
      (target.parent_path() / ("." + target.filename().string() + ".edgevirt-tmp")).string();
  ::unlink(tmp.c_str());
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0640));
    if (!fd) return ErrnoError("create " + tmp, errno);
    if (::ftruncate(fd.get(), static_cast<off_t>(t.capacity_bytes)) != 0) {
      int err = errno;
      ::unlink(tmp.c_str());
      return ErrnoError("size " + tmp, err);
    }
    if (::fchmod(fd.get(), 0640) != 0 || ::fsync(fd.get()) != 0) {
      int err = errno;
      ::unlink(tmp.c_str());
      return ErrnoError("fsync " + tmp, err);
    }
  }
  // link() never replaces: a file that appeared meanwhile (the user's own image) is kept.
  int rc = ::link(tmp.c_str(), t.path.c_str());
  int err = errno;
  ::unlink(tmp.c_str());
  if (rc != 0 && err != EEXIST) return ErrnoError("create " + t.path, err);
  return FsyncPath(target.parent_path().string(), O_RDONLY | O_DIRECTORY);
}

}  // namespace

bool IsCanonicalUuid(std::string_view text) {
  if (text.size() != 36) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

FirmwarePaths FindFirmware() {
  auto first = [](std::initializer_list<const char*> candidates) -> std::string {
    for (const char* c : candidates) {
      struct stat st {};
      if (::stat(c, &st) == 0 && S_ISREG(st.st_mode)) return c;
    }
    return "";
  };
  FirmwarePaths f;
  f.ovmf_code = first({"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/edk2/ovmf/OVMF_CODE.fd"});
  f.ovmf_vars = first({"/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"});
  f.ovmf_code_secure =
      first({"/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
             "/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd"});
  f.ovmf_vars_secure =
      first({"/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"});
  return f;
}

namespace {

struct DiskContext {
  const Json& vmi;
  const VmiHostOptions& host;
  const SecretLookup& secrets;
  const ClaimLookup& claims;
  const ContainerDisks& container_disks;
  const std::string& dir;   // the VMI's directory
  const std::string& uuid;  // the firmware UUID
};

Result<ClaimSource> LookupClaim(const DiskContext& c, const std::string& volume,
                                const Json& pvc_source) {
  const std::string claim = Str(Get(&pvc_source, "claimName"));
  if (claim.empty()) return Invalid("volume " + volume + ": claimName is required");
  if (!c.claims) {
    return MakeError(Code::kUnavailable,
                     "volume " + volume + ": PersistentVolumeClaims are not served");
  }
  auto src = c.claims(Str(Path(&c.vmi, "metadata", "namespace")), claim);
  if (!src) return std::move(src).error().Wrap("volume " + volume);
  if (src->path.empty() || src->path[0] != '/') {
    return MakeError(Code::kInternal,
                     "volume " + volume + ": claim " + claim + " has no absolute path");
  }
  return src;
}

// One disk of the VMI (a `disks[]` entry and its volume) as a vmm disk, adding the files it
// needs to `tasks` and the block devices it opens to `grants`. A persistentVolumeClaim volume's
// resolved claim goes to `*claim_out` when given.
Result<vmm::DiskSpec> PlanDisk(const DiskContext& c, const Json& disk,
                               std::vector<VolumeTask>& tasks, std::vector<DeviceGrant>& grants,
                               ClaimSource* claim_out = nullptr) {
  const Json& vmi = c.vmi;
  const VmiHostOptions& host = c.host;
  const std::string& dir = c.dir;
  const std::string ns = Str(Path(&vmi, "metadata", "namespace"));
  const std::string name = Str(Path(&vmi, "metadata", "name"));
  std::string dname = Str(Get(&disk, "name"));
  const Json* volume = FindVolume(vmi, dname);
  if (volume == nullptr) return (Invalid("disk " + dname + " has no volume"));
  if (!IsVolumeName(dname)) return (Invalid("disk name \"" + dname + "\" is not a DNS label"));
  vmm::DiskSpec s;
  s.name = dname;
  const Json* target = nullptr;
  if ((target = Get(&disk, "cdrom")) != nullptr) {
    s.device = vmm::DiskDevice::kCdrom;
  } else if ((target = Get(&disk, "lun")) != nullptr) {
    s.device = vmm::DiskDevice::kLun;
  } else {
    target = Get(&disk, "disk");
    s.device = vmm::DiskDevice::kDisk;
  }
  auto bus = Bus(dname, Str(Get(target, "bus")));
  if (!bus) return (std::move(bus).error());
  s.bus = *bus;
  s.readonly = s.device == vmm::DiskDevice::kCdrom || Bool(Get(target, "readonly"), false);
  if (auto order = Int(Get(&disk, "bootOrder")); order && *order > 0) {
    s.boot_order = static_cast<uint32_t>(*order);
  }
  s.serial = Str(Get(&disk, "serial"));
  std::string cache = Str(Get(&disk, "cache"));
  if (cache.empty()) {
    s.cache = host.direct_io ? vmm::DiskCache::kNone : vmm::DiskCache::kWritethrough;
  } else if (cache == "none") {
    if (!host.direct_io) {
      return (Invalid("disk " + dname +
                      ": cache mode none needs O_DIRECT, which the file system of " + host.vms_dir +
                      " does not support"));
    }
    s.cache = vmm::DiskCache::kNone;
  } else if (cache == "writethrough") {
    s.cache = vmm::DiskCache::kWritethrough;
  } else if (cache == "writeback") {
    s.cache = vmm::DiskCache::kWriteback;
  } else {
    return (Invalid("disk " + dname + ": unknown cache mode \"" + cache + "\""));
  }
  s.error_policy = vmm::DiskErrorPolicy::kStop;
  s.source_kind = vmm::DiskSourceKind::kFile;

  const char* cloud_init_kind = nullptr;
  if (Get(volume, "cloudInitNoCloud") != nullptr) cloud_init_kind = "cloudInitNoCloud";
  if (Get(volume, "cloudInitConfigDrive") != nullptr) cloud_init_kind = "cloudInitConfigDrive";
  if (cloud_init_kind != nullptr) {
    const bool nocloud = std::string_view(cloud_init_kind) == "cloudInitNoCloud";
    auto data = ReadCloudInit(ns, dname, *Get(volume, cloud_init_kind), c.secrets);
    if (!data) return (std::move(data).error());
    VolumeTask t;
    t.kind = nocloud ? VolumeTaskKind::kCloudInitNoCloud : VolumeTaskKind::kCloudInitConfigDrive;
    t.volume = dname;
    t.path = dir + "/cloudinit-" + dname + ".iso";
    t.user_data = std::move(data->user);
    t.network_data = std::move(data->network);
    // KubeVirt v1.0's metadata (JSON, which is also YAML): NoCloud's instance-id is the
    // firmware UUID; ConfigDrive's is <name>.<namespace>, with the UUID beside it.
    nlohmann::ordered_json meta;
    if (nocloud) {
      meta["instance-id"] = c.uuid;
      meta["local-hostname"] = Hostname(vmi);
    } else {
      meta["instance_id"] = name + "." + ns;
      meta["hostname"] = Hostname(vmi);
      meta["uuid"] = c.uuid;
    }
    t.meta_data = meta.dump();
    tasks.push_back(std::move(t));
    s.path = dir + "/cloudinit-" + dname + ".iso";
    s.format = vmm::DiskFormat::kRaw;
    // Deliberate difference: KubeVirt leaves the seed writable unless the disk says
    // readonly; edgevirt makes it read-only wherever QEMU allows (not a sata disk: ide-hd
    // cannot be read-only), so a guest cannot alter the seed kept across restarts.
    if (!(s.device == vmm::DiskDevice::kDisk && s.bus == vmm::DiskBus::kSata)) s.readonly = true;
  } else if (const Json* empty = Get(volume, "emptyDisk")) {
    auto cap = Bytes(Get(empty, "capacity"), "volume " + dname + ": emptyDisk.capacity");
    if (!cap) return (std::move(cap).error());
    if (*cap == 0) return (Invalid("volume " + dname + ": emptyDisk.capacity must be > 0"));
    VolumeTask t;
    t.kind = VolumeTaskKind::kEmptyDisk;
    t.volume = dname;
    t.path = dir + "/emptydisk-" + dname + ".qcow2";
    t.capacity_bytes = *cap;
    s.path = t.path;
    s.format = vmm::DiskFormat::kQcow2;
    tasks.push_back(std::move(t));
  } else if (const Json* hd = Get(volume, "hostDisk")) {
    auto planned = PlanHostDisk(dname, *hd, host);
    if (!planned) return (std::move(planned).error());
    s.path = planned->path;
    s.format = vmm::DiskFormat::kRaw;
    if (planned->create) tasks.push_back(std::move(*planned->create));
  } else if (Get(volume, "containerDisk") != nullptr) {
    // KubeVirt's containerDisk: the image's disk is the read-only base of a qcow2 overlay
    // that takes the guest's writes and goes with the VMI (virt-launcher's ephemeral disk).
    auto image = c.container_disks.find(dname);
    if (image == c.container_disks.end()) {
      return MakeError(Code::kUnavailable,
                       "volume " + dname + ": the containerDisk image is not pulled yet");
    }
    VolumeTask t;
    t.kind = VolumeTaskKind::kEphemeralOverlay;
    t.volume = dname;
    t.path = dir + "/containerdisk-" + dname + ".qcow2";
    t.backing = image->second.path;
    t.backing_format = image->second.format;
    s.path = t.path;
    s.format = vmm::DiskFormat::kQcow2;
    tasks.push_back(std::move(t));
  } else if (const Json* pvc = Get(volume, "persistentVolumeClaim")) {
    ASSIGN_OR_RETURN(ClaimSource claim, LookupClaim(c, dname, *pvc));
    if (Bool(Get(pvc, "readOnly"), false)) s.readonly = true;
    s.path = claim.path;
    s.source_kind = claim.block ? vmm::DiskSourceKind::kBlock : vmm::DiskSourceKind::kFile;
    s.format = claim.qcow2 ? vmm::DiskFormat::kQcow2 : vmm::DiskFormat::kRaw;
    if (claim.block) grants.push_back({dname, claim.path, !s.readonly});
    if (claim_out != nullptr) *claim_out = std::move(claim);
  } else if (const Json* eph = Get(volume, "ephemeral")) {
    // KubeVirt's ephemeral volume: the claim is the read-only base of a qcow2 overlay
    // that takes the guest's writes and goes with the VMI.
    const Json* base = Get(eph, "persistentVolumeClaim");
    if (base == nullptr) {
      return Invalid("volume " + dname + ": ephemeral needs a persistentVolumeClaim");
    }
    ASSIGN_OR_RETURN(ClaimSource claim, LookupClaim(c, dname, *base));
    VolumeTask t;
    t.kind = VolumeTaskKind::kEphemeralOverlay;
    t.volume = dname;
    t.path = dir + "/ephemeral-" + dname + ".qcow2";
    t.backing = claim.path;
    t.backing_format = claim.qcow2 ? vmm::DiskFormat::kQcow2 : vmm::DiskFormat::kRaw;
    s.path = t.path;
    s.format = vmm::DiskFormat::kQcow2;
    tasks.push_back(std::move(t));
    if (claim.block) grants.push_back({dname, claim.path, false});
  } else if (Get(volume, "dataVolume") != nullptr) {
    return (MakeError(Code::kUnsupported,
                      "volume " + dname +
                          ": dataVolume needs CDI, which edgevirt does not serve (use a "
                          "persistentVolumeClaim)"));
  } else {
    std::string kind = "(none)";
    for (const auto& [key, value] : volume->items()) {
      if (key != "name") kind = key;
    }
    return (MakeError(Code::kUnsupported,
                      "volume " + dname + ": volume type " + kind + " is not supported"));
  }
  if (s.device == vmm::DiskDevice::kLun && s.source_kind != vmm::DiskSourceKind::kBlock) {
    return (Invalid("disk " + dname +
                    ": a lun passes a block device through, but this volume is a file"));
  }
  return s;
}

}  // namespace

namespace {

// Go's net.ParseMAC for 6-byte addresses (what KubeVirt's admission accepts):
// xx:xx:xx:xx:xx:xx, xx-xx-xx-xx-xx-xx and xxxx.xxxx.xxxx. Lower-case colon form, or nullopt.
std::optional<std::string> NormalizeMac(const std::string& text) {
  std::string hex;
  if (text.size() == 17) {
    const char sep = text[2];
    if (sep != ':' && sep != '-') return std::nullopt;
    for (size_t i = 0; i < text.size(); ++i) {
      if (i % 3 == 2) {
        if (text[i] != sep) return std::nullopt;
      } else {
        hex += text[i];
      }
    }
  } else if (text.size() == 14) {
    for (size_t i = 0; i < text.size(); ++i) {
      if (i % 5 == 4) {
        if (text[i] != '.') return std::nullopt;
      } else {
        hex += text[i];
      }
    }
  } else {
    return std::nullopt;
  }
  std::string out;
  for (size_t i = 0; i < hex.size(); ++i) {
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(hex[i])));
    if (!std::isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
    if (i > 0 && i % 2 == 0) out += ':';
    out += c;
  }
  return out;
}

bool IsDnsLabel(const std::string& s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

// Interface binding methods of KubeVirt v1.0 (v1.InterfaceBindingMethod) and later ("binding":
// network binding plugins), with whether edgevirt serves them.
constexpr std::pair<const char*, bool> kBindings[] = {
    {"bridge", true},   {"masquerade", true}, {"slirp", false},  {"sriov", false},
    {"macvtap", false}, {"passt", false},     {"binding", false}};

Result<NetworkRequest> RequestOf(const Json& iface, const Json* networks) {
  NetworkRequest r;
  r.interface_name = Str(Get(&iface, "name"));
  const std::string what = "interface " + r.interface_name;
  if (r.interface_name.empty()) return Invalid("an interface has no name");
  const char* binding = nullptr;
  for (const auto& [key, served] : kBindings) {
    if (Get(&iface, key) == nullptr) continue;
    if (!served) {
      return MakeError(Code::kUnsupported, what + ": the " + key +
                                               " binding is not supported (use bridge or "
                                               "masquerade)");
    }
    if (binding != nullptr) {
      return Invalid(what + ": two binding methods (" + binding + " and " + key + ")");
    }
    binding = key;
  }
  if (binding == nullptr) return Invalid(what + ": no binding method (masquerade or bridge)");
  r.masquerade = std::string_view(binding) == "masquerade";

  const Json* net = nullptr;
  if (networks != nullptr && networks->is_array()) {
    for (const auto& n : *networks) {
      if (Str(Get(&n, "name")) == r.interface_name) net = &n;  // the last wins, as in KubeVirt
    }
  }
  if (net == nullptr) return Invalid(what + ": no network of that name in spec.networks");
  const Json* multus = Get(net, "multus");
  if (Get(net, "pod") != nullptr && multus != nullptr) {
    return Invalid(what + ": its network has both pod and multus");
  }
  if (Get(net, "pod") != nullptr) {
    r.pod = true;
  } else if (multus != nullptr) {
    if (Bool(Get(multus, "default"), false)) {
      return MakeError(Code::kUnsupported,
                       what +
                           ": multus.default (a Multus network replacing the pod network) "
                           "is not supported; use the pod network");
    }
    const std::string full = Str(Get(multus, "networkName"));
    const size_t slash = full.find('/');
    std::string ns = slash == std::string::npos ? "" : full.substr(0, slash);
    r.host_network = slash == std::string::npos ? full : full.substr(slash + 1);
    if ((slash != std::string::npos && !IsDnsLabel(ns)) || !IsDnsLabel(r.host_network)) {
      return Invalid(what + ": multus.networkName \"" + full +
                     "\" is not \"name\" or \"namespace/name\" (DNS labels)");
    }
    if (r.masquerade) {
      return Invalid(what + ": masquerade is only implemented with the pod network");
    }
  } else {
    return Invalid(what + ": its network has neither pod nor multus");
  }

  // Ports only mean something on the pod network (KubeVirt forwards them with masquerade;
  // admission checks them only there), so they are read only there.
  const Json* ports = r.pod ? Get(&iface, "ports") : nullptr;
  if (ports != nullptr && ports->is_array()) {
    for (size_t i = 0; i < ports->size(); ++i) {
      const Json& p = (*ports)[i];
      std::string protocol = Str(Get(&p, "protocol"));
      if (protocol.empty()) protocol = "TCP";
      auto port = Int(Get(&p, "port"));
      const std::string at = what + ": ports[" + std::to_string(i) + "]";
      if (!port || *port < 1 || *port > 65535) return Invalid(at + ": port must be 1-65535");
      if (protocol != "TCP" && protocol != "UDP") {
        return Invalid(at + ": protocol \"" + protocol + "\" is not TCP or UDP");
      }
      r.ports.emplace_back(protocol, static_cast<uint16_t>(*port));
    }
  }
  const std::string mac = Str(Get(&iface, "macAddress"));
  if (!mac.empty()) {
    auto normal = NormalizeMac(mac);
    if (!normal) return Invalid(what + ": macAddress \"" + mac + "\" is not a MAC address");
    r.mac = std::move(*normal);
  }
  return r;
}

// The interface's NIC: the attachment's placement and the spec's model, pciAddress, bootOrder.
Result<vmm::NicSpec> NicOf(const Json& iface, const NetworkRequest& req, const NicAttachment& at) {
  const std::string what = "interface " + req.interface_name;
  vmm::NicSpec n;
  n.name = req.interface_name;
  n.kind = at.kind;
  // A macvtap is opened by its name alone; its parent and mode are net/'s (vmm::NicKind).
  if (at.kind == vmm::NicKind::kBridge) n.source = at.source;
  n.target_dev = at.tap;
  n.mtu = at.mtu;
  if (at.mac.empty()) {
    if (req.mac.empty()) {
      return Invalid(what + ": neither the interface nor its attachment has a MAC address");
    }
    n.mac = req.mac;
  } else {
    auto normal = NormalizeMac(at.mac);
    if (!normal) return Invalid(what + ": attachment MAC \"" + at.mac + "\" is not a MAC address");
    if (!req.mac.empty() && *normal != req.mac) {
      return Invalid(what + ": the attachment's MAC " + *normal + " is not the interface's " +
                     "macAddress " + req.mac);
    }
    n.mac = std::move(*normal);
  }
  const std::string model = Str(Get(&iface, "model"));
  n.model = model.empty() ? "virtio" : model;
  const std::string pci = Str(Get(&iface, "pciAddress"));
  if (!pci.empty()) {
    auto addr = vmm::ParsePciAddress(pci);
    if (!addr) return std::move(addr).error().Wrap(what + ": pciAddress");
    n.pci = *addr;
  }
  if (auto order = Int(Get(&iface, "bootOrder"))) {
    if (*order < 1 || *order > UINT32_MAX) return Invalid(what + ": bootOrder must be >= 1");
    n.boot_order = static_cast<uint32_t>(*order);
  }
  return n;
}

// The interfaces NetworkRequests looks at: every interface but the `state: absent` ones.
std::vector<const Json*> PresentInterfaces(const Json& vmi) {
  std::vector<const Json*> out;
  const Json* ifaces = Path(&vmi, "spec", "domain", "devices", "interfaces");
  if (ifaces == nullptr || !ifaces->is_array()) return out;
  for (const auto& i : *ifaces) {
    if (Str(Get(&i, "state")) != "absent") out.push_back(&i);
  }
  return out;
}

Status PlanNics(const Json& vmi, const std::vector<NicAttachment>& attachments,
                vmm::DomainSpec& d) {
  ASSIGN_OR_RETURN(std::vector<NetworkRequest> requests, NetworkRequests(vmi));
  const std::vector<const Json*> ifaces = PresentInterfaces(vmi);
  std::map<std::string, const NicAttachment*> by_name;
  for (const auto& a : attachments) {
    if (!by_name.emplace(a.interface_name, &a).second) {
      return Invalid("interface " + a.interface_name + " has two NIC attachments");
    }
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const NetworkRequest& req = requests[i];
    auto it = by_name.find(req.interface_name);
    if (it == by_name.end()) {
      return Invalid("interface " + req.interface_name +
                     " has no NIC attachment (every interface must be attached)");
    }
    ASSIGN_OR_RETURN(vmm::NicSpec nic, NicOf(*ifaces[i], req, *it->second));
    d.nics.push_back(std::move(nic));
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    return Invalid("NIC attachment for " + by_name.begin()->first + ", which is not an interface");
  }
  return Ok();
}

}  // namespace

Result<std::vector<NetworkRequest>> NetworkRequests(const Json& vmi) {
  const Json* networks = Path(&vmi, "spec", "networks");
  std::vector<NetworkRequest> out;
  std::set<std::string> names;
  int pods = 0;
  for (const Json* iface : PresentInterfaces(vmi)) {
    ASSIGN_OR_RETURN(NetworkRequest r, RequestOf(*iface, networks));
    if (!names.insert(r.interface_name).second) {
      return Invalid("interface " + r.interface_name + ": two interfaces have this name");
    }
    if (r.pod && ++pods > 1) {
      return Invalid("interface " + r.interface_name +
                     ": more than one interface is connected to the pod network");
    }
    out.push_back(std::move(r));
  }
  return out;
}

Result<HotplugDisk> PlanHotplugDisk(const Json& vmi, const std::string& volume,
                                    const VmiHostOptions& host, const ClaimLookup& claims) {
  const std::string ctx =
      "VMI " + Str(Path(&vmi, "metadata", "namespace")) + "/" + Str(Path(&vmi, "metadata", "name"));
  const std::string uid = Str(Path(&vmi, "metadata", "uid"));
  if (!IsCanonicalUuid(uid)) return Invalid(ctx + ": metadata.uid is not a UUID");
  const Json* disks = Path(&vmi, "spec", "domain", "devices", "disks");
  const Json* disk = nullptr;
  if (disks != nullptr && disks->is_array()) {
    for (const auto& d : *disks) {
      if (Str(Get(&d, "name")) == volume) disk = &d;
    }
  }
  const Json* vol = FindVolume(vmi, volume);
  if (disk == nullptr || vol == nullptr) {
    return MakeError(Code::kNotFound, ctx + ": no disk and volume named " + volume);
  }
  if (Get(vol, "persistentVolumeClaim") == nullptr) {
    return MakeError(Code::kUnsupported,
                     ctx + ": volume " + volume + ": only persistentVolumeClaim volumes hot-plug");
  }
  const std::string dir = (fs::path(host.vms_dir) / uid).string();
  const std::string uuid = Str(Path(&vmi, "spec", "domain", "firmware", "uuid"));
  SecretLookup no_secrets;
  static const ContainerDisks kNoImages;
  DiskContext c{vmi, host, no_secrets, claims, kNoImages, dir, uuid};
  HotplugDisk out;
  std::vector<VolumeTask> tasks;
  auto s = PlanDisk(c, *disk, tasks, out.grants, &out.claim);
  if (!s) return std::move(s).error().Wrap(ctx);
  if (s->boot_order != 0) {
    return Invalid(ctx + ": hot-plugged disk " + volume + " cannot have a bootOrder");
  }
  out.disk = std::move(*s);
  return out;
}

Result<VmiPlan> PlanVmi(const Json& vmi, const VmiHostOptions& host, const SecretLookup& secrets,
                        const ClaimLookup& claims, const ContainerDisks& container_disks,
                        const std::optional<std::vector<NicAttachment>>& nics) {
  const std::string ns = Str(Path(&vmi, "metadata", "namespace"));
  const std::string name = Str(Path(&vmi, "metadata", "name"));
  const std::string uid = Str(Path(&vmi, "metadata", "uid"));
  const std::string ctx = "VMI " + ns + "/" + name;
  auto fail = [&](Error e) { return std::move(e).Wrap(ctx); };
  if (ns.empty() || name.empty()) return fail(Invalid("metadata.namespace and name are required"));
  if (!IsCanonicalUuid(uid)) return fail(Invalid("metadata.uid \"" + uid + "\" is not a UUID"));
  if (host.vms_dir.empty() || host.vms_dir[0] != '/') {
    return fail(Invalid("vms directory \"" + host.vms_dir + "\" is not absolute"));
  }
  const Json* spec = Get(&vmi, "spec");
  const Json* domain = Get(spec, "domain");
  const Json* devices = Get(domain, "devices");

  VmiPlan plan;
  plan.uid = uid;
  plan.dir = (fs::path(host.vms_dir) / uid).string();
  plan.qemu_group = host.qemu_group;
  vmm::DomainSpec& d = plan.domain;
  d.name = ns + "_" + name;
  d.uuid = Str(Path(domain, "firmware", "uuid"));
  if (d.uuid.empty()) return fail(Invalid("spec.domain.firmware.uuid is missing"));
  d.firmware_serial = Str(Path(domain, "firmware", "serial"));
  // KubeVirt's default SMBIOS configuration (virt-config: SmbiosConfig).
  d.smbios.manufacturer = "KubeVirt";
  d.smbios.product = "None";
  d.smbios.family = "KubeVirt";
  std::string machine = Str(Path(domain, "machine", "type"));
  d.machine_type = machine.empty() ? "q35" : machine;
  d.accelerator = host.accelerator;

  const Json* cpu = Get(domain, "cpu");
  for (auto [key, out] : {std::pair{"sockets", &d.cpu.sockets}, std::pair{"cores", &d.cpu.cores},
                          std::pair{"threads", &d.cpu.threads}}) {
    auto v = Int(Get(cpu, key));
    *out = v && *v > 0 ? static_cast<uint32_t>(*v) : 1;
  }
  std::string model = Str(Get(cpu, "model"));
  if (model.empty() || model == "host-model") {
    d.cpu.mode = vmm::CpuMode::kHostModel;
  } else if (model == "host-passthrough") {
    d.cpu.mode = vmm::CpuMode::kHostPassthrough;
  } else {
    d.cpu.mode = vmm::CpuMode::kNamed;
    d.cpu.model = model;
  }
  if (host.accelerator == vmm::Accelerator::kTcg && d.cpu.mode != vmm::CpuMode::kNamed) {
    // Under TCG there is no host CPU to copy: libvirt refuses host-passthrough, and
    // host-model would describe the host's CPU to an emulator that cannot provide most of its
    // features (with fallback it silently degrades anyway). QEMU's default TCG model (qemu64)
    // is the honest answer; a named model is kept (TCG emulates most named models).
    d.cpu.mode = vmm::CpuMode::kNone;
  }

  auto guest = Bytes(Path(domain, "memory", "guest"), "spec.domain.memory.guest");
  if (!guest) return fail(std::move(guest).error());
  if (*guest == 0) return fail(Invalid("spec.domain.memory.guest must be > 0"));
  d.memory_bytes = (*guest + kMiB - 1) / kMiB * kMiB;

  // Firmware.
  if (const Json* efi = Path(domain, "firmware", "bootloader", "efi")) {
    // KubeVirt v1.0: secureBoot defaults to true when efi is given without it.
    bool secure = Bool(Get(efi, "secureBoot"), true);
    d.firmware.kind = vmm::FirmwareKind::kEfi;
    d.firmware.secure_boot = secure;
    d.firmware.loader = secure ? host.firmware.ovmf_code_secure : host.firmware.ovmf_code;
    d.firmware.nvram_template = secure ? host.firmware.ovmf_vars_secure : host.firmware.ovmf_vars;
    d.firmware.nvram = plan.dir + "/nvram.fd";
    if (d.firmware.loader.empty() || d.firmware.nvram_template.empty()) {
      return fail(MakeError(Code::kUnavailable,
                            std::string("EFI") + (secure ? " with secure boot" : "") +
                                " needs the OVMF " + (secure ? "secure-boot " : "") +
                                "code and variable images, which are not installed on this host "
                                "(package ovmf / edk2-ovmf)"));
    }
  }

  // Disks and their volumes (hotpluggable ones are attached once the domain runs).
  const Json* disks = Get(devices, "disks");
  if (disks != nullptr && disks->is_array()) {
    for (const auto& disk : *disks) {
      const std::string dname = Str(Get(&disk, "name"));
      const Json* volume = FindVolume(vmi, dname);
      if (volume != nullptr && api::subresources::IsHotplugVolume(*volume)) {
        plan.hotplug_volumes.push_back(dname);
        continue;
      }
      DiskContext c{vmi, host, secrets, claims, container_disks, plan.dir, d.uuid};
      auto s = PlanDisk(c, disk, plan.tasks, plan.grants);
      if (!s) return fail(std::move(s).error());
      d.disks.push_back(std::move(*s));
    }
  }
  // Hotplug needs somewhere to plug: KubeVirt's virtio-scsi controller (virtctl v1.0 always
  // asks for bus scsi) and spare PCIe root ports for virtio disks.
  d.hotplug_scsi_controller = true;
  d.spare_pcie_ports = kSparePciePorts;
  if (nics) {
    if (auto st = PlanNics(vmi, *nics, d); !st) return fail(std::move(st).error());
  }
  const std::string& dir = plan.dir;

  // Serial console, VNC, guest agent, TPM.
  if (Bool(Get(devices, "autoattachSerialConsole"), true)) {
    // A pty, so that the console is a libvirt stream (virDomainOpenConsole opens only ptys in
    // libvirt 9.0); QEMU's chardev log records the guest's output whether or not a console
    // session is attached.
    d.console.kind = vmm::ConsoleKind::kPty;
    d.console.log_path = dir + "/serial0.log";
  }
  if (Bool(Get(devices, "autoattachGraphicsDevice"), true)) {
    // In a subdirectory QEMU may write to: QEMU 7.2 binds the VNC socket itself (libvirt 9.0
    // pre-opens chardev sockets, not this one).
    d.vnc_socket_path = dir + "/vnc/vnc.sock";
    if (auto st = CheckSocketPath(d.vnc_socket_path); !st) return fail(std::move(st).error());
  }
  d.guest_agent_socket_path = dir + "/qga.sock";
  if (auto st = CheckSocketPath(d.guest_agent_socket_path); !st) return fail(std::move(st).error());
  if (const Json* tpm = Get(devices, "tpm")) {
    if (Bool(Get(tpm, "enabled"), true)) {
      d.tpm = vmm::TpmSpec{Bool(Get(tpm, "persistent"), false)};
    }
  }

  auto xml = vmm::DomainXml(d);
  if (!xml) return fail(std::move(xml).error());
  return plan;
}

Status PrepareVmiFiles(const VmiPlan& plan) {
  if (!IsCanonicalUuid(plan.uid) || fs::path(plan.dir).filename() != plan.uid) {
    return Invalid("prepare VMI files: plan dir \"" + plan.dir + "\" is not <vms_dir>/<uid>");
  }
  gid_t gid = 0;
  bool chown_group = !plan.qemu_group.empty();
  if (chown_group) {
    struct group grp {};
    struct group* found = nullptr;
    std::vector<char> buf(16384);
    int rc = ::getgrnam_r(plan.qemu_group.c_str(), &grp, buf.data(), buf.size(), &found);
    if (rc != 0 || found == nullptr) {
      return MakeError(Code::kUnavailable,
                       "prepare VMI files: group " + plan.qemu_group + " (QEMU's) does not exist");
    }
    gid = grp.gr_gid;
  }
  const std::string vms_dir = fs::path(plan.dir).parent_path().string();
  // QEMU (user nobody) must traverse <vms_dir> to reach its own directory; nothing secret is
  // listed there (directory names are UIDs), and each VMI's directory is closed to others.
  if (::mkdir(vms_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoError("mkdir " + vms_dir, errno);
  }
  RETURN_IF_ERROR(EnsureDir(plan.dir, 0750, gid, chown_group));
  RETURN_IF_ERROR(EnsureDir(plan.dir + "/vnc", 0770, gid, chown_group));
  for (const auto& t : plan.tasks) {
    if (Exists(t.path)) continue;
    Status st;
    switch (t.kind) {
      case VolumeTaskKind::kCloudInitNoCloud:
      case VolumeTaskKind::kCloudInitConfigDrive:
        st = MakeCloudInitIso(t);
        break;
      case VolumeTaskKind::kEmptyDisk:
        st = MakeEmptyDisk(t);
        break;
      case VolumeTaskKind::kHostDiskCreate:
        st = MakeHostDisk(t);
        break;
      case VolumeTaskKind::kEphemeralOverlay:
        st = MakeOverlay(t);
        break;
    }
    if (!st) return std::move(st).error().Wrap("prepare volume " + t.volume);
  }
  return Ok();
}

Status RemoveVmiFiles(const std::string& vms_dir, const std::string& uid) {
  if (!IsCanonicalUuid(uid)) return Invalid("remove VMI files: \"" + uid + "\" is not a UUID");
  if (vms_dir.empty() || vms_dir[0] != '/') {
    return Invalid("remove VMI files: \"" + vms_dir + "\" is not absolute");
  }
  std::error_code ec;
  fs::remove_all(fs::path(vms_dir) / uid, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return MakeError(Code::kInternal,
                     "remove " + (fs::path(vms_dir) / uid).string() + ": " + ec.message());
  }
  return Ok();
}

}  // namespace edgevirt::daemon
