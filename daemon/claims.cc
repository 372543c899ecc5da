#include "daemon/claims.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "api/machinery/codec.h"
#include "common/exec.h"
#include "common/fd.h"
#include "common/json_path.h"
#include "common/log.h"
#include "common/quantity.h"

namespace edgevirt::daemon {
namespace {

using api::Json;
using namespace std::chrono_literals;
using MonoClock = std::chrono::steady_clock;

constexpr char kClaimKind[] = "PersistentVolumeClaim";
constexpr uint64_t kWipeBytes = 1 << 20;
constexpr char kFieldManager[] = "edgevirtd-claims";

bool IsUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

// A namespace name: a DNS-1123 label (so also a safe path component).
bool IsDnsLabel(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

bool IsCleanAbsolute(std::string_view p) {
  if (p.size() < 2 || p[0] != '/' || p.back() == '/') return false;
  return std::filesystem::path(p).lexically_normal().string() == p &&
         p.find("//") == std::string_view::npos;
}

using jsonpath::At;
using jsonpath::Str;

std::string KindName(ClaimRecord::Kind k) {
  switch (k) {
    case ClaimRecord::Kind::kFiles:
      return "files";
    case ClaimRecord::Kind::kLvm:
      return "lvm";
    case ClaimRecord::Kind::kDevice:
      return "device";
  }
  return "files";
}

std::string FileName(const std::string& uid, const std::string& format) {
  return uid + (format == "qcow2" ? ".qcow2" : ".img");
}

std::string TempName(const std::string& uid) { return "." + uid + ".tmp"; }

// The size of a block device (BLKGETSIZE64), following symbolic links (/dev/disk/by-id/...).
Result<uint64_t> BlockDeviceSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoError("stat " + path, errno);
  if (!S_ISBLK(st.st_mode)) return MakeError(Code::kInvalid, path + " is not a block device");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open " + path, errno);
  uint64_t size = 0;
  if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) return ErrnoError("BLKGETSIZE64 " + path, errno);
  return size;
}

// The latest ProvisioningFailed/FailedBinding event message about the claim with `uid`.
std::string LatestFailure(const store::Store& store, const std::string& ns,
                          const std::string& uid) {
  store::ListOptions lo;
  lo.group = "";
  lo.kind = "Event";
  lo.ns = ns;
  auto events = store.List(lo);
  if (!events) return "";
  std::string best_time, best;
  for (const auto& rec : events->items) {
    auto decoded = api::machinery::DecodeRecord(rec);
    if (!decoded) continue;
    const Json& e = *decoded;
    if (Str(e, {"involvedObject", "uid"}) != uid) continue;
    const std::string reason = Str(e, {"reason"});
    if (reason != "ProvisioningFailed" && reason != "FailedBinding") continue;
    const std::string t = Str(e, {"lastTimestamp"});
    if (best.empty() || t >= best_time) {
      best_time = t;
      best = Str(e, {"message"});
    }
  }
  return best;
}

}  // namespace

// ---- records ------------------------------------------------------------------------------

std::string ClaimRecord::ToJson() const {
  Json j = {{"ns", ns},
            {"name", name},
            {"class", class_name},
            {"kind", KindName(kind)},
            {"path", path},
            {"capacity", capacity},
            {"block", block},
            {"state", state == State::kBound ? "bound" : "provisioning"}};
  if (!dir.empty()) j["dir"] = dir;
  if (!volume_group.empty()) j["vg"] = volume_group;
  if (!lv_name.empty()) j["lv"] = lv_name;
  if (!format.empty()) j["format"] = format;
  return j.dump();
}

Result<ClaimRecord> ClaimRecord::FromJson(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return MakeError(Code::kInternal, "claims record is not a JSON object");
  }
  ClaimRecord r;
  r.ns = j.value("ns", "");
  r.name = j.value("name", "");
  r.class_name = j.value("class", "");
  const std::string kind = j.value("kind", "");
  if (kind == "files") {
    r.kind = Kind::kFiles;
  } else if (kind == "lvm") {
    r.kind = Kind::kLvm;
  } else if (kind == "device") {
    r.kind = Kind::kDevice;
  } else {
    return MakeError(Code::kInternal, "claims record has an unknown kind \"" + kind + "\"");
  }
  r.path = j.value("path", "");
  r.dir = j.value("dir", "");
  r.volume_group = j.value("vg", "");
  r.lv_name = j.value("lv", "");
  if (auto c = j.find("capacity"); c != j.end() && c->is_number_unsigned()) {
    r.capacity = c->get<uint64_t>();
  }
  r.block = j.value("block", false);
  r.format = j.value("format", "");
  const std::string state = j.value("state", "");
  if (state == "bound") {
    r.state = State::kBound;
  } else if (state == "provisioning") {
    r.state = State::kProvisioning;
  } else {
    return MakeError(Code::kInternal, "claims record has an unknown state \"" + state + "\"");
  }
  if (r.path.empty() || !IsDnsLabel(r.ns) || r.name.empty()) {
    return MakeError(Code::kInternal, "claims record lacks its namespace, name or path");
  }
  return r;
}

std::vector<std::string> QemuImgCreateArgv(const std::string& format, const std::string& path,
                                           uint64_t bytes) {
  return {"qemu-img", "create", "-q", "-f", format, path, std::to_string(bytes)};
}

// -W y / -Z y: wipe signatures and zero the start, so an LV never shows a previous user's
// filesystem or partition table; -y answers lvcreate's questions (the daemon has no terminal).
std::vector<std::string> LvCreateArgv(const std::string& volume_group, const std::string& lv_name,
                                      uint64_t bytes) {
  return {"lvcreate", "-n", lv_name, "-L", std::to_string(bytes) + "b", volume_group, "-y",
          "-W",       "y",  "-Z",    "y"};
}

std::vector<std::string> LvRemoveArgv(const std::string& volume_group, const std::string& lv_name) {
  return {"lvremove", "-y", volume_group + "/" + lv_name};
}

std::string FormatCapacity(uint64_t bytes) {
  if (bytes == 0) return "0";
  static const char* kSuffixes[] = {"Ei", "Pi", "Ti", "Gi", "Mi", "Ki"};
  for (int i = 0; i < 6; ++i) {
    const int shift = 60 - 10 * i;
    const uint64_t unit = uint64_t{1} << shift;
    if (bytes % unit == 0) return std::to_string(bytes >> shift) + kSuffixes[i];
  }
  return std::to_string(bytes);
}

// ---- ResolveClaim -------------------------------------------------------------------------

Result<ClaimVolume> ResolveClaim(const store::Store& store, const std::string& ns,
                                 const std::string& name) {
  const std::string who = "persistentvolumeclaim " + ns + "/" + name;
  auto rec = store.Get(store::ObjectKey{"", kClaimKind, ns, name});
  if (!rec) {
    if (rec.error().code == Code::kNotFound) return MakeError(Code::kNotFound, who + " not found");
    return std::move(rec).error().Wrap("read " + who);
  }
  ASSIGN_OR_RETURN(Json claim, api::machinery::DecodeRecord(*rec));
  if (At(claim, {"metadata", "deletionTimestamp"}) != nullptr) {
    return MakeError(Code::kUnavailable, who + " is being deleted");
  }
  auto raw = store.GetRaw(kClaimsSpace, rec->uid);
  std::optional<ClaimRecord> record;
  if (raw) {
    auto parsed = ClaimRecord::FromJson(*raw);
    if (!parsed) return std::move(parsed).error().Wrap(who);
    record = std::move(*parsed);
  } else if (raw.error().code != Code::kNotFound) {
    return std::move(raw).error().Wrap("read the claims record of " + who);
  }
  if (!record || record->state != ClaimRecord::State::kBound) {
    std::string phase = Str(claim, {"status", "phase"});
    std::string why =
        record ? "its volume is being provisioned" : LatestFailure(store, ns, rec->uid);
    return MakeError(Code::kUnavailable, who + " is not bound yet (phase " +
                                             (phase.empty() ? std::string("Pending") : phase) +
                                             (why.empty() ? ")" : "): " + why));
  }
  ClaimVolume v;
  v.claim_uid = rec->uid;
  v.path = record->path;
  v.block = record->block;
  v.qcow2 = record->kind == ClaimRecord::Kind::kFiles && record->format == "qcow2";
  v.capacity_bytes = record->capacity;
  bool read_only = false, writable = false;
  if (const Json* modes = At(claim, {"spec", "accessModes"}); modes && modes->is_array()) {
    for (const Json& m : *modes) {
      if (m == "ReadOnlyMany") {
        read_only = true;
      } else {
        writable = true;
      }
    }
  }
  v.read_only_many = read_only && !writable;
  return v;
}

// ---- the controller -----------------------------------------------------------------------

class Claims::Impl {
 public:
  Impl(api::machinery::Machinery& machinery, api::machinery::EventRecorder* events,
       ClaimsOptions options)
      : registry_(machinery.registry()),
        store_(machinery.registry().store()),
        events_(events),
        options_(std::move(options)) {}

  Status Open();
  Status ReconcileKey(const std::string& key);  // "pvc/<ns>/<name>" or "rec/<uid>"
  void WatchLoop();
  void Stop();

  std::thread watcher_;

 private:
  void EnqueueAll();
  Status ReconcileClaim(const std::string& ns, const std::string& name);
  Status ReconcileRecord(const std::string& uid);
  // Picks the volume for a claim without a record; nullopt (after an event) when it cannot.
  Result<std::optional<ClaimRecord>> Plan(const Json& claim, const std::string& uid);
  Status Create(const std::string& uid, ClaimRecord& record);
  Status CreateFile(const std::string& uid, ClaimRecord& record);
  Status CreateLv(ClaimRecord& record);
  Status Bind(const Json& claim, const std::string& uid, const ClaimRecord& record);
  Status Release(const std::string& uid, const ClaimRecord& record);
  Result<bool> LvExists(const std::string& vg, const std::string& lv);
  Result<std::map<std::string, ClaimRecord>> Records();
  Result<std::optional<ClaimRecord>> LoadRecord(const std::string& uid);
  Status SaveRecord(const std::string& uid, const ClaimRecord& record);
  // A Warning event (ProvisioningFailed unless `reason` says otherwise) and a log line, once
  // per distinct message per claim.
  void Pending(const Json& claim, const std::string& message,
               const std::string& reason = "ProvisioningFailed");
  const StorageClass* FindClass(const std::string& name) const;
  ExecOptions ExecOpts() const {
    ExecOptions o;
    o.timeout = options_.exec_timeout;
    return o;
  }

  api::machinery::Registry& registry_;
  store::Store& store_;
  api::machinery::EventRecorder* events_;
  ClaimsOptions options_;
  const api::ResourceType* claim_rt_ = nullptr;
  gid_t qemu_gid_ = 0;
  std::unique_ptr<store::Watch> watch_;
  std::map<std::string, std::string> last_failure_;  // worker thread only: uid → message

 public:
  ReconcileLoop loop_{"claims", [this](const std::string& key) { return ReconcileKey(key); },
                      [this] { EnqueueAll(); }, options_.resync_period};

 private:
  WorkQueue& queue_ = loop_.queue();
};

const StorageClass* Claims::Impl::FindClass(const std::string& name) const {
  for (const auto& c : options_.classes) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

Status Claims::Impl::Open() {
  claim_rt_ = registry_.ByKind("", kClaimKind);
  if (claim_rt_ == nullptr) {
    return MakeError(Code::kInvalid, "claims: core/v1 PersistentVolumeClaim is not served");
  }
  std::string group = options_.qemu_group;
  if (group.empty()) {
    // The group the controller runs QEMU with (vmm's choice): kvm, else Debian's nogroup;
    // AlmaLinux has neither without qemu-kvm, but has nobody.
    for (const char* candidate : {"kvm", "nogroup", "nobody"}) {
      if (::getgrnam(candidate) != nullptr) {
        group = candidate;
        break;
      }
    }
  }
  {
    struct group grp {};
    struct group* found = nullptr;
    std::vector<char> buf(16384);
    if (::getgrnam_r(group.c_str(), &grp, buf.data(), buf.size(), &found) != 0 || !found) {
      return MakeError(Code::kInvalid, "claims: group " + group + " (QEMU's) does not exist");
    }
    qemu_gid_ = grp.gr_gid;
  }
  for (auto& c : options_.classes) {
    if (c.type != StorageClass::Type::kFiles) continue;
    if (!IsCleanAbsolute(c.dir)) {
      return MakeError(Code::kInvalid, "storage class " + c.name + ": dir \"" + c.dir +
                                           "\" is not a clean absolute path");
    }
    std::error_code ec;
    if (!std::filesystem::exists(c.dir, ec)) {
      std::filesystem::create_directories(c.dir, ec);
      if (ec) return MakeError(Code::kInternal, "create " + c.dir + ": " + ec.message());
      // QEMU (unprivileged) must traverse it to its image; the names below are UIDs.
      if (::chmod(c.dir.c_str(), 0711) != 0) return ErrnoError("chmod " + c.dir, errno);
      EV_LOG(kInfo).Field("DIRECTORY", c.dir)
          << "created the directory of storage class " << c.name;
    }
    // The class directory may be a symbolic link the administrator made; below it nothing is
    // followed, so it is resolved once here.
    auto real = std::filesystem::canonical(c.dir, ec);
    if (ec) return MakeError(Code::kInternal, "resolve " + c.dir + ": " + ec.message());
    if (!std::filesystem::is_directory(real, ec)) {
      return MakeError(Code::kInvalid,
                       "storage class " + c.name + ": " + c.dir + " is not a directory");
    }
    c.dir = real.string();
  }

  // Watch first, then list: nothing that changes in between is missed.
  store::WatchOptions wo;
  wo.group = "";
  wo.kind = kClaimKind;
  wo.from_rv = store_.CurrentResourceVersion();
  ASSIGN_OR_RETURN(watch_, store_.StartWatch(wo));
  EnqueueAll();
  return Ok();
}

void Claims::Impl::EnqueueAll() {
  api::machinery::ListQuery all;
  if (auto claims = registry_.List(*claim_rt_, all)) {
    for (const auto& rec : claims->items) queue_.Add("pvc/" + rec.key.ns + "/" + rec.key.name);
  } else {
    EV_LOG(kWarning) << "claims: list claims: " << claims.error().message;
  }
  if (auto records = store_.ListRaw(kClaimsSpace, "")) {
    for (const auto& [uid, value] : *records) queue_.Add("rec/" + uid);
  } else {
    EV_LOG(kWarning) << "claims: list records: " << records.error().message;
  }
}

void Claims::Impl::WatchLoop() {
  while (!loop_.stopping()) {
    auto next = watch_->Next(500ms);
    if (!next) {
      if (loop_.stopping()) return;
      EV_LOG(kWarning) << "claims: store watch broken (" << next.error().message << "); resyncing";
      store::WatchOptions wo;
      wo.group = "";
      wo.kind = kClaimKind;
      wo.from_rv = store_.CurrentResourceVersion();
      auto w = store_.StartWatch(wo);
      if (!w) {
        loop_.SleepFor(1s);
        continue;
      }
      watch_ = std::move(*w);
      EnqueueAll();
      continue;
    }
    if (!next->has_value()) continue;
    const store::Event& e = **next;
    if (e.type == store::EventType::kDeleted) {
      queue_.Add("rec/" + e.object.uid);
    } else {
      queue_.Add("pvc/" + e.object.key.ns + "/" + e.object.key.name);
    }
  }
}

Status Claims::Impl::ReconcileKey(const std::string& key) {
  if (key.rfind("rec/", 0) == 0) return ReconcileRecord(key.substr(4));
  const size_t a = key.find('/');
  const size_t b = key.find('/', a + 1);
  return ReconcileClaim(key.substr(a + 1, b - a - 1), key.substr(b + 1));
}

void Claims::Impl::Stop() {
  loop_.Stop();
  if (watcher_.joinable()) watcher_.join();
}

Result<std::optional<ClaimRecord>> Claims::Impl::LoadRecord(const std::string& uid) {
  auto raw = store_.GetRaw(kClaimsSpace, uid);
  if (!raw) {
    if (raw.error().code == Code::kNotFound) return std::optional<ClaimRecord>();
    return std::move(raw).error();
  }
  ASSIGN_OR_RETURN(ClaimRecord r, ClaimRecord::FromJson(*raw));
  return std::optional<ClaimRecord>(std::move(r));
}

Status Claims::Impl::SaveRecord(const std::string& uid, const ClaimRecord& record) {
  return store_.PutRaw(kClaimsSpace, uid, record.ToJson());
}

Result<std::map<std::string, ClaimRecord>> Claims::Impl::Records() {
  ASSIGN_OR_RETURN(auto raw, store_.ListRaw(kClaimsSpace, ""));
  std::map<std::string, ClaimRecord> out;
  for (const auto& [uid, value] : raw) {
    auto r = ClaimRecord::FromJson(value);
    if (!r) {
      EV_LOG(kError).Field("CLAIM_UID", uid)
          << "claims record " << uid << ": " << r.error().message;
      continue;
    }
    out.emplace(uid, std::move(*r));
  }
  return out;
}

void Claims::Impl::Pending(const Json& claim, const std::string& message,
                           const std::string& reason) {
  const std::string uid = Str(claim, {"metadata", "uid"});
  auto [it, inserted] = last_failure_.try_emplace(uid, message);
  if (!inserted && it->second == message) return;
  it->second = message;
  const std::string ns = Str(claim, {"metadata", "namespace"});
  const std::string name = Str(claim, {"metadata", "name"});
  EV_LOG(kWarning).Field("CLAIM_NAMESPACE", ns).Field("CLAIM_NAME", name).Field("CLAIM_UID", uid)
      << "claim " << ns << "/" << name << " stays Pending: " << message;
  if (events_ != nullptr) {
    events_->Record(api::machinery::ReferenceTo(claim),
                    reason == "FailedBinding" ? api::machinery::EventType::kNormal
                                              : api::machinery::EventType::kWarning,
                    reason, message);
  }
}

Status Claims::Impl::ReconcileClaim(const std::string& ns, const std::string& name) {
  auto got = registry_.GetObject(*claim_rt_, ns, name);
  if (!got) {
    if (got.error().code == 404) return Ok();  // released through its record
    return got.error().ToError();
  }
  const Json& claim = *got;
  if (At(claim, {"metadata", "deletionTimestamp"}) != nullptr) return Ok();
  const std::string uid = Str(claim, {"metadata", "uid"});
  if (!IsUuid(uid) || !IsDnsLabel(ns)) {
    return MakeError(Code::kInternal,
                     "claim " + ns + "/" + name + " has a malformed uid or namespace");
  }
  ASSIGN_OR_RETURN(std::optional<ClaimRecord> record, LoadRecord(uid));
  if (!record) {
    ASSIGN_OR_RETURN(record, Plan(claim, uid));
    if (!record) return Ok();  // Pending; the event says why
    // The allocation is durable before anything is made on the host.
    RETURN_IF_ERROR(SaveRecord(uid, *record));
    EV_LOG(kInfo).Field("CLAIM_NAMESPACE", ns).Field("CLAIM_NAME", name).Field("CLAIM_UID", uid)
        << "provisioning claim " << ns << "/" << name << " from class " << record->class_name
        << ": " << record->path;
  }
  if (record->state == ClaimRecord::State::kProvisioning) {
    if (Status s = Create(uid, *record); !s) {
      Pending(claim, "failed to provision volume with StorageClass \"" + record->class_name +
                         "\": " + s.error().message);
      return s;
    }
    record->state = ClaimRecord::State::kBound;
    RETURN_IF_ERROR(SaveRecord(uid, *record));
  }
  return Bind(claim, uid, *record);
}

Result<std::optional<ClaimRecord>> Claims::Impl::Plan(const Json& claim, const std::string& uid) {
  using Nothing = std::optional<ClaimRecord>;
  const std::string ns = Str(claim, {"metadata", "namespace"});
  if (const std::string volume = Str(claim, {"spec", "volumeName"}); !volume.empty()) {
    Pending(claim,
            "volume \"" + volume +
                "\" not found: edgevirt provisions every volume itself; "
                "create the claim without spec.volumeName",
            "FailedBinding");
    return Nothing();
  }
  const std::string class_name = api::machinery::ClaimClass(claim);
  if (class_name.empty()) {
    Pending(claim, "no persistent volumes available for this claim and no storage class is set",
            "FailedBinding");
    return Nothing();
  }
  const StorageClass* cls = FindClass(class_name);
  if (cls == nullptr) {
    Pending(claim, "storageclass.storage.k8s.io \"" + class_name + "\" not found");
    return Nothing();
  }
  if (At(claim, {"spec", "selector"}) != nullptr) {
    Pending(claim, "failed to provision volume with StorageClass \"" + class_name +
                       "\": claim Selector is not supported");
    return Nothing();
  }
  if (At(claim, {"spec", "dataSource"}) != nullptr ||
      At(claim, {"spec", "dataSourceRef"}) != nullptr) {
    Pending(claim, "failed to provision volume with StorageClass \"" + class_name +
                       "\": edgevirt cannot populate a volume from a data source");
    return Nothing();
  }
  auto q = Quantity::Parse(Str(claim, {"spec", "resources", "requests", "storage"}));
  if (!q || q->Value() <= 0) {
    Pending(claim, "spec.resources.requests.storage is missing or not positive");
    return Nothing();
  }
  const uint64_t requested = static_cast<uint64_t>(q->Value());

  ClaimRecord r;
  r.ns = ns;
  r.name = Str(claim, {"metadata", "name"});
  r.class_name = class_name;
  if (cls->type == StorageClass::Type::kFiles) {
    r.kind = ClaimRecord::Kind::kFiles;
    r.dir = cls->dir;
    r.format = cls->format == StorageClass::Format::kQcow2 ? "qcow2" : "raw";
    r.path = cls->dir + "/" + ns + "/" + FileName(uid, r.format);
    // qemu-img sizes images in whole 512-byte sectors.
    if (requested > UINT64_MAX - 511) {
      Pending(claim, "requested size is too large");
      return Nothing();
    }
    r.capacity = (requested + 511) / 512 * 512;
    return std::optional<ClaimRecord>(std::move(r));
  }
  r.block = true;
  if (!cls->volume_group.empty()) {
    r.kind = ClaimRecord::Kind::kLvm;
    r.volume_group = cls->volume_group;
    r.lv_name = "edgevirt-" + uid;
    r.path = "/dev/" + cls->volume_group + "/" + r.lv_name;
    r.capacity = requested;
    return std::optional<ClaimRecord>(std::move(r));
  }
  // A listed device: the smallest free one that is large enough.
  ASSIGN_OR_RETURN(auto records, Records());
  std::map<std::string, std::string> taken;  // device → "ns/name"
  for (const auto& [other_uid, other] : records) {
    if (other.kind == ClaimRecord::Kind::kDevice) taken[other.path] = other.ns + "/" + other.name;
  }
  std::optional<std::pair<uint64_t, std::string>> best;
  std::string why;
  for (const auto& device : cls->devices) {
    std::string note;
    if (auto t = taken.find(device); t != taken.end()) {
      note = device + " is used by claim " + t->second;
    } else if (auto size = BlockDeviceSize(device); !size) {
      note = size.error().message;
    } else if (*size < requested) {
      note = device + " has " + std::to_string(*size) + " bytes";
    } else {
      // An exclusive open fails while the device is mounted or held by another driver.
      UniqueFd fd(::open(device.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
      if (!fd) {
        note = device + " is busy (" + std::strerror(errno) + ")";
      } else if (!best || *size < best->first) {
        best = std::make_pair(*size, device);
      }
    }
    if (!note.empty()) why += (why.empty() ? "" : "; ") + note;
  }
  if (!best) {
    Pending(claim, "failed to provision volume with StorageClass \"" + class_name +
                       "\": no free device of at least " + std::to_string(requested) + " bytes (" +
                       why + ")");
    return Nothing();
  }
  r.kind = ClaimRecord::Kind::kDevice;
  r.path = best->second;
  r.capacity = best->first;
  return std::optional<ClaimRecord>(std::move(r));
}

Status Claims::Impl::Create(const std::string& uid, ClaimRecord& record) {
  switch (record.kind) {
    case ClaimRecord::Kind::kFiles:
      return CreateFile(uid, record);
    case ClaimRecord::Kind::kLvm:
      return CreateLv(record);
    case ClaimRecord::Kind::kDevice: {
      // Nothing to make; the device must still be there and large enough.
      ASSIGN_OR_RETURN(uint64_t size, BlockDeviceSize(record.path));
      record.capacity = size;
      return Ok();
    }
  }
  return Ok();
}

Status Claims::Impl::CreateFile(const std::string& uid, ClaimRecord& record) {
  if (!IsCleanAbsolute(record.dir) ||
      record.path != record.dir + "/" + record.ns + "/" + FileName(uid, record.format)) {
    return MakeError(Code::kInternal,
                     "claims record of " + uid + " has an unexpected path " + record.path);
  }
  UniqueFd dir(::open(record.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return ErrnoError("open " + record.dir, errno);
  // <dir>/<ns>: a real directory (never a symbolic link), root:<qemu group> 0750.
  if (::mkdirat(dir.get(), record.ns.c_str(), 0750) != 0 && errno != EEXIST) {
    return ErrnoError("mkdir " + record.dir + "/" + record.ns, errno);
  }
  UniqueFd ns_dir(
      ::openat(dir.get(), record.ns.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!ns_dir) return ErrnoError("open " + record.dir + "/" + record.ns, errno);
  // Only root can give files away; an unprivileged daemon (development) keeps its own.
  const bool chown_group = ::geteuid() == 0;
  if ((chown_group && ::fchown(ns_dir.get(), 0, qemu_gid_) != 0) ||
      ::fchmod(ns_dir.get(), 0750) != 0) {
    return ErrnoError("chown " + record.dir + "/" + record.ns, errno);
  }
  const std::string file = FileName(uid, record.format);
  struct stat st {};
  if (::fstatat(ns_dir.get(), file.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISREG(st.st_mode)) {
      return MakeError(Code::kInternal, record.path + " exists and is not a regular file");
    }
    // Renamed into place only once complete: it is ours and done (a crash after the rename).
    ::unlinkat(ns_dir.get(), TempName(uid).c_str(), 0);
    return Ok();
  }
  const std::string tmp = TempName(uid);
  ::unlinkat(ns_dir.get(), tmp.c_str(), 0);  // a leftover of a crash mid-create
  const std::string tmp_path = record.dir + "/" + record.ns + "/" + tmp;
  RETURN_IF_ERROR(ExecChecked(QemuImgCreateArgv(record.format, tmp_path, record.capacity),
                              ExecOpts(), "qemu-img create " + tmp_path));
  {
    UniqueFd fd(::openat(ns_dir.get(), tmp.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return ErrnoError("open " + tmp_path, errno);
    if (chown_group && ::fchown(fd.get(), 0, qemu_gid_) != 0) {
      return ErrnoError("chown " + tmp_path, errno);
    }
    if (::fchmod(fd.get(), 0660) != 0) return ErrnoError("chmod " + tmp_path, errno);
    if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + tmp_path, errno);
  }
  if (::renameat(ns_dir.get(), tmp.c_str(), ns_dir.get(), file.c_str()) != 0) {
    return ErrnoError("rename " + tmp_path, errno);
  }
  if (::fsync(ns_dir.get()) != 0) return ErrnoError("fsync " + record.dir + "/" + record.ns, errno);
  return Ok();
}

Result<bool> Claims::Impl::LvExists(const std::string& vg, const std::string& lv) {
  ASSIGN_OR_RETURN(
      ExecResult r,
      edgevirt::Exec({"lvs", "--noheadings", "-o", "lv_name", vg + "/" + lv}, ExecOpts()));
  if (r.ok()) return true;
  if (r.timed_out) return MakeError(Code::kTimeout, "lvs " + vg + "/" + lv + ": timed out");
  // lvs exits 5 for a missing LV (and a missing VG, which lvcreate/lvremove then report).
  return false;
}

Status Claims::Impl::CreateLv(ClaimRecord& record) {
  ASSIGN_OR_RETURN(bool exists, LvExists(record.volume_group, record.lv_name));
  if (!exists) {
    RETURN_IF_ERROR(ExecChecked(LvCreateArgv(record.volume_group, record.lv_name, record.capacity),
                                ExecOpts(),
                                "lvcreate " + record.volume_group + "/" + record.lv_name));
  }
  // The actual size: LVM rounds up to whole extents.
  ASSIGN_OR_RETURN(ExecResult r,
                   ExecChecked({"lvs", "--noheadings", "--nosuffix", "--units", "b", "-o",
                                "lv_size", record.volume_group + "/" + record.lv_name},
                               ExecOpts()));
  std::string text = r.stdout_text;
  text.erase(
      std::remove_if(text.begin(), text.end(),
                     [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }),
      text.end());
  char* end = nullptr;
  errno = 0;
  const unsigned long long size = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || *end != '\0') {
    return MakeError(Code::kInternal, "lvs: unexpected size \"" + r.stdout_text + "\"");
  }
  record.capacity = size;
  return Ok();
}

Status Claims::Impl::Bind(const Json& claim, const std::string& uid, const ClaimRecord& record) {
  const std::string ns = Str(claim, {"metadata", "namespace"});
  const std::string name = Str(claim, {"metadata", "name"});
  const std::string volume = "pvc-" + uid;
  api::machinery::WriteOptions wo;
  wo.admit = false;
  wo.field_manager = kFieldManager;
  const std::string current = Str(claim, {"spec", "volumeName"});
  if (!current.empty() && current != volume) {
    Pending(claim, "the claim names volume \"" + current + "\" but edgevirt provisioned " + volume);
    return Ok();
  }
  bool newly_bound = false;
  if (current.empty() ||
      Str(claim, {"metadata", "annotations", "pv.kubernetes.io/bind-completed"}) != "yes") {
    auto written = registry_.Mutate(
        *claim_rt_, ns, name, false,
        [&](Json& o) -> Status {
          if (Str(o, {"metadata", "uid"}) != uid) {
            return MakeError(Code::kConflict, "claim was replaced");
          }
          o["spec"]["volumeName"] = volume;
          Json& annotations = o["metadata"]["annotations"];
          if (!annotations.is_object()) annotations = Json::object();
          annotations["pv.kubernetes.io/bind-completed"] = "yes";
          annotations["pv.kubernetes.io/bound-by-controller"] = "yes";
          return Ok();
        },
        wo);
    if (!written) {
      if (written.error().code == 404) return Ok();
      return written.error().ToError().Wrap("bind claim " + ns + "/" + name);
    }
    newly_bound = true;
  }
  Json status =
      claim.contains("status") && claim["status"].is_object() ? claim["status"] : Json::object();
  Json desired = status;
  desired["phase"] = "Bound";
  desired["accessModes"] =
      At(claim, {"spec", "accessModes"}) ? claim["spec"]["accessModes"] : Json::array();
  desired["capacity"] = {{"storage", FormatCapacity(record.capacity)}};
  if (desired != status) {
    auto written = registry_.Mutate(
        *claim_rt_, ns, name, true,
        [&](Json& o) -> Status {
          if (Str(o, {"metadata", "uid"}) != uid) {
            return MakeError(Code::kConflict, "claim was replaced");
          }
          Json& s = o["status"];
          if (!s.is_object()) s = Json::object();
          s["phase"] = "Bound";
          s["accessModes"] = desired["accessModes"];
          s["capacity"] = desired["capacity"];
          return Ok();
        },
        wo);
    if (!written) {
      if (written.error().code == 404) return Ok();
      return written.error().ToError().Wrap("write the status of claim " + ns + "/" + name);
    }
    newly_bound = true;
  }
  if (newly_bound) {
    last_failure_.erase(uid);
    EV_LOG(kInfo).Field("CLAIM_NAMESPACE", ns).Field("CLAIM_NAME", name).Field("CLAIM_UID", uid)
        << "claim " << ns << "/" << name << " bound to " << volume << " (" << record.path << ", "
        << FormatCapacity(record.capacity) << ")";
    if (events_ != nullptr) {
      events_->Record(api::machinery::ReferenceTo(claim), api::machinery::EventType::kNormal,
                      "ProvisioningSucceeded", "Successfully provisioned volume " + volume);
    }
  }
  return Ok();
}

Status Claims::Impl::ReconcileRecord(const std::string& uid) {
  ASSIGN_OR_RETURN(std::optional<ClaimRecord> record, LoadRecord(uid));
  if (!record) return Ok();
  auto claim = store_.Get(store::ObjectKey{"", kClaimKind, record->ns, record->name});
  if (claim) {
    if (claim->uid == uid) {
      queue_.Add("pvc/" + record->ns + "/" + record->name);
      return Ok();
    }
  } else if (claim.error().code != Code::kNotFound) {
    return std::move(claim).error();
  }
  RETURN_IF_ERROR(Release(uid, *record));
  // A freed device may be what a Pending claim waits for.
  if (record->kind == ClaimRecord::Kind::kDevice) EnqueueAll();
  return Ok();
}

Status Claims::Impl::Release(const std::string& uid, const ClaimRecord& record) {
  const std::string who = record.ns + "/" + record.name + " (" + uid + ")";
  switch (record.kind) {
    case ClaimRecord::Kind::kFiles: {
      if (!IsUuid(uid) || !IsCleanAbsolute(record.dir) ||
          (record.format != "qcow2" && record.format != "raw") ||
          record.path != record.dir + "/" + record.ns + "/" + FileName(uid, record.format)) {
        return MakeError(Code::kInternal,
                         "release claim " + who + ": refusing the unexpected path " + record.path);
      }
      UniqueFd dir(::open(record.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!dir) {
        if (errno != ENOENT) return ErrnoError("open " + record.dir, errno);
        break;
      }
      UniqueFd ns_dir(
          ::openat(dir.get(), record.ns.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!ns_dir) {
        if (errno != ENOENT) return ErrnoError("open " + record.dir + "/" + record.ns, errno);
        break;
      }
      for (const std::string& f : {FileName(uid, record.format), TempName(uid)}) {
        if (::unlinkat(ns_dir.get(), f.c_str(), 0) != 0 && errno != ENOENT) {
          return ErrnoError("remove " + record.dir + "/" + record.ns + "/" + f, errno);
        }
      }
      if (::fsync(ns_dir.get()) != 0)
        return ErrnoError("fsync " + record.dir + "/" + record.ns, errno);
      ns_dir.reset();
      ::unlinkat(dir.get(), record.ns.c_str(), AT_REMOVEDIR);  // when it is empty
      break;
    }
    case ClaimRecord::Kind::kLvm: {
      if (record.lv_name != "edgevirt-" + uid) {
        return MakeError(Code::kInternal,
                         "release claim " + who + ": refusing the unexpected LV " + record.lv_name);
      }
      ASSIGN_OR_RETURN(bool exists, LvExists(record.volume_group, record.lv_name));
      if (exists) {
        RETURN_IF_ERROR(ExecChecked(LvRemoveArgv(record.volume_group, record.lv_name), ExecOpts(),
                                    "lvremove " + record.volume_group + "/" + record.lv_name));
      }
      break;
    }
    case ClaimRecord::Kind::kDevice: {
      // Only a device the configuration still lists is wiped: one that left every class may
      // belong to something else by now.
      bool listed = false;
      for (const auto& c : options_.classes) {
        listed |= std::find(c.devices.begin(), c.devices.end(), record.path) != c.devices.end();
      }
      if (!listed) {
        EV_LOG(kWarning).Field("CLAIM_UID", uid)
            << "claim " << who << " is gone; its device " << record.path
            << " is no longer listed in a storage class and is left as it is (not wiped)";
        break;
      }
      ASSIGN_OR_RETURN(uint64_t size, BlockDeviceSize(record.path));
      UniqueFd fd(::open(record.path.c_str(), O_WRONLY | O_EXCL | O_CLOEXEC));
      if (!fd) return ErrnoError("open " + record.path + " to wipe it", errno);
      const std::vector<char> zeros(static_cast<size_t>(std::min(size, kWipeBytes)), 0);
      RETURN_IF_ERROR(WriteAllAt(fd.get(), zeros.data(), zeros.size(), 0, record.path));
      if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + record.path, errno);
      break;
    }
  }
  RETURN_IF_ERROR(store_.DeleteRaw(kClaimsSpace, uid));
  last_failure_.erase(uid);
  EV_LOG(kInfo)
          .Field("CLAIM_NAMESPACE", record.ns)
          .Field("CLAIM_NAME", record.name)
          .Field("CLAIM_UID", uid)
      << "released the volume of deleted claim " << who << ": " << record.path;
  return Ok();
}

// ---- Claims -------------------------------------------------------------------------------

Claims::Claims(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Claims::~Claims() { Stop(); }

Result<std::unique_ptr<Claims>> Claims::Start(api::machinery::Machinery& machinery,
                                              api::machinery::EventRecorder* events,
                                              ClaimsOptions options) {
  auto impl = std::make_unique<Impl>(machinery, events, std::move(options));
  RETURN_IF_ERROR(impl->Open());
  Impl* p = impl.get();
  p->loop_.Start();
  p->watcher_ = std::thread([p] { p->WatchLoop(); });
  return std::unique_ptr<Claims>(new Claims(std::move(impl)));
}

void Claims::Stop() {
  if (impl_) impl_->Stop();
}

bool Claims::WaitIdleForTest(std::chrono::milliseconds timeout) {
  return impl_->loop_.WaitIdle(timeout);
}

}  // namespace edgevirt::daemon
