#include "daemon/isolation.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "api/kubevirt/quantity.h"
#include "common/fault.h"
#include "common/fd.h"
#include "common/log.h"

namespace edgevirt::daemon {
namespace {

namespace fs = std::filesystem;
using api::kubevirt::Quantity;

constexpr const char* kSpace = "devices";
constexpr uint64_t kMiB = 1024 * 1024;

const Json* Get(const Json* j, const char* key) {
  if (j == nullptr || !j->is_object()) return nullptr;
  auto it = j->find(key);
  return it == j->end() || it->is_null() ? nullptr : &*it;
}

std::string GrantKey(const std::string& uid, const std::string& volume) {
  return uid + "/grant/" + volume;
}

Status CheckUid(const std::string& uid) {
  if (!IsCanonicalUuid(uid)) {
    return MakeError(Code::kInvalid, "\"" + uid + "\" is not a canonical VMI uid");
  }
  return Ok();
}

std::string ReadBootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

Result<GrantState> ParseState(const std::string& s) {
  if (s == "pending-add") return GrantState::kPendingAdd;
  if (s == "active") return GrantState::kActive;
  if (s == "pending-remove") return GrantState::kPendingRemove;
  return MakeError(Code::kInternal, "unknown grant state \"" + s + "\"");
}

Result<GrantRecord> DecodeGrant(const std::string& volume, const std::string& value) {
  Json j = Json::parse(value, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return MakeError(Code::kInternal, "grant record of " + volume + " is not JSON");
  }
  GrantRecord g;
  g.volume = volume;
  g.path = j.value("path", "");
  ASSIGN_OR_RETURN(g.rule, cgroup::ParseRuleKey(j.value("rule", ""), j.value("access", 0u)));
  ASSIGN_OR_RETURN(g.state, ParseState(j.value("state", "")));
  return g;
}

// Merges rules with the same (type, major, minor), OR-ing their access.
std::vector<cgroup::DeviceRule> Merge(std::vector<cgroup::DeviceRule> rules) {
  std::map<std::tuple<uint32_t, uint32_t, uint32_t>, uint32_t> acc;
  for (const auto& r : rules) {
    acc[{static_cast<uint32_t>(r.type), r.major, r.minor}] |= r.access;
  }
  std::vector<cgroup::DeviceRule> out;
  for (const auto& [k, a] : acc) {
    out.push_back(
        {static_cast<cgroup::DeviceType>(std::get<0>(k)), std::get<1>(k), std::get<2>(k), a});
  }
  return out;
}

// Read, plus write unless the grant is read-only. No mknod: QEMU opens existing nodes.
uint32_t GrantAccess(const DeviceGrant& g) {
  return static_cast<uint32_t>(cgroup::kRead) |
         (g.write ? static_cast<uint32_t>(cgroup::kWrite) : 0u);
}

bool SameDevice(const cgroup::DeviceRule& a, const cgroup::DeviceRule& b) {
  return a.type == b.type && a.major == b.major && a.minor == b.minor;
}

// Quantity text at `j` (string or integer), nullopt when absent.
Result<std::optional<Quantity>> Qty(const Json* j, const std::string& field) {
  if (j == nullptr) return std::optional<Quantity>();
  std::string text = j->is_string()           ? j->get<std::string>()
                     : j->is_number_integer() ? std::to_string(j->get<int64_t>())
                                              : "";
  auto q = Quantity::Parse(text);
  if (!q || q->IsNegative()) {
    return MakeError(Code::kInvalid, field + ": \"" + text + "\" is not a quantity");
  }
  return std::optional<Quantity>(*q);
}

// The pin root's parent must be bpffs. systemd mounts it at /sys/fs/bpf at boot; a host
// without it (some containers) gets it mounted here the same way, anywhere else is an error.
Status EnsureBpffs(const fs::path& parent) {
  auto on = cgroup::IsBpffs(parent);
  if (on && *on) return Ok();
  if (parent == "/sys/fs/bpf") {
    // Serialised with other edgevirtd processes starting at the same moment (a lock on the
    // directory under the mount point): a second mount on top would hide the first's pins.
    UniqueFd dir(::open("/sys/fs/bpf", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir || ::flock(dir.get(), LOCK_EX) != 0) return ErrnoError("lock /sys/fs/bpf", errno);
    on = cgroup::IsBpffs(parent);
    if (on && *on) return Ok();
    if (::mount("bpf", "/sys/fs/bpf", "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") != 0) {
      return ErrnoError("mount bpffs on /sys/fs/bpf (the device filters are pinned there)", errno);
    }
    EV_LOG(kNotice) << "mounted bpffs on /sys/fs/bpf (the host had none)";
    return Ok();
  }
  return MakeError(Code::kUnavailable, "cgroups.bpfRoot: " + parent.string() +
                                           " is not on bpffs (mount -t bpf bpf " + parent.string() +
                                           ")");
}

}  // namespace

std::string_view GrantStateName(GrantState s) {
  switch (s) {
    case GrantState::kPendingAdd:
      return "pending-add";
    case GrantState::kActive:
      return "active";
    case GrantState::kPendingRemove:
      return "pending-remove";
  }
  return "?";
}

Result<std::unique_ptr<Isolation>> Isolation::Open(IsolationOptions options) {
  if (options.store == nullptr) return MakeError(Code::kInvalid, "isolation: no store");
  if (options.bpf_root.empty() || options.bpf_root[0] != '/') {
    return MakeError(Code::kInvalid,
                     "isolation: bpf root \"" + options.bpf_root + "\" is not absolute");
  }
  std::unique_ptr<Isolation> iso(new Isolation(std::move(options)));
  ASSIGN_OR_RETURN(fs::path mount, cgroup::FindCgroup2Mount());
  fs::path base;
  const std::string& configured = iso->options_.cgroup_root;
  if (!configured.empty()) {
    fs::path p(configured);
    auto rel = p.lexically_relative(mount);
    if (p.is_absolute() && !rel.empty() && *rel.begin() != "..") {
      base = p;
    } else {
      base = mount / p.relative_path();
    }
    if (base.lexically_normal().string().find("/..") != std::string::npos) {
      return MakeError(Code::kInvalid, "cgroups.root \"" + configured + "\" escapes the mount");
    }
  } else if (::getenv("INVOCATION_ID") != nullptr) {
    // A systemd service with Delegate=yes owns its cgroup: move into a leaf (a cgroup with
    // children may hold no processes once controllers are enabled) and put VMs beside it.
    ASSIGN_OR_RETURN(std::string own, cgroup::OwnCgroup());
    if (own == "/") {
      base = mount / "edgevirt";
    } else {
      base = mount / fs::path(own).relative_path();
      RETURN_IF_ERROR(cgroup::CreateCgroup(base / "daemon"));
      RETURN_IF_ERROR(cgroup::MovePid(base / "daemon", ::getpid()));
    }
  } else {
    base = mount / "edgevirt";
  }
  RETURN_IF_ERROR(cgroup::CreateCgroup(base));
  const std::set<std::string> wanted = {"cpu", "memory", "pids", "io"};
  RETURN_IF_ERROR(cgroup::EnableControllers(base, wanted));
  iso->root_ = base / "vms";
  RETURN_IF_ERROR(cgroup::CreateCgroup(iso->root_));
  RETURN_IF_ERROR(cgroup::EnableControllers(iso->root_, wanted));
  RETURN_IF_ERROR(EnsureBpffs(fs::path(iso->options_.bpf_root).parent_path()));
  if (::mkdir(iso->options_.bpf_root.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("mkdir " + iso->options_.bpf_root, errno);
  }
  iso->boot_id_ = ReadBootId();
  auto available = cgroup::AvailableControllers(iso->root_);
  std::string missing;
  for (const auto& c : wanted) {
    if (!available || !available->count(c)) missing += (missing.empty() ? "" : ", ") + c;
  }
  EV_LOG(kInfo).Field("CGROUP", iso->root_.string())
      << "VM cgroups under " << iso->root_.string() << ", device filters pinned under "
      << iso->options_.bpf_root
      << (missing.empty() ? ""
                          : "; controllers not available here (limits not enforced): " + missing);
  return iso;
}

fs::path Isolation::VmCgroup(const std::string& uid) const { return root_ / uid; }
fs::path Isolation::PinDir(const std::string& uid) const {
  return fs::path(options_.bpf_root) / uid;
}

Status Isolation::WriteGrant(const std::string& uid, const GrantRecord& g) {
  Json j = {{"path", g.path},
            {"rule", cgroup::RuleKey(g.rule)},
            {"access", g.rule.access},
            {"state", std::string(GrantStateName(g.state))}};
  return options_.store->PutRaw(kSpace, GrantKey(uid, g.volume), j.dump());
}

Result<std::optional<GrantRecord>> Isolation::LoadGrant(const std::string& uid,
                                                        const std::string& volume) const {
  auto value = options_.store->GetRaw(kSpace, GrantKey(uid, volume));
  if (!value && value.error().code == Code::kNotFound) return std::optional<GrantRecord>();
  if (!value) return value.error();
  ASSIGN_OR_RETURN(auto g, DecodeGrant(volume, *value));
  return std::optional<GrantRecord>(std::move(g));
}

Result<std::vector<GrantRecord>> Isolation::Grants(const std::string& uid) const {
  RETURN_IF_ERROR(CheckUid(uid));
  const std::string prefix = uid + "/grant/";
  ASSIGN_OR_RETURN(auto kvs, options_.store->ListRaw(kSpace, prefix));
  std::vector<GrantRecord> out;
  for (const auto& [key, value] : kvs) {
    ASSIGN_OR_RETURN(auto g, DecodeGrant(key.substr(prefix.size()), value));
    out.push_back(std::move(g));
  }
  return out;
}

Result<std::vector<cgroup::DeviceRule>> Isolation::DesiredRules(const std::string& uid) const {
  std::vector<cgroup::DeviceRule> rules = cgroup::BaseRules();
  ASSIGN_OR_RETURN(auto grants, Grants(uid));
  for (const auto& g : grants) {
    // A revoke in progress is never re-granted: QEMU keeps the descriptor it already has (the
    // filter checks opens only), and a crash after FinishRevoke's map delete must not bring
    // the rule back when the next Reconcile syncs the map from these records.
    if (g.state != GrantState::kPendingRemove) rules.push_back(g.rule);
  }
  return Merge(std::move(rules));
}

Result<cgroup::ApplyReport> Isolation::Place(const std::string& uid, pid_t qemu,
                                             const cgroup::Limits& limits,
                                             const std::vector<DeviceGrant>& boot) {
  RETURN_IF_ERROR(CheckUid(uid));
  {
    std::lock_guard lock(mu_);
    for (const auto& b : boot) {
      ASSIGN_OR_RETURN(auto rule, cgroup::RuleForPath(b.path, GrantAccess(b)));
      RETURN_IF_ERROR(WriteGrant(uid, {b.volume, b.path, rule, GrantState::kActive}));
    }
  }
  RETURN_IF_ERROR(Reconcile(uid, qemu));
  ASSIGN_OR_RETURN(auto report, cgroup::ApplyLimits(VmCgroup(uid), limits));
  return report;
}

Status Isolation::Reconcile(const std::string& uid, pid_t qemu) {
  RETURN_IF_ERROR(CheckUid(uid));
  std::lock_guard lock(mu_);
  const fs::path dir = VmCgroup(uid);
  const fs::path pins = PinDir(uid);
  RETURN_IF_ERROR(cgroup::CreateCgroup(dir));
  ASSIGN_OR_RETURN(auto desired, DesiredRules(uid));
  // The filter first, QEMU second: QEMU never runs in its cgroup without the filter.
  auto filter = cgroup::DeviceFilter::Open(dir, pins);
  if (filter) {
    RETURN_IF_ERROR((*filter)->Sync(desired));
  } else {
    if (filter.error().code != Code::kNotFound) {
      EV_LOG(kNotice).Field("VM_UID", uid) << "device filter of " << uid << " is stale ("
                                           << filter.error().message << "): rebuilding it";
    }
    RETURN_IF_ERROR(cgroup::RemovePins(pins));
    ASSIGN_OR_RETURN(auto created, cgroup::DeviceFilter::Create(dir, pins, desired));
    (void)created;
  }
  if (qemu > 0) {
    auto pids = cgroup::Pids(dir);
    if (std::find(pids.begin(), pids.end(), qemu) == pids.end()) {
      RETURN_IF_ERROR(cgroup::MovePid(dir, qemu));
    }
  }
  ASSIGN_OR_RETURN(uint64_t id, cgroup::CgroupId(dir));
  Json meta = {{"cgroup", dir.string()}, {"cgroupId", id}, {"bootId", boot_id_}};
  return options_.store->PutRaw(kSpace, uid + "/meta", meta.dump());
}

Status Isolation::BeginGrant(const std::string& uid, const DeviceGrant& grant) {
  RETURN_IF_ERROR(CheckUid(uid));
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(auto rule, cgroup::RuleForPath(grant.path, GrantAccess(grant)));
  RETURN_IF_ERROR(WriteGrant(uid, {grant.volume, grant.path, rule, GrantState::kPendingAdd}));
  FaultPoint("grant.after-intent");
  ASSIGN_OR_RETURN(auto filter, cgroup::DeviceFilter::Open(VmCgroup(uid), PinDir(uid)));
  uint32_t access = 0;
  ASSIGN_OR_RETURN(auto desired, DesiredRules(uid));
  for (const auto& r : desired) {
    if (SameDevice(r, rule)) access |= r.access;
  }
  rule.access = access;
  RETURN_IF_ERROR(filter->Allow(rule));
  FaultPoint("grant.after-kernel");
  return Ok();
}

Status Isolation::CommitGrant(const std::string& uid, const std::string& volume) {
  RETURN_IF_ERROR(CheckUid(uid));
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(auto found, LoadGrant(uid, volume));
  if (!found) return MakeError(Code::kNotFound, "no grant of " + volume + " to " + uid);
  GrantRecord g = std::move(*found);
  if (g.state == GrantState::kActive) return Ok();
  g.state = GrantState::kActive;
  return WriteGrant(uid, g);
}

Status Isolation::BeginRevoke(const std::string& uid, const std::string& volume) {
  RETURN_IF_ERROR(CheckUid(uid));
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(auto found, LoadGrant(uid, volume));
  if (!found) return Ok();
  GrantRecord g = std::move(*found);
  if (g.state == GrantState::kPendingRemove) return Ok();
  g.state = GrantState::kPendingRemove;
  RETURN_IF_ERROR(WriteGrant(uid, g));
  FaultPoint("revoke.after-intent");
  return Ok();
}

Status Isolation::FinishRevoke(const std::string& uid, const std::string& volume) {
  RETURN_IF_ERROR(CheckUid(uid));
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(auto found, LoadGrant(uid, volume));
  if (!found) return Ok();
  const GrantRecord g = std::move(*found);
  // What the map must hold for this device once the grant is gone (other owners, base rules).
  std::vector<cgroup::DeviceRule> rest = cgroup::BaseRules();
  ASSIGN_OR_RETURN(auto grants, Grants(uid));
  for (const auto& other : grants) {
    if (other.volume != volume) rest.push_back(other.rule);
  }
  uint32_t keep = 0;
  for (const auto& r : Merge(std::move(rest))) {
    if (SameDevice(r, g.rule)) keep |= r.access;
  }
  auto filter = cgroup::DeviceFilter::Open(VmCgroup(uid), PinDir(uid));
  if (filter) {
    cgroup::DeviceRule rule = g.rule;
    rule.access = keep;
    RETURN_IF_ERROR(keep != 0 ? (*filter)->Allow(rule) : (*filter)->Remove(rule));
  } else if (filter.error().code != Code::kNotFound) {
    // A stale filter is rebuilt from the records by the next Reconcile; nothing to remove now.
    EV_LOG(kNotice).Field("VM_UID", uid) << "revoke " << volume << ": " << filter.error().message;
  }
  FaultPoint("revoke.after-kernel");
  return options_.store->DeleteRaw(kSpace, GrantKey(uid, volume));
}

Status Isolation::Release(const std::string& uid) {
  RETURN_IF_ERROR(CheckUid(uid));
  std::lock_guard lock(mu_);
  const fs::path dir = VmCgroup(uid);
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    RETURN_IF_ERROR(cgroup::KillAll(dir));
    RETURN_IF_ERROR(cgroup::RemoveCgroup(dir));
  }
  RETURN_IF_ERROR(cgroup::RemovePins(PinDir(uid)));
  // Records last: until they are gone a crash leaves this VM findable for the next Collect.
  ASSIGN_OR_RETURN(auto kvs, options_.store->ListRaw(kSpace, uid + "/"));
  for (const auto& [key, value] : kvs) {
    RETURN_IF_ERROR(options_.store->DeleteRaw(kSpace, key));
  }
  return Ok();
}

std::set<std::string> Isolation::KnownUids() const {
  std::set<std::string> out;
  if (auto kvs = options_.store->ListRaw(kSpace, "")) {
    for (const auto& [key, value] : *kvs) out.insert(key.substr(0, key.find('/')));
  }
  if (auto pins = cgroup::ListPinDirs(options_.bpf_root)) {
    for (const auto& p : *pins) out.insert(p);
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_, ec)) {
    if (e.is_directory()) out.insert(e.path().filename().string());
  }
  return out;
}

Status Isolation::Collect(const std::set<std::string>& live) {
  Status first = Ok();
  for (const auto& uid : KnownUids()) {
    if (live.count(uid) || !IsCanonicalUuid(uid)) continue;
    EV_LOG(kInfo).Field("VM_UID", uid) << "releasing the cgroup, filter and records of " << uid;
    if (Status s = Release(uid); !s && first) first = s;
  }
  return first;
}

Result<cgroup::Limits> LimitsForVmi(const Json& vmi) {
  const Json* domain = Get(Get(&vmi, "spec"), "domain");
  const Json* resources = Get(domain, "resources");
  const Json* requests = Get(resources, "requests");
  const Json* limits = Get(resources, "limits");
  cgroup::Limits out;
  ASSIGN_OR_RETURN(auto cpu_limit, Qty(Get(limits, "cpu"), "resources.limits.cpu"));
  ASSIGN_OR_RETURN(auto cpu_request, Qty(Get(requests, "cpu"), "resources.requests.cpu"));
  ASSIGN_OR_RETURN(auto mem_limit, Qty(Get(limits, "memory"), "resources.limits.memory"));
  ASSIGN_OR_RETURN(auto mem_request, Qty(Get(requests, "memory"), "resources.requests.memory"));
  ASSIGN_OR_RETURN(auto guest, Qty(Get(Get(domain, "memory"), "guest"), "memory.guest"));
  // cpu.max: the limit in cores × the 100 ms period (the kubelet's CFS quota).
  if (cpu_limit && !cpu_limit->IsZero()) {
    out.cpu_max_quota_us = static_cast<uint64_t>(std::max<int64_t>(
        1000, cpu_limit->MilliValue() * 100));  // 1000 µs: the kernel's minimum quota
  }
  // cpu.weight: the kubelet's shares (milli × 1024 / 1000) mapped to weight as runc does.
  if (cpu_request && !cpu_request->IsZero()) {
    uint64_t shares = std::max<uint64_t>(2, cpu_request->MilliValue() * 1024 / 1000);
    shares = std::min<uint64_t>(shares, 262144);
    out.cpu_weight = static_cast<uint32_t>(1 + ((shares - 2) * 9999) / 262142);
  }
  // Memory: the guest's RAM plus QEMU's own (page tables 1/512 of guest RAM, 64 MiB for QEMU
  // itself and its display, 8 MiB per vCPU; see daemon/README.md).
  const Json* cpu = Get(domain, "cpu");
  uint64_t vcpus = 1;
  if (cpu != nullptr) {
    vcpus = std::max<int64_t>(1, cpu->value("sockets", 1)) *
            std::max<int64_t>(1, cpu->value("cores", 1)) *
            std::max<int64_t>(1, cpu->value("threads", 1));
  }
  uint64_t guest_bytes = guest ? static_cast<uint64_t>(guest->Value()) : 0;
  if (guest_bytes == 0 && mem_request) guest_bytes = static_cast<uint64_t>(mem_request->Value());
  const uint64_t overhead = guest_bytes / 512 + 64 * kMiB + 8 * kMiB * vcpus;
  if (mem_limit && !mem_limit->IsZero()) {
    out.memory_max = static_cast<uint64_t>(mem_limit->Value()) + overhead;
  }
  if (mem_request && !mem_request->IsZero()) {
    out.memory_high = static_cast<uint64_t>(mem_request->Value()) + overhead;
    if (out.memory_max && *out.memory_high > *out.memory_max) out.memory_high = out.memory_max;
  }
  // Tasks: what systemd-machined gives a VM scope.
  out.pids_max = 16384;
  out.io_weight = 100;
  return out;
}

}  // namespace edgevirt::daemon
