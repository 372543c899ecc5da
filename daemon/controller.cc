#include "daemon/controller.h"

#include <grp.h>
#include <sys/stat.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <optional>
#include <random>

#include "api/kubevirt/kubevirt.h"
#include "api/machinery/codec.h"
#include "api/machinery/secrets.h"
#include "common/fault.h"
#include "common/hash.h"
#include "common/json_path.h"
#include "common/log.h"

namespace edgevirt::daemon {

using api::machinery::DecodeRecord;
using api::machinery::EventType;
using api::machinery::ReferenceTo;
using api::machinery::WriteOptions;
using namespace std::chrono_literals;

std::string DomainName(const std::string& ns, const std::string& name) { return ns + "_" + name; }

namespace {

// KubeVirt's finalizers (kubevirt.io/api/core/v1 types.go).
constexpr char kVmFinalizer[] = "kubevirt.io/virtualMachineControllerFinalize";
constexpr char kVmiFinalizer[] = "kubevirt.io/foregroundDeleteVirtualMachine";
// The work-queue key of the whole data plane (every VMI's NICs, every Service).
constexpr char kNetKey[] = "net/-/-";
// The VM generation a VMI was started from (KubeVirt's VirtualMachineGenerationAnnotation).
constexpr char kGenerationAnnotation[] = "kubevirt.io/vm-generation";
// Our own: a hash of the VM template a VMI was created from. KubeVirt compares the template
// with a ControllerRevision to decide whether a VM spec change that left the template alone
// (start/stop flip runStrategy) still describes the running VMI; edgevirt keeps no revisions.
constexpr char kTemplateHashAnnotation[] = "edgevirt.io/vm-template-hash";
constexpr int64_t kDefaultGraceSeconds = 30;

using jsonpath::At;
using jsonpath::Str;

bool HasFinalizer(const Json& obj, std::string_view f) {
  const Json* fs = At(obj, {"metadata", "finalizers"});
  if (!fs || !fs->is_array()) return false;
  for (const auto& x : *fs) {
    if (x.is_string() && x.get<std::string>() == f) return true;
  }
  return false;
}

void AddFinalizer(Json& obj, std::string_view f) {
  if (HasFinalizer(obj, f)) return;
  Json& fs = obj["metadata"]["finalizers"];
  if (!fs.is_array()) fs = Json::array();
  fs.push_back(std::string(f));
}

void RemoveFinalizer(Json& obj, std::string_view f) {
  Json* fs = obj.contains("metadata") ? &obj["metadata"] : nullptr;
  if (!fs || !fs->contains("finalizers") || !(*fs)["finalizers"].is_array()) return;
  Json& arr = (*fs)["finalizers"];
  Json kept = Json::array();
  for (auto& x : arr) {
    if (!(x.is_string() && x.get<std::string>() == f)) kept.push_back(x);
  }
  if (kept.empty()) {
    fs->erase("finalizers");
  } else {
    arr = std::move(kept);
  }
}

bool BeingDeleted(const Json& obj) { return At(obj, {"metadata", "deletionTimestamp"}) != nullptr; }

const Json* Condition(const Json& obj, std::string_view type) {
  const Json* cs = At(obj, {"status", "conditions"});
  if (!cs || !cs->is_array()) return nullptr;
  for (const auto& c : *cs) {
    if (c.is_object() && c.value("type", "") == type) return &c;
  }
  return nullptr;
}

bool ConditionTrue(const Json& obj, std::string_view type) {
  const Json* c = Condition(obj, type);
  return c && c->value("status", "") == "True";
}

// Sets a condition, keeping lastTransitionTime while its status does not change (so that an
// unchanged state writes nothing).
void SetCondition(Json& status, const std::string& type, const std::string& value,
                  const std::string& reason, const std::string& message, const std::string& now) {
  Json& cs = status["conditions"];
  if (!cs.is_array()) cs = Json::array();
  for (auto& c : cs) {
    if (c.is_object() && c.value("type", "") == type) {
      if (c.value("status", "") != value) c["lastTransitionTime"] = now;
      c["status"] = value;
      if (reason.empty()) {
        c.erase("reason");
      } else {
        c["reason"] = reason;
      }
      if (message.empty()) {
        c.erase("message");
      } else {
        c["message"] = message;
      }
      return;
    }
  }
  Json c = {
      {"type", type}, {"status", value}, {"lastProbeTime", nullptr}, {"lastTransitionTime", now}};
  if (!reason.empty()) c["reason"] = reason;
  if (!message.empty()) c["message"] = message;
  cs.push_back(std::move(c));
}

void RemoveCondition(Json& status, std::string_view type) {
  if (!status.contains("conditions") || !status["conditions"].is_array()) return;
  Json kept = Json::array();
  for (auto& c : status["conditions"]) {
    if (!(c.is_object() && c.value("type", "") == type)) kept.push_back(c);
  }
  if (kept.empty()) {
    status.erase("conditions");
  } else {
    status["conditions"] = std::move(kept);
  }
}

bool IsFinalPhase(const std::string& phase) { return phase == "Succeeded" || phase == "Failed"; }

// The phases in which QEMU may be running (KubeVirt's IsRunning is Running only; Scheduled
// is where edgevirt defines and starts the domain).
bool IsStartingPhase(const std::string& phase) {
  return phase.empty() || phase == "Pending" || phase == "Scheduling" || phase == "Scheduled";
}

// FNV-1a from the basis 1469598103934665603 (the standard basis with its last digit lost, as
// first written): template hashes are stored on VMIs, and a different value after an upgrade
// would mark every running VM as changed.
constexpr uint64_t kTemplateHashBasis = 1469598103934665603ull;

std::string TemplateHash(const Json& vm) {
  const Json* t = At(vm, {"spec", "template"});
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(
                    Fnv1a64(t ? api::machinery::Dump(*t) : "", kTemplateHashBasis)));
  return buf;
}

// vm.RunStrategy(): spec.runStrategy, else the deprecated spec.running (true → Always,
// false → Halted).
std::string RunStrategy(const Json& vm) {
  std::string rs = Str(vm, {"spec", "runStrategy"});
  if (!rs.empty()) return rs;
  const Json* running = At(vm, {"spec", "running"});
  if (running && running->is_boolean()) return running->get<bool>() ? "Always" : "Halted";
  return "Halted";
}

const Json* FirstStateChange(const Json& vm) {
  const Json* reqs = At(vm, {"status", "stateChangeRequests"});
  if (!reqs || !reqs->is_array() || reqs->empty()) return nullptr;
  return &(*reqs)[0];
}

bool HasStartRequest(const Json& vm) {
  const Json* r = FirstStateChange(vm);
  return r && r->value("action", "") == "Start";
}

bool HasStartPausedRequest(const Json& vm) {
  const Json* r = FirstStateChange(vm);
  if (!r || r->value("action", "") != "Start") return false;
  const Json* d = At(*r, {"data", "paused"});
  return d && d->is_string() && d->get<std::string>() == "true";
}

bool HasStopRequestForVmi(const Json& vm, const Json* vmi) {
  const Json* r = FirstStateChange(vm);
  if (!r || !vmi || r->value("action", "") != "Stop") return false;
  return r->contains("uid") && (*r)["uid"].is_string() &&
         (*r)["uid"].get<std::string>() == Str(*vmi, {"metadata", "uid"});
}

bool WasRunning(const Json& vmi) {
  const Json* ts = At(vmi, {"status", "phaseTransitionTimestamps"});
  if (!ts || !ts->is_array()) return false;
  for (const auto& t : *ts) {
    if (t.is_object() && t.value("phase", "") == "Running") return true;
  }
  return false;
}

int64_t GraceSeconds(const Json& vmi) {
  const Json* g = At(vmi, {"spec", "terminationGracePeriodSeconds"});
  if (g && g->is_number_integer()) return std::max<int64_t>(0, g->get<int64_t>());
  return kDefaultGraceSeconds;
}

// KubeVirt's calculateStartBackoffTime: (max/30, at least 10 s) × failures², plus up to half
// of that at random (so that VMs failing together do not retry together), capped at max.
int64_t StartBackoffSeconds(int64_t fail_count, int64_t max_delay) {
  if (fail_count <= 0) fail_count = 1;
  int64_t interval = std::max<int64_t>(10, max_delay / 30);
  int64_t delay = interval * fail_count * fail_count;
  thread_local std::mt19937_64 rng{std::random_device{}()};
  delay += std::uniform_int_distribution<int64_t>(0, delay / 2)(rng);
  return std::min(delay, max_delay);
}

bool DomainActive(vmm::DomainState s) {
  switch (s) {
    case vmm::DomainState::kRunning:
    case vmm::DomainState::kBlocked:
    case vmm::DomainState::kPaused:
    case vmm::DomainState::kShuttingDown:
    case vmm::DomainState::kPmSuspended:
      return true;
    default:
      return false;
  }
}

// The "return" member of a guest agent reply, or an error.
Result<Json> AgentReturn(const std::string& reply) {
  Json j = Json::parse(reply, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Error(Code::kInternal, "guest agent: reply is not JSON");
  }
  if (j.contains("error")) {
    return Error(Code::kInternal, "guest agent: " + j["error"].value("desc", std::string("error")));
  }
  return j.contains("return") ? j["return"] : Json();
}

// QGA guest-get-osinfo → KubeVirt's VirtualMachineInstanceGuestOSInfo.
Json GuestOsInfo(const Json& r) {
  Json os = Json::object();
  const std::pair<const char*, const char*> fields[] = {{"id", "id"},
                                                        {"name", "name"},
                                                        {"pretty-name", "prettyName"},
                                                        {"version", "version"},
                                                        {"version-id", "versionId"},
                                                        {"kernel-release", "kernelRelease"},
                                                        {"kernel-version", "kernelVersion"},
                                                        {"machine", "machine"}};
  for (const auto& [from, to] : fields) {
    if (r.is_object() && r.contains(from) && r[from].is_string()) os[to] = r[from];
  }
  return os;
}

Json GuestUsers(const Json& r) {
  Json items = Json::array();
  if (!r.is_array()) return items;
  for (const auto& u : r) {
    Json item = {{"userName", u.value("user", "")}};
    if (u.contains("domain")) item["domain"] = u["domain"];
    if (u.contains("login-time")) item["loginTime"] = u["login-time"];
    items.push_back(std::move(item));
  }
  return items;
}

Json GuestFileSystems(const Json& r) {
  Json items = Json::array();
  if (!r.is_array()) return items;
  for (const auto& f : r) {
    items.push_back({{"diskName", f.value("name", "")},
                     {"mountPoint", f.value("mountpoint", "")},
                     {"fileSystemType", f.value("type", "")},
                     {"usedBytes", f.value("used-bytes", int64_t{0})},
                     {"totalBytes", f.value("total-bytes", int64_t{0})}});
  }
  return items;
}

}  // namespace

class Controller::Impl {
 public:
  Impl(api::machinery::Machinery& machinery, api::machinery::EventRecorder* events,
       ControllerOptions options)
      : machinery_(machinery),
        registry_(machinery.registry()),
        events_(events),
        options_(std::move(options)) {}

  Status Open();
  Status ReconcileKey(const std::string& key);  // "vm/<ns>/<name>", "vmi/<ns>/<name>", kNetKey
  void WatchLoop();
  void Stop();
  void EnqueueAll();
  void OnDomainEvent(const vmm::DomainEvent& e);
  Status ReconcileVm(const std::string& ns, const std::string& name);
  // `after_start`: called again right after this reconcile started the domain, to report it;
  // a domain that is not running then is a failed start, not one to start again.
  Status ReconcileVmi(const std::string& ns, const std::string& name, bool after_start = false);

  // VM side (virt-controller).
  Status ApplyVolumeRequests(const Json& vm, const Json* vmi);
  Status StartStop(const Json& vm, const Json* vmi, const std::string& key);
  Status StartVmi(const Json& vm);
  Status StopVmi(const Json& vm, const Json& vmi);
  Status UpdateVmStatus(const Json& vm, const Json* vmi, const Status& sync_error,
                        const std::string& key);
  std::string PrintableStatus(const Json& vm, const Json* vmi) const;

  // VMI side (virt-handler).
  // The images of the VMI's containerDisk volumes: true with `out` filled when every one is
  // cached; false while one is pulled or backs off (status and events written, key requeued).
  Result<bool> EnsureImages(const Json& vmi, ContainerDisks& out,
                            std::vector<std::string>& digests);
  Status StartDomain(const Json& vmi, const ContainerDisks& container_disks,
                     const std::vector<std::string>& image_digests);
  // The core/v1 Secret ns/name as stored (kNotFound when missing).
  Result<Json> GetSecret(const std::string& ns, const std::string& name);
  // The credentials of a Secret of type kubernetes.io/dockerconfigjson (or dockercfg).
  Result<image::Keychain> PullSecretKeychain(const std::string& ns, const std::string& name);
  Status FinishVmi(const Json& vmi, const std::string& phase, const std::string& reason);
  Status CleanupDomain(const std::string& dname, const std::string& uid);
  // The data plane of every VMI and Service (net/ applies it only when it changed).
  Status SyncNetwork();
  // ns/name has neither a VM nor a VMI any more: its addresses go.
  Status ReleaseAddresses(const std::string& ns, const std::string& name);
  // The VMI's cgroup and device filter match LMDB (once per daemon process and VMI).
  Status EnsurePlaced(const std::string& dname, const std::string& uid);
  // Hot-plug: attaches the spec's hotpluggable volumes that are not attached, detaches attached
  // disks the spec no longer has, settles grants a crash left pending; returns
  // status.volumeStatus. Sets `requeue` while a detach is still in progress.
  Result<Json> SyncVolumes(const Json& vmi, const std::string& dname, bool& requeue);
  Status WriteVmiStatus(const std::string& ns, const std::string& name,
                        const std::function<void(Json& vmi, const std::string& now)>& edit);

  Result<std::optional<Json>> GetObject(const api::ResourceType* rt, const std::string& ns,
                                        const std::string& name);
  std::string Now() const { return FormatRfc3339(Clock()); }
  WallClock::time_point Clock() const {
    return options_.clock ? options_.clock() : WallClock::now();
  }
  void Event(const Json& obj, EventType type, std::string reason, std::string message) {
    if (events_) events_->Record(ReferenceTo(obj), type, std::move(reason), std::move(message));
  }
  bool Embedded() const { return options_.hypervisor.uri.empty(); }

  api::machinery::Machinery& machinery_;
  api::machinery::Registry& registry_;
  api::machinery::EventRecorder* events_;
  ControllerOptions options_;
  const api::ResourceType* vm_rt_ = nullptr;
  const api::ResourceType* vmi_rt_ = nullptr;
  const api::ResourceType* svc_rt_ = nullptr;  // core/v1 Service; null when not served
  std::unique_ptr<vmm::Hypervisor> hv_;
  std::unique_ptr<Networking> net_;
  std::unique_ptr<Isolation> iso_;
  std::set<std::string> placed_;  // VMI uids whose isolation was reconciled (worker thread)
  ReconcileLoop loop_{"controller", [this](const std::string& key) { return ReconcileKey(key); },
                      [this] { EnqueueAll(); }, options_.resync_period};
  WorkQueue& queue_ = loop_.queue();
  std::unique_ptr<store::Watch> watch_;
  std::thread watcher_;

  // VMIs whose guest got the ACPI power button (in memory only: after a restart the button is
  // pressed again, which a guest that is already shutting down ignores).
  std::mutex shutdown_mu_;
  std::set<std::string> shutdown_requested_;  // VMI uids; guarded by shutdown_mu_

  // One console and one VNC session per VMI (API threads).
  SessionRegistry sessions_;

  // containerDisk pulls (null without an image cache). Requesters are "<vmi key>#<uid>".
  std::unique_ptr<ImagePuller> puller_;
  // The agent's guest-network-get-interfaces per VMI uid: when last asked, the last answer
  // (reconcile thread only).
  std::map<std::string, std::pair<std::chrono::steady_clock::time_point, Json>> agent_nics_;
  // Requesters told "Pulling image" already (reconcile thread only).
  std::set<std::string> pull_announced_;
};

Result<std::optional<Json>> Controller::Impl::GetObject(const api::ResourceType* rt,
                                                        const std::string& ns,
                                                        const std::string& name) {
  auto rec = registry_.Get(*rt, ns, name);
  if (!rec) {
    if (rec.error().code == 404) return std::optional<Json>();
    return rec.error().ToError();
  }
  ASSIGN_OR_RETURN(Json obj, DecodeRecord(*rec));
  return std::optional<Json>(std::move(obj));
}

Status Controller::Impl::Open() {
  vm_rt_ = registry_.ByKind("kubevirt.io", "VirtualMachine");
  vmi_rt_ = registry_.ByKind("kubevirt.io", "VirtualMachineInstance");
  if (!vm_rt_ || !vmi_rt_) return Error(Code::kInvalid, "controller: kubevirt.io/v1 is not served");
  vmm::HypervisorOptions hv_options = options_.hypervisor;
  hv_options.on_event = [this](const vmm::DomainEvent& e) { OnDomainEvent(e); };
  ASSIGN_OR_RETURN(hv_, vmm::Hypervisor::Open(std::move(hv_options)));
  options_.host.accelerator = hv_->accelerator();
  IsolationOptions iso_options = options_.isolation;
  iso_options.store = &registry_.store();
  ASSIGN_OR_RETURN(iso_, Isolation::Open(std::move(iso_options)));
  // The group QEMU runs as (the same choice vmm makes for qemu.conf) owns the per-VMI dirs.
  if (!options_.hypervisor.qemu_group.empty()) {
    options_.host.qemu_group = options_.hypervisor.qemu_group;
  } else {
    options_.host.qemu_group = ::getgrnam("kvm") != nullptr ? "kvm" : "nogroup";
  }
  if (options_.host.firmware.ovmf_code.empty()) options_.host.firmware = FindFirmware();

  std::error_code ec;
  std::filesystem::create_directories(options_.host.vms_dir, ec);
  if (ec) {
    return Error(Code::kInternal, "create " + options_.host.vms_dir + ": " + ec.message());
  }
  // QEMU runs unprivileged and must reach its files under here (traverse only).
  ::chmod(options_.host.vms_dir.c_str(), 0711);

  // Watch first, then list: nothing that changes in between is missed.
  store::WatchOptions wo;
  wo.from_rv = registry_.store().CurrentResourceVersion();
  ASSIGN_OR_RETURN(watch_, registry_.store().StartWatch(wo));

  // Garbage collection of what no VMI owns. Only for the embedded driver: every domain of its
  // private root is ours, whereas qemu:///system may hold other users' domains.
  std::set<std::string> live_uids;
  std::set<std::string> live_domains;
  api::machinery::ListQuery all;
  auto vmis = registry_.List(*vmi_rt_, all);
  if (!vmis) return vmis.error().ToError().Wrap("list VMIs");
  for (const auto& rec : vmis->items) {
    live_uids.insert(rec.uid);
    live_domains.insert(DomainName(rec.key.ns, rec.key.name));
  }
  if (Embedded()) {
    auto domains = hv_->List();
    if (!domains) return Error(domains.error()).Wrap("list domains");
    for (const auto& d : *domains) {
      if (live_domains.count(d.name) != 0) continue;
      EV_LOG(kNotice).Field("DOMAIN", d.name)
          << "removing domain " << d.name << ": no VirtualMachineInstance owns it";
      if (Status s = hv_->Destroy(d.name); !s) EV_LOG(kWarning) << s.error().message;
      if (Status s = hv_->Undefine(d.name); !s) EV_LOG(kWarning) << s.error().message;
    }
  }
  // Cgroups, pinned filters and device records of VMIs that no longer exist (after the
  // domains: a cgroup holding a QEMU is emptied by the Destroy above).
  if (Status s = iso_->Collect(live_uids); !s) EV_LOG(kWarning) << s.error().message;
  // Addresses of VMs that no longer exist, taps and macvtaps no VMI owns; the default network
  // is reopened (its table rebuilt by the first SyncNetwork) when it holds addresses.
  svc_rt_ = registry_.ByKind("", "Service");
  {
    NetworkingOptions net_options;
    net_options.net = options_.network;
    net_options.net.store = &registry_.store();
    net_ = std::make_unique<Networking>(std::move(net_options));
    std::vector<Json> vmi_objects;
    for (const auto& rec : vmis->items) {
      if (auto obj = DecodeRecord(rec)) vmi_objects.push_back(std::move(*obj));
    }
    std::set<std::string> vm_owners;
    if (auto vms = registry_.List(*vm_rt_, all)) {
      for (const auto& rec : vms->items) vm_owners.insert(rec.key.ns + "/" + rec.key.name);
    }
    if (Status s = net_->Recover(vmi_objects, vm_owners); !s) {
      EV_LOG(kWarning) << "networking: " << s.error().message;
    }
    queue_.Add(kNetKey);
  }
  if (options_.images != nullptr) {
    ImagePullerOptions pulls = options_.pulls;
    pulls.notify = [this](const std::string& requester) {
      queue_.Add(requester.substr(0, requester.find('#')));
    };
    pulls.prune_budget = options_.image_cache_budget;
    puller_ = std::make_unique<ImagePuller>(*options_.images, std::move(pulls));
    // Image uses of VMIs that no longer exist (a crash between the VMI's end and its release).
    if (auto images = options_.images->List()) {
      std::set<std::string> gone;
      for (const auto& img : *images) {
        for (const auto& user : img.users) {
          if (live_uids.count(user) == 0) gone.insert(user);
        }
      }
      for (const auto& user : gone) {
        if (Status st = options_.images->Release(user); !st) {
          EV_LOG(kWarning) << st.error().message;
        }
      }
    } else {
      EV_LOG(kWarning) << "image cache: " << images.error().message;
    }
  }
  for (const auto& entry : std::filesystem::directory_iterator(options_.host.vms_dir, ec)) {
    const std::string uid = entry.path().filename().string();
    if (!IsCanonicalUuid(uid) || live_uids.count(uid) != 0) continue;
    EV_LOG(kNotice).Field("VM_UID", uid)
        << "removing files of VMI " << uid << ": it no longer exists";
    if (Status s = RemoveVmiFiles(options_.host.vms_dir, uid); !s) {
      EV_LOG(kWarning) << s.error().message;
    }
  }
  EnqueueAll();
  return Ok();
}

void Controller::Impl::EnqueueAll() {
  api::machinery::ListQuery all;
  if (auto vms = registry_.List(*vm_rt_, all)) {
    for (const auto& rec : vms->items) queue_.Add("vm/" + rec.key.ns + "/" + rec.key.name);
  }
  if (auto vmis = registry_.List(*vmi_rt_, all)) {
    for (const auto& rec : vmis->items) {
      queue_.Add("vmi/" + rec.key.ns + "/" + rec.key.name);
      queue_.Add("vm/" + rec.key.ns + "/" + rec.key.name);
    }
  }
  queue_.Add(kNetKey);
}

void Controller::Impl::OnDomainEvent(const vmm::DomainEvent& e) {
  const size_t sep = e.name.find('_');
  if (sep == std::string::npos) return;
  queue_.Add("vmi/" + e.name.substr(0, sep) + "/" + e.name.substr(sep + 1));
}

void Controller::Impl::WatchLoop() {
  while (!loop_.stopping()) {
    auto next = watch_->Next(500ms);
    if (!next) {
      if (loop_.stopping()) return;
      // Fell behind or compacted: start again from now and look at everything.
      EV_LOG(kWarning) << "controller: store watch broken (" << next.error().message
                       << "); resyncing";
      store::WatchOptions wo;
      wo.from_rv = registry_.store().CurrentResourceVersion();
      auto w = registry_.store().StartWatch(wo);
      if (!w) {
        loop_.SleepFor(1s);
        continue;
      }
      watch_ = std::move(*w);
      EnqueueAll();
      continue;
    }
    if (!next->has_value()) continue;
    const store::ObjectKey& k = (*next)->object.key;
    if (k.group.empty() && k.kind == "Service") queue_.Add(kNetKey);
    if (k.group != "kubevirt.io") continue;
    const std::string suffix = k.ns + "/" + k.name;
    if (k.kind == "VirtualMachine") {
      queue_.Add("vm/" + suffix);
    } else if (k.kind == "VirtualMachineInstance") {
      queue_.Add("vmi/" + suffix);
      queue_.Add(kNetKey);
      queue_.Add("vm/" + suffix);  // the owner, if any, has the same name
    }
  }
}

Status Controller::Impl::ReconcileKey(const std::string& key) {
  const size_t a = key.find('/');
  const size_t b = key.find('/', a + 1);
  const std::string kind = key.substr(0, a);
  const std::string ns = key.substr(a + 1, b - a - 1);
  const std::string name = key.substr(b + 1);
  if (kind == "net") return SyncNetwork();
  return kind == "vm" ? ReconcileVm(ns, name) : ReconcileVmi(ns, name);
}

Status Controller::Impl::SyncNetwork() {
  if (!net_->opened()) return Ok();
  if (auto restarted = net_->Supervise(); !restarted) {
    EV_LOG(kWarning) << "DHCP: " << restarted.error().message;
  } else if (*restarted) {
    EV_LOG(kWarning) << "dnsmasq of the default network had stopped: restarted it";
  }
  api::machinery::ListQuery all;
  std::vector<Json> vmis, services;
  auto vmi_list = registry_.List(*vmi_rt_, all);
  if (!vmi_list) return vmi_list.error().ToError();
  for (const auto& rec : vmi_list->items) {
    ASSIGN_OR_RETURN(Json obj, DecodeRecord(rec));
    vmis.push_back(std::move(obj));
  }
  if (svc_rt_ != nullptr) {
    auto svc_list = registry_.List(*svc_rt_, all);
    if (!svc_list) return svc_list.error().ToError();
    for (const auto& rec : svc_list->items) {
      ASSIGN_OR_RETURN(Json obj, DecodeRecord(rec));
      services.push_back(std::move(obj));
    }
  }
  return net_->Sync(vmis, services);
}

Status Controller::Impl::ReleaseAddresses(const std::string& ns, const std::string& name) {
  ASSIGN_OR_RETURN(auto vm, GetObject(vm_rt_, ns, name));
  ASSIGN_OR_RETURN(auto vmi, GetObject(vmi_rt_, ns, name));
  if (vm || vmi) return Ok();
  RETURN_IF_ERROR(net_->Release(ns + "/" + name));
  queue_.Add(kNetKey);
  return Ok();
}

void Controller::Impl::Stop() {
  if (puller_) puller_->Stop();
  loop_.Stop();
  if (watcher_.joinable()) watcher_.join();
  watch_.reset();
  hv_.reset();
}

// ---------------------------------------------------------------------------------------------
// VirtualMachine → VirtualMachineInstance (KubeVirt's VM controller).

Status Controller::Impl::ReconcileVm(const std::string& ns, const std::string& name) {
  ASSIGN_OR_RETURN(auto vm_opt, GetObject(vm_rt_, ns, name));
  if (!vm_opt) return ReleaseAddresses(ns, name);
  Json vm = std::move(*vm_opt);
  ASSIGN_OR_RETURN(auto vmi_opt, GetObject(vmi_rt_, ns, name));
  const Json* vmi = nullptr;
  if (vmi_opt) {
    // Only a VMI this VM controls counts (a standalone VMI of the same name is not adopted).
    const Json* owners = At(*vmi_opt, {"metadata", "ownerReferences"});
    if (owners && owners->is_array()) {
      for (const auto& o : *owners) {
        if (o.value("uid", "") == Str(vm, {"metadata", "uid"}) && o.value("controller", false)) {
          vmi = &*vmi_opt;
        }
      }
    }
  }
  const std::string key = "vm/" + ns + "/" + name;
  const WriteOptions wo{.field_manager = "virt-controller", .admit = false};

  if (BeingDeleted(vm)) {
    if (vmi == nullptr || HasFinalizer(vm, "orphan")) {
      if (HasFinalizer(vm, kVmFinalizer)) {
        auto r = registry_.Mutate(
            *vm_rt_, ns, name, false,
            [](Json& o) -> Status {
              RemoveFinalizer(o, kVmFinalizer);
              return Ok();
            },
            wo);
        if (!r && r.error().code != 404) return r.error().ToError();
      }
      return Ok();
    }
    RETURN_IF_ERROR(StopVmi(vm, *vmi));
    return UpdateVmStatus(vm, vmi, Ok(), key);
  }
  if (!HasFinalizer(vm, kVmFinalizer)) {
    auto r = registry_.Mutate(
        *vm_rt_, ns, name, false,
        [](Json& o) -> Status {
          AddFinalizer(o, kVmFinalizer);
          return Ok();
        },
        wo);
    if (!r) return r.error().ToError();
    return Ok();  // the write brings the VM back through the watch
  }
  // Hot-plug requests (virtctl addvolume/removevolume on the VM): applied to the running VMI
  // and the VM's template, then dropped; the writes bring the VM back here.
  if (const Json* reqs = At(vm, {"status", "volumeRequests"});
      reqs && reqs->is_array() && !reqs->empty()) {
    return ApplyVolumeRequests(vm, vmi);
  }
  // A new RerunOnFailure VM starts once, through a start request (as KubeVirt does).
  if (!At(vm, {"status", "printableStatus"}) && RunStrategy(vm) == "RerunOnFailure" && !vmi) {
    auto r = registry_.Mutate(
        *vm_rt_, ns, name, true,
        [](Json& o) -> Status {
          Json& reqs = o["status"]["stateChangeRequests"];
          if (!reqs.is_array()) reqs = Json::array();
          reqs.push_back({{"action", "Start"}});
          o["status"]["printableStatus"] = "Stopped";
          return Ok();
        },
        WriteOptions{.field_manager = "virt-controller", .admit = false});
    if (!r) return r.error().ToError();
    return Ok();
  }
  Status sync = StartStop(vm, vmi, key);
  if (!sync) {
    Event(vm, EventType::kWarning, "FailedCreate", sync.error().message);
  }
  // Status reflects what was just done on the next pass (the VMI write enqueues this VM).
  ASSIGN_OR_RETURN(auto fresh_vmi, GetObject(vmi_rt_, ns, name));
  const Json* vmi_now = vmi ? (fresh_vmi ? &*fresh_vmi : nullptr) : nullptr;
  if (!vmi && fresh_vmi) {
    const Json* owners = At(*fresh_vmi, {"metadata", "ownerReferences"});
    if (owners && owners->is_array() && !owners->empty() &&
        (*owners)[0].value("uid", "") == Str(vm, {"metadata", "uid"})) {
      vmi_now = &*fresh_vmi;
    }
  }
  return UpdateVmStatus(vm, vmi_now, sync, key);
}

Status Controller::Impl::ApplyVolumeRequests(const Json& vm, const Json* vmi) {
  const std::string ns = Str(vm, {"metadata", "namespace"});
  const std::string name = Str(vm, {"metadata", "name"});
  const Json requests = *At(vm, {"status", "volumeRequests"});
  const WriteOptions wo{.field_manager = "virt-controller", .admit = false};
  Json next = vm;
  for (const auto& r : requests) {
    api::subresources::ApplyVolumeRequest(next["spec"]["template"]["spec"], r);
  }
  const std::string old_hash = TemplateHash(vm);
  const std::string new_hash = TemplateHash(next);
  // 1. The running VMI first (KubeVirt's order): it carries the change to the domain. A VMI
  //    that ran the old template now runs the new one.
  if (vmi && Str(*vmi, {"status", "phase"}) == "Running" && !BeingDeleted(*vmi)) {
    auto r = registry_.Mutate(
        *vmi_rt_, ns, name, false,
        [&](Json& o) -> Status {
          for (const auto& req : requests) api::subresources::ApplyVolumeRequest(o["spec"], req);
          Json& ann = o["metadata"]["annotations"];
          if (ann.is_object() && ann.value(kTemplateHashAnnotation, "") == old_hash) {
            ann[kTemplateHashAnnotation] = new_hash;
          }
          return Ok();
        },
        wo);
    if (!r && r.error().code != 404) return r.error().ToError();
  }
  // 2. The VM's template (a spec change: its generation moves on).
  if (new_hash != old_hash) {
    auto r = registry_.Mutate(
        *vm_rt_, ns, name, false,
        [&](Json& o) -> Status {
          for (const auto& req : requests) {
            api::subresources::ApplyVolumeRequest(o["spec"]["template"]["spec"], req);
          }
          return Ok();
        },
        wo);
    if (!r) return r.error().ToError();
  }
  // 3. The requests applied are done (new ones that arrived meanwhile stay).
  auto r = registry_.Mutate(
      *vm_rt_, ns, name, true,
      [&](Json& o) -> Status {
        Json& reqs = o["status"]["volumeRequests"];
        if (!reqs.is_array()) return Ok();
        Json kept = Json::array();
        size_t i = 0;
        for (auto& req : reqs) {
          if (i < requests.size() && req == requests[i]) {
            ++i;
          } else {
            kept.push_back(std::move(req));
          }
        }
        if (kept.empty()) {
          o["status"].erase("volumeRequests");
        } else {
          reqs = std::move(kept);
        }
        return Ok();
      },
      wo);
  if (!r && r.error().code != 404) return r.error().ToError();
  EV_LOG(kInfo).Field("VM_NAMESPACE", ns).Field("VM_NAME", name)
      << "applied " << requests.size() << " volume request(s) to VM " << ns << "/" << name;
  return Ok();
}

Status Controller::Impl::StartStop(const Json& vm, const Json* vmi, const std::string& key) {
  const std::string strategy = RunStrategy(vm);
  const std::string phase = vmi ? Str(*vmi, {"status", "phase"}) : "";
  auto backoff_left = [&]() -> int64_t {
    const Json* sf = At(vm, {"status", "startFailure", "retryAfterTimestamp"});
    if (!sf || !sf->is_string()) return 0;
    auto t = ParseRfc3339(sf->get<std::string>());
    if (!t) return 0;
    auto left = std::chrono::duration_cast<std::chrono::seconds>(*t - Clock()).count();
    return left > 0 ? left : 0;
  };
  auto start = [&]() -> Status {
    if (int64_t left = backoff_left(); left > 0) {
      queue_.AddAfter(key, std::chrono::seconds(left));
      return Ok();
    }
    return StartVmi(vm);
  };
  if (strategy == "Always") {
    if (vmi) {
      if (HasStopRequestForVmi(vm, vmi) || IsFinalPhase(phase)) return StopVmi(vm, *vmi);
      return Ok();
    }
    return start();
  }
  if (strategy == "RerunOnFailure") {
    if (vmi) {
      const bool force_stop = HasStopRequestForVmi(vm, vmi);
      if (!BeingDeleted(*vmi) && (force_stop || IsFinalPhase(phase))) {
        RETURN_IF_ERROR(StopVmi(vm, *vmi));
        if (phase == "Failed" && !force_stop) {
          auto r = registry_.Mutate(
              *vm_rt_, Str(vm, {"metadata", "namespace"}), Str(vm, {"metadata", "name"}), true,
              [](Json& o) -> Status {
                Json& reqs = o["status"]["stateChangeRequests"];
                if (!reqs.is_array()) reqs = Json::array();
                reqs.push_back({{"action", "Start"}});
                return Ok();
              },
              WriteOptions{.field_manager = "virt-controller", .admit = false});
          if (!r) return r.error().ToError();
        }
      }
      return Ok();
    }
    if (!HasStartRequest(vm)) return Ok();
    return start();
  }
  if (strategy == "Manual") {
    if (vmi) {
      if (HasStopRequestForVmi(vm, vmi)) return StopVmi(vm, *vmi);
      return Ok();
    }
    if (HasStartRequest(vm)) return StartVmi(vm);
    return Ok();
  }
  if (strategy == "Halted") {
    if (!vmi) {
      if (HasStartRequest(vm)) {
        // A start request on a halted VM (start --paused) turns it into Always.
        auto r = registry_.Mutate(
            *vm_rt_, Str(vm, {"metadata", "namespace"}), Str(vm, {"metadata", "name"}), false,
            [](Json& o) -> Status {
              if (o["spec"].contains("runStrategy")) {
                o["spec"]["runStrategy"] = "Always";
              } else {
                o["spec"]["running"] = true;
              }
              return Ok();
            },
            WriteOptions{.field_manager = "virt-controller", .admit = false});
        if (!r) return r.error().ToError();
      }
      return Ok();
    }
    return StopVmi(vm, *vmi);
  }
  if (strategy == "Once") {
    if (!vmi) return start();
    return Ok();
  }
  return Error(Code::kInvalid, "unknown runstrategy: " + strategy);
}

Status Controller::Impl::StartVmi(const Json& vm) {
  const std::string ns = Str(vm, {"metadata", "namespace"});
  const std::string name = Str(vm, {"metadata", "name"});
  const Json* tmpl = At(vm, {"spec", "template"});
  if (!tmpl) return Error(Code::kInvalid, "spec.template is missing");
  Json vmi = {{"apiVersion", "kubevirt.io/v1"}, {"kind", "VirtualMachineInstance"}};
  Json meta = tmpl->contains("metadata") && (*tmpl)["metadata"].is_object() ? (*tmpl)["metadata"]
                                                                            : Json::object();
  meta.erase("generateName");
  meta.erase("creationTimestamp");
  meta["name"] = name;
  meta["namespace"] = ns;
  meta["ownerReferences"] = Json::array({{{"apiVersion", "kubevirt.io/v1"},
                                          {"kind", "VirtualMachine"},
                                          {"name", name},
                                          {"uid", Str(vm, {"metadata", "uid"})},
                                          {"controller", true},
                                          {"blockOwnerDeletion", true}}});
  meta["finalizers"] = Json::array({kVmFinalizer});
  Json& ann = meta["annotations"];
  if (!ann.is_object()) ann = Json::object();
  const Json* gen = At(vm, {"metadata", "generation"});
  ann[kGenerationAnnotation] = std::to_string(gen && gen->is_number() ? gen->get<int64_t>() : 1);
  ann[kTemplateHashAnnotation] = TemplateHash(vm);
  vmi["metadata"] = std::move(meta);
  vmi["spec"] = tmpl->contains("spec") ? (*tmpl)["spec"] : Json::object();
  if (HasStartPausedRequest(vm)) vmi["spec"]["startStrategy"] = "Paused";
  // A stable firmware UUID across restarts (KubeVirt's setupStableFirmwareUUID).
  Json& fw = vmi["spec"]["domain"]["firmware"];
  if (!fw.is_object()) fw = Json::object();
  if (Str(fw, {"uuid"}).empty()) fw["uuid"] = api::kubevirt::LegacyFirmwareUuid(name);

  auto created = registry_.Create(*vmi_rt_, ns, std::move(vmi),
                                  WriteOptions{.field_manager = "virt-controller", .admit = true});
  if (!created) {
    if (created.error().code == 409) return Ok();  // the previous VMI is still being removed
    return Error(created.error().ToError())
        .Wrap("create VirtualMachineInstance " + ns + "/" + name);
  }
  EV_LOG(kInfo).Field("VM_NAMESPACE", ns).Field("VM_NAME", name)
      << "started VM " << ns << "/" << name << " by creating its VirtualMachineInstance";
  Event(vm, EventType::kNormal, "SuccessfulCreate",
        "Started the virtual machine by creating the new virtual machine instance " + name);
  return Ok();
}

Status Controller::Impl::StopVmi(const Json& vm, const Json& vmi) {
  if (BeingDeleted(vmi)) return Ok();
  const std::string ns = Str(vmi, {"metadata", "namespace"});
  const std::string name = Str(vmi, {"metadata", "name"});
  auto r =
      registry_.Delete(*vmi_rt_, ns, name, {}, WriteOptions{.field_manager = "virt-controller"});
  if (!r && r.error().code != 404) {
    Event(vm, EventType::kWarning, "FailedDelete",
          "Error deleting virtual machine instance " + name + ": " + r.error().message);
    return r.error().ToError();
  }
  EV_LOG(kInfo).Field("VM_NAMESPACE", ns).Field("VM_NAME", name)
      << "stopping VM " << ns << "/" << name << " by deleting its VirtualMachineInstance";
  Event(vm, EventType::kNormal, "SuccessfulDelete",
        "Stopped the virtual machine by deleting the virtual machine instance " +
            Str(vmi, {"metadata", "uid"}));
  return Ok();
}

std::string Controller::Impl::PrintableStatus(const Json& vm, const Json* vmi) const {
  const std::string phase = vmi ? Str(*vmi, {"status", "phase"}) : "";
  const bool final = vmi && IsFinalPhase(phase);
  if (BeingDeleted(vm)) return "Terminating";
  if (vmi && !final && (BeingDeleted(*vmi) || HasStopRequestForVmi(vm, vmi))) return "Stopping";
  if (vmi && phase == "Running") return ConditionTrue(*vmi, "Paused") ? "Paused" : "Running";
  if (vmi && IsStartingPhase(phase)) {
    // A containerDisk that cannot be pulled (KubeVirt reads it from the launcher pod).
    if (const Json* sync = Condition(*vmi, "Synchronized")) {
      const std::string reason = sync->value("reason", "");
      if (reason == "ErrImagePull" || reason == "ImagePullBackOff") return reason;
    }
    return "Starting";
  }
  const std::string strategy = RunStrategy(vm);
  const Json* count = At(vm, {"status", "startFailure", "consecutiveFailCount"});
  if ((!vmi || final) && count && count->is_number() && count->get<int64_t>() > 0 &&
      (strategy == "Always" || strategy == "RerunOnFailure" || strategy == "Once")) {
    return "CrashLoopBackOff";
  }
  if (vmi) return final ? "Stopped" : "Unknown";
  return "Stopped";
}

Status Controller::Impl::UpdateVmStatus(const Json& vm, const Json* vmi, const Status& sync_error,
                                        const std::string& key) {
  const std::string ns = Str(vm, {"metadata", "namespace"});
  const std::string name = Str(vm, {"metadata", "name"});
  const std::string now = Now();
  std::optional<int64_t> requeue_after;
  // observedGeneration: the VM generation the VMI runs. A spec change that kept the template
  // (start/stop flip runStrategy) still describes it, so the VMI's annotation is moved up first
  // (its own write, not inside the VM's retried status mutation).
  const int64_t generation = vm["metadata"].value("generation", int64_t{1});
  int64_t observed = 0;
  if (vmi) {
    const std::string ann = Str(*vmi, {"metadata", "annotations", kGenerationAnnotation});
    observed = ann.empty() ? 0 : std::strtoll(ann.c_str(), nullptr, 10);
    if (observed != generation &&
        Str(*vmi, {"metadata", "annotations", kTemplateHashAnnotation}) == TemplateHash(vm)) {
      auto bumped = registry_.Mutate(
          *vmi_rt_, ns, name, false,
          [&](Json& v) -> Status {
            v["metadata"]["annotations"][kGenerationAnnotation] = std::to_string(generation);
            return Ok();
          },
          WriteOptions{.field_manager = "virt-controller", .admit = false});
      if (bumped) observed = generation;
    }
  }
  auto r = registry_.Mutate(
      *vm_rt_, ns, name, true,
      [&](Json& o) -> Status {
        Json& status = o["status"];
        if (!status.is_object()) status = Json::object();
        // created/ready are omitempty booleans in KubeVirt.
        if (vmi) {
          status["created"] = true;
        } else {
          status.erase("created");
        }
        if (vmi && ConditionTrue(*vmi, "Ready")) {
          status["ready"] = true;
        } else {
          status.erase("ready");
        }
        if (vmi) {
          if (observed > 0) status["observedGeneration"] = observed;
          status["desiredGeneration"] = generation;
        }
        // The first state change request is done once acted upon.
        if (const Json* first = FirstStateChange(o)) {
          bool trim = false;
          const std::string action = first->value("action", "");
          if (action == "Stop") {
            trim = !vmi || !first->contains("uid") ||
                   (*first)["uid"] != Json(Str(*vmi, {"metadata", "uid"}));
          } else if (action == "Start") {
            trim = vmi && !BeingDeleted(*vmi);
          }
          if (trim) {
            Json& reqs = status["stateChangeRequests"];
            reqs.erase(reqs.begin());
            if (reqs.empty()) status.erase("stateChangeRequests");
          }
        }
        // startFailure (KubeVirt's syncStartFailureStatus).
        const std::string strategy = RunStrategy(o);
        if ((vmi && WasRunning(*vmi)) ||
            (strategy != "Always" && strategy != "RerunOnFailure" && strategy != "Once")) {
          status.erase("startFailure");
        } else if (vmi && IsFinalPhase(Str(*vmi, {"status", "phase"}))) {
          const std::string uid = Str(*vmi, {"metadata", "uid"});
          if (Str(status, {"startFailure", "lastFailedVMIUID"}) != uid) {
            int64_t count = 1;
            if (const Json* c = At(status, {"startFailure", "consecutiveFailCount"});
                c && c->is_number()) {
              count = c->get<int64_t>() + 1;
            }
            const int64_t delay = StartBackoffSeconds(count, options_.max_crash_loop_delay.count());
            status["startFailure"] = {
                {"consecutiveFailCount", count},
                {"lastFailedVMIUID", uid},
                {"retryAfterTimestamp", FormatRfc3339(Clock() + std::chrono::seconds(delay))}};
            requeue_after = delay;
          }
        }
        // Conditions: Ready from the VMI; Failure from this sync; the VMI's others copied.
        if (!vmi) {
          SetCondition(status, "Ready", "False", "VMINotExists", "VMI does not exist", now);
        } else if (const Json* rc = Condition(*vmi, "Ready")) {
          SetCondition(status, "Ready", rc->value("status", "False"), rc->value("reason", ""),
                       rc->value("message", ""), now);
        } else {
          SetCondition(status, "Ready", "False", "VMIConditionMissing",
                       "VMI is missing the Ready condition", now);
        }
        if (sync_error) {
          RemoveCondition(status, "Failure");
        } else {
          SetCondition(status, "Failure", "True", "FailedCreate", sync_error.error().message, now);
        }
        if (vmi) {
          std::set<std::string> vmi_types;
          if (const Json* cs = At(*vmi, {"status", "conditions"}); cs && cs->is_array()) {
            for (const auto& c : *cs) {
              const std::string type = c.value("type", "");
              if (type == "Ready" || type == "Failure") continue;
              vmi_types.insert(type);
              SetCondition(status, type, c.value("status", "False"), c.value("reason", ""),
                           c.value("message", ""), c.value("lastTransitionTime", now));
            }
          }
          if (status.contains("conditions")) {
            std::vector<std::string> drop;
            for (const auto& c : status["conditions"]) {
              const std::string type = c.value("type", "");
              if (type != "Ready" && type != "Failure" && vmi_types.count(type) == 0) {
                drop.push_back(type);
              }
            }
            for (const auto& t : drop) RemoveCondition(status, t);
          }
        }
        status["printableStatus"] = PrintableStatus(o, vmi);
        return Ok();
      },
      WriteOptions{.field_manager = "virt-controller", .admit = false});
  if (!r && r.error().code != 404) return r.error().ToError();
  if (requeue_after) queue_.AddAfter(key, std::chrono::seconds(*requeue_after + 1));

  // A finished VMI keeps the VM's finalizer until its final state is recorded above.
  if (vmi && IsFinalPhase(Str(*vmi, {"status", "phase"})) && HasFinalizer(*vmi, kVmFinalizer)) {
    auto f = registry_.Mutate(
        *vmi_rt_, ns, name, false,
        [](Json& v) -> Status {
          RemoveFinalizer(v, kVmFinalizer);
          return Ok();
        },
        WriteOptions{.field_manager = "virt-controller", .admit = false});
    if (!f && f.error().code != 404) return f.error().ToError();
  }
  return Ok();
}

// ---------------------------------------------------------------------------------------------
// VirtualMachineInstance → domain (KubeVirt's virt-handler).

Status Controller::Impl::WriteVmiStatus(
    const std::string& ns, const std::string& name,
    const std::function<void(Json& vmi, const std::string& now)>& edit) {
  const std::string now = Now();
  auto r = registry_.Mutate(
      *vmi_rt_, ns, name, false,
      [&](Json& o) -> Status {
        if (!o["status"].is_object()) o["status"] = Json::object();
        edit(o, now);
        return Ok();
      },
      WriteOptions{.field_manager = "virt-handler", .admit = false});
  if (!r && r.error().code != 404) return r.error().ToError();
  return Ok();
}

namespace {

void SetPhase(Json& vmi, const std::string& phase, const std::string& now) {
  Json& status = vmi["status"];
  if (status.value("phase", "") == phase) return;
  status["phase"] = phase;
  Json& ts = status["phaseTransitionTimestamps"];
  if (!ts.is_array()) ts = Json::array();
  ts.push_back({{"phase", phase}, {"phaseTransitionTimestamp", now}});
}

}  // namespace

Status Controller::Impl::CleanupDomain(const std::string& dname, const std::string& uid) {
  if (Status s = hv_->Destroy(dname); !s && s.error().code != Code::kNotFound) return s;
  if (Status s = hv_->Undefine(dname); !s && s.error().code != Code::kNotFound) return s;
  if (!uid.empty()) {
    RETURN_IF_ERROR(iso_->Release(uid));
    placed_.erase(uid);
    RETURN_IF_ERROR(net_->Cleanup(uid));
    agent_nics_.erase(uid);
    queue_.Add(kNetKey);
    if (options_.images != nullptr) RETURN_IF_ERROR(options_.images->Release(uid));
    RETURN_IF_ERROR(RemoveVmiFiles(options_.host.vms_dir, uid));
  }
  std::lock_guard lock(shutdown_mu_);
  shutdown_requested_.erase(uid);
  return Ok();
}

Status Controller::Impl::FinishVmi(const Json& vmi, const std::string& phase,
                                   const std::string& reason) {
  const std::string ns = Str(vmi, {"metadata", "namespace"});
  const std::string name = Str(vmi, {"metadata", "name"});
  RETURN_IF_ERROR(CleanupDomain(DomainName(ns, name), Str(vmi, {"metadata", "uid"})));
  if (puller_) {
    const std::string requester = "vmi/" + ns + "/" + name + "#" + Str(vmi, {"metadata", "uid"});
    puller_->Forget(requester);
    pull_announced_.erase(requester);
  }
  const bool deleting = BeingDeleted(vmi);
  RETURN_IF_ERROR(WriteVmiStatus(ns, name, [&](Json& o, const std::string& now) {
    if (!IsFinalPhase(o["status"].value("phase", ""))) {
      SetPhase(o, phase, now);
      if (!reason.empty()) o["status"]["reason"] = reason;
    }
    SetCondition(o["status"], "Ready", "False", "PodTerminating" /* KubeVirt's wording */,
                 "The VirtualMachineInstance is not running", now);
    RemoveCondition(o["status"], "Paused");
    RemoveCondition(o["status"], "AgentConnected");
    if (deleting) RemoveFinalizer(o, kVmiFinalizer);
  }));
  if (!IsFinalPhase(Str(vmi, {"status", "phase"}))) {
    EV_LOG(kInfo).Field("VM_NAMESPACE", ns).Field("VM_NAME", name).Field("PHASE", phase)
        << "VirtualMachineInstance " << ns << "/" << name << " " << phase
        << (reason.empty() ? "" : " (" + reason + ")");
  }
  return Ok();
}

Result<bool> Controller::Impl::EnsureImages(const Json& vmi, ContainerDisks& out,
                                            std::vector<std::string>& digests) {
  const std::string ns = Str(vmi, {"metadata", "namespace"});
  const std::string name = Str(vmi, {"metadata", "name"});
  const std::string key = "vmi/" + ns + "/" + name;
  const std::string requester = key + "#" + Str(vmi, {"metadata", "uid"});
  const Json* volumes = At(vmi, {"spec", "volumes"});
  if (volumes == nullptr || !volumes->is_array()) return true;
  struct Waiting {
    std::string image;
    ImageState state;
  };
  std::vector<Waiting> waiting;
  std::vector<std::string> ready_images;
  for (const auto& volume : *volumes) {
    const Json* cd = At(volume, {"containerDisk"});
    if (cd == nullptr || !cd->is_object()) continue;
    const std::string vname = volume.value("name", "");
    const std::string image = cd->value("image", "");
    if (!puller_) {
      return Error(Code::kUnavailable,
                   "volume " + vname + ": containerDisk volumes need the image cache");
    }
    image::Keychain credentials;
    if (const std::string secret = cd->value("imagePullSecret", ""); !secret.empty()) {
      // As kubelet does, a pull secret that cannot be used is reported and the pull goes on
      // with the daemon's own credentials.
      auto keychain = PullSecretKeychain(ns, secret);
      if (keychain) {
        credentials = std::move(*keychain);
      } else if (pull_announced_.count(requester) == 0) {
        Event(vmi, EventType::kWarning, "FailedToRetrieveImagePullSecret",
              "Unable to retrieve some image pull secrets (" + secret +
                  "); attempting to pull the image may not succeed: " + keychain.error().message);
      }
    }
    ImageState st =
        puller_->Ensure(requester, image, ParsePullPolicy(cd->value("imagePullPolicy", "")),
                        credentials, cd->value("path", ""));
    if (st.kind == ImageState::Kind::kReady) {
      out[vname] = ContainerDiskSource{st.image.disk_path, st.image.format == "raw"
                                                               ? vmm::DiskFormat::kRaw
                                                               : vmm::DiskFormat::kQcow2};
      digests.push_back(st.image.manifest_digest);
      ready_images.push_back(image);
      continue;
    }
    waiting.push_back({image, std::move(st)});
  }
  if (waiting.empty()) {
    if (pull_announced_.erase(requester) != 0) {
      for (const auto& image : ready_images) {
        Event(vmi, EventType::kNormal, "Pulled", "Successfully pulled image \"" + image + "\"");
      }
    }
    return true;
  }
  // Report the first image that is not ready, the way a launcher pod's waiting container
  // shows on a KubeVirt VMI: phase Scheduling and a Synchronized=False condition whose reason
  // is ErrImagePull or ImagePullBackOff (the VM's printableStatus follows it).
  const Waiting& w = waiting.front();
  std::string reason, message;
  const auto now_steady = std::chrono::steady_clock::now();
  switch (w.state.kind) {
    case ImageState::Kind::kPulling: {
      reason = "ImagePulling";
      char buf[96];
      const double mib = 1024.0 * 1024.0;
      if (w.state.progress.total_bytes > 0) {
        std::snprintf(buf, sizeof buf, "%.1f of %.1f MiB",
                      static_cast<double>(w.state.progress.done_bytes) / mib,
                      static_cast<double>(w.state.progress.total_bytes) / mib);
      } else {
        std::snprintf(buf, sizeof buf, "resolving");
      }
      message = "pulling image \"" + w.image + "\": " + buf;
      if (pull_announced_.insert(requester).second) {
        Event(vmi, EventType::kNormal, "Pulling", "Pulling image \"" + w.image + "\"");
      }
      queue_.AddAfter(key, 2s);
      break;
    }
    case ImageState::Kind::kFailed:
      reason = "ErrImagePull";
      message = w.state.message;
      pull_announced_.insert(requester);
      Event(vmi, EventType::kWarning, "Failed",
            "Failed to pull image \"" + w.image + "\": " + w.state.message);
      EV_LOG(kWarning).Field("VM_NAMESPACE", ns).Field("VM_NAME", name).Field("IMAGE", w.image)
          << "VMI " << ns << "/" << name << ": pull of " << w.image
          << " failed: " << w.state.message;
      queue_.AddAfter(
          key, std::max<std::chrono::steady_clock::duration>(w.state.retry_at - now_steady, 100ms));
      break;
    case ImageState::Kind::kBackOff:
      reason = "ImagePullBackOff";
      message = "Back-off pulling image \"" + w.image + "\": " + w.state.message;
      queue_.AddAfter(
          key, std::max<std::chrono::steady_clock::duration>(w.state.retry_at - now_steady, 100ms));
      break;
    case ImageState::Kind::kReady:
      break;
  }
  const Json* sync = Condition(vmi, "Synchronized");
  const bool same = Str(vmi, {"status", "phase"}) == "Scheduling" &&
                    HasFinalizer(vmi, kVmiFinalizer) && sync != nullptr &&
                    sync->value("reason", "") == reason && sync->value("message", "") == message;
  if (same) return false;
  RETURN_IF_ERROR(WriteVmiStatus(ns, name, [&](Json& o, const std::string& now) {
    AddFinalizer(o, kVmiFinalizer);
    if (o["status"].value("phase", "") != "Scheduling") SetPhase(o, "Scheduling", now);
    SetCondition(o["status"], "Synchronized", "False", reason, message, now);
    SetCondition(o["status"], "Ready", "False", "GuestNotRunning",
                 "Guest VM is not reported as running", now);
  }));
  return false;
}

Result<Json> Controller::Impl::GetSecret(const std::string& ns, const std::string& name) {
  const api::ResourceType* rt = registry_.ByKind("", "Secret");
  if (!rt) return Error(Code::kUnsupported, "core/v1 Secrets are not served");
  ASSIGN_OR_RETURN(auto s, GetObject(rt, ns, name));
  if (!s) return Error(Code::kNotFound, "secret \"" + name + "\" not found");
  return std::move(*s);
}

Result<image::Keychain> Controller::Impl::PullSecretKeychain(const std::string& ns,
                                                             const std::string& name) {
  ASSIGN_OR_RETURN(Json secret, GetSecret(ns, name));
  const std::string type = Str(secret, {"type"});
  std::string field;
  if (type == "kubernetes.io/dockerconfigjson") {
    field = ".dockerconfigjson";
  } else if (type == "kubernetes.io/dockercfg") {
    field = ".dockercfg";
  } else {
    return Error(Code::kInvalid, "secret \"" + name + "\" is of type \"" + type +
                                     "\", not kubernetes.io/dockerconfigjson");
  }
  const Json* data = At(secret, {"data", field.c_str()});
  if (data == nullptr || !data->is_string()) {
    return Error(Code::kInvalid, "secret \"" + name + "\" has no " + field);
  }
  ASSIGN_OR_RETURN(std::string text, api::machinery::Base64Decode(data->get<std::string>()));
  if (field == ".dockercfg") {
    // The legacy form is the "auths" object itself.
    text = "{\"auths\":" + text + "}";
  }
  auto keychain = image::ParseDockerConfig(text);
  if (!keychain) return Error(keychain.error()).Wrap("secret \"" + name + "\"");
  return keychain;
}

Status Controller::Impl::StartDomain(const Json& vmi, const ContainerDisks& container_disks,
                                     const std::vector<std::string>& image_digests) {
  const std::string ns = Str(vmi, {"metadata", "namespace"});
  const std::string name = Str(vmi, {"metadata", "name"});
  auto secrets = [this](const std::string& sns, const std::string& sname) {
    return GetSecret(sns, sname);
  };
  // NICs first: their addresses, and the DHCP host entries and rules in place before the
  // guest asks for a lease.
  ASSIGN_OR_RETURN(std::vector<NicAttachment> nics, net_->Attach(vmi));
  RETURN_IF_ERROR(SyncNetwork());
  ASSIGN_OR_RETURN(VmiPlan plan, PlanVmi(vmi, options_.host, secrets, options_.claims,
                                         container_disks, std::optional(std::move(nics))));
  ASSIGN_OR_RETURN(cgroup::Limits limits, LimitsForVmi(vmi));
  // Recorded before the overlay exists: a prune never removes an image a VMI boots from.
  for (const auto& digest : image_digests) {
    RETURN_IF_ERROR(options_.images->Use(plan.uid, digest));
  }
  RETURN_IF_ERROR(PrepareVmiFiles(plan));
  RETURN_IF_ERROR(hv_->Define(plan.domain));
  if (Status s = hv_->StartPaused(plan.domain.name); !s && s.error().code != Code::kConflict) {
    return s;
  }
  // vCPUs are still stopped: QEMU goes into the VMI's cgroup, under its device filter and
  // limits, before any guest code runs.
  ASSIGN_OR_RETURN(pid_t pid, hv_->QemuPid(plan.domain.name));
  ASSIGN_OR_RETURN(cgroup::ApplyReport report, iso_->Place(plan.uid, pid, limits, plan.grants));
  placed_.insert(plan.uid);
  if (!report.unavailable.empty()) {
    std::string missing;
    for (const auto& c : report.unavailable) missing += (missing.empty() ? "" : ", ") + c;
    Event(
        vmi, EventType::kWarning, "CgroupControllersUnavailable",
        "cgroup controllers not available on this host, their limits are not enforced: " + missing);
    EV_LOG(kWarning).Field("VM_NAMESPACE", ns).Field("VM_NAME", name)
        << "VMI " << ns << "/" << name << ": cgroup controllers not available, limits not "
        << "enforced: " << missing;
  }
  if (Str(vmi, {"spec", "startStrategy"}) != "Paused")
    RETURN_IF_ERROR(hv_->Resume(plan.domain.name));
  return Ok();
}

Status Controller::Impl::ReconcileVmi(const std::string& ns, const std::string& name,
                                      bool after_start) {
  const std::string dname = DomainName(ns, name);
  ASSIGN_OR_RETURN(auto vmi_opt, GetObject(vmi_rt_, ns, name));
  if (!vmi_opt) {
    // No VMI: a domain of that name is an orphan (embedded root only: every domain there is
    // ours). Its files were removed with the VMI or go at the next start.
    if (Embedded()) {
      auto st = hv_->State(dname);
      if (st) {
        EV_LOG(kNotice).Field("DOMAIN", dname) << "removing orphaned domain " << dname;
        RETURN_IF_ERROR(CleanupDomain(dname, ""));
      }
    }
    return ReleaseAddresses(ns, name);
  }
  const Json vmi = std::move(*vmi_opt);
  const std::string uid = Str(vmi, {"metadata", "uid"});
  const std::string phase = Str(vmi, {"status", "phase"});
  const std::string key = "vmi/" + ns + "/" + name;

  auto state = hv_->State(dname);
  if (!state && state.error().code != Code::kNotFound) return Error(state.error());
  const bool exists = state.has_value();
  const vmm::DomainStatus ds = exists ? *state : vmm::DomainStatus{};
  const bool active = exists && DomainActive(ds.state);

  if (BeingDeleted(vmi)) {
    if (IsFinalPhase(phase) && !active) {
      return FinishVmi(vmi, phase, "");  // removes our finalizer
    }
    if (!active) {
      const bool graceful = exists && ds.reason_text == "shutdown";
      return FinishVmi(vmi, graceful || !exists ? "Succeeded" : "Failed", "");
    }
    const int64_t grace = GraceSeconds(vmi);
    auto deleted_at = ParseRfc3339(Str(vmi, {"metadata", "deletionTimestamp"}));
    const auto deadline = (deleted_at ? *deleted_at : Clock()) + std::chrono::seconds(grace);
    const bool paused = ds.state == vmm::DomainState::kPaused;
    if (grace == 0 || paused || Clock() >= deadline) {
      // A paused guest cannot react to the power button; a passed deadline ends the wait.
      RETURN_IF_ERROR(hv_->Destroy(dname));
      Event(vmi, EventType::kNormal, "Deleted", "Signaled Deletion");
      queue_.Add(key);
      return Ok();
    }
    bool first = false;
    {
      std::lock_guard lock(shutdown_mu_);
      first = shutdown_requested_.insert(uid).second;
    }
    if (first) {
      if (Status s = hv_->RequestShutdown(dname); !s && s.error().code != Code::kConflict) {
        return s;
      }
      Event(vmi, EventType::kNormal, "ShuttingDown", "Signaled Graceful Shutdown");
      EV_LOG(kInfo).Field("VM_NAMESPACE", ns).Field("VM_NAME", name)
          << "graceful shutdown of " << ns << "/" << name << " (grace " << grace << "s)";
    }
    queue_.AddAfter(key, std::min<WallClock::duration>(deadline - Clock() + 100ms, 2s));
    return Ok();
  }

  if (IsFinalPhase(phase)) {
    if (exists) RETURN_IF_ERROR(CleanupDomain(dname, uid));
    return Ok();
  }
  const bool to_start = IsStartingPhase(phase) && !active && !after_start;
  ContainerDisks container_disks;
  std::vector<std::string> image_digests;
  if (to_start) {
    // Images first: the VMI stays Scheduling while its containerDisks are pulled.
    ASSIGN_OR_RETURN(bool ready, EnsureImages(vmi, container_disks, image_digests));
    if (!ready) return Ok();
  }
  if (!HasFinalizer(vmi, kVmiFinalizer) || (to_start && phase != "Scheduled")) {
    // The finalizer, and phase Scheduled recorded before the domain exists (a restart from
    // here defines it again), in one write; then on to the start in this same reconcile.
    RETURN_IF_ERROR(WriteVmiStatus(ns, name, [&](Json& o, const std::string& now) {
      AddFinalizer(o, kVmiFinalizer);
      if (!to_start) return;
      SetPhase(o, "Scheduled", now);
      RemoveCondition(o["status"], "Synchronized");
      o["status"]["nodeName"] = options_.node_name;
      SetCondition(o["status"], "Ready", "False", "GuestNotRunning",
                   "Guest VM is not reported as running", now);
    }));
    if (!to_start) return Ok();
  }

  if (to_start) {
    if (Status s = StartDomain(vmi, container_disks, image_digests); !s) {
      Event(vmi, EventType::kWarning, "SyncFailed", s.error().message);
      EV_LOG(kWarning).Field("VM_NAMESPACE", ns).Field("VM_NAME", name)
          << "start of " << ns << "/" << name << " failed: " << s.error().message;
      // Like a virt-launcher that fails: the VMI fails (a VM controller may back off and retry).
      (void)CleanupDomain(dname, uid);
      return WriteVmiStatus(ns, name, [&](Json& o, const std::string& now) {
        SetPhase(o, "Failed", now);
        o["status"]["reason"] = "SyncFailed";
        SetCondition(o["status"], "Synchronized", "False", "SyncFailed", s.error().message, now);
        SetCondition(o["status"], "Ready", "False", "GuestNotRunning",
                     "Guest VM is not reported as running", now);
      });
    }
    Event(vmi, EventType::kNormal, "Started", "VirtualMachineInstance started.");
    // Observe and report the new state now, not after every other queued key: with many VMs
    // starting at once a re-queue would hold each one's Running back until the batch ends.
    return ReconcileVmi(ns, name, /*after_start=*/true);
  }

  // Running (or started before a restart): report what libvirt says.
  if (!active) {
    std::string final_phase = "Failed";
    std::string reason;
    if (exists && ds.state == vmm::DomainState::kShutOff && ds.reason_text == "shutdown") {
      final_phase = "Succeeded";
      Event(vmi, EventType::kNormal, "Stopped", "The VirtualMachineInstance was shut down.");
    } else {
      reason = exists ? "domain " + std::string(vmm::DomainStateName(ds.state)) +
                            (ds.reason_text.empty() ? "" : " (" + ds.reason_text + ")")
                      : "the domain no longer exists (host restart or QEMU killed)";
      Event(vmi, EventType::kWarning, "Stopped", "The VirtualMachineInstance crashed: " + reason);
    }
    return FinishVmi(vmi, final_phase, reason);
  }
  if (ds.state == vmm::DomainState::kCrashed) {
    return FinishVmi(vmi, "Failed", "guest crashed");
  }
  const bool paused = ds.state == vmm::DomainState::kPaused;
  RETURN_IF_ERROR(EnsurePlaced(dname, uid));
  bool volumes_requeue = false;
  Json volume_status = Json::array();
  if (auto vs = SyncVolumes(vmi, dname, volumes_requeue)) {
    volume_status = std::move(*vs);
  } else {
    EV_LOG(kWarning).Field("VM_NAMESPACE", ns).Field("VM_NAME", name)
        << "volumes of " << ns << "/" << name << ": " << vs.error().message;
    volumes_requeue = true;
  }
  if (volumes_requeue) queue_.AddAfter(key, 1s);
  // The guest agent: connected or not, and the OS it reports (asked once per connection).
  bool agent = false;
  std::optional<Json> os_info;
  if (!paused) {
    auto connected = hv_->AgentConnected(dname);
    agent = connected && *connected;
    const Json* known = At(vmi, {"status", "guestOSInfo"});
    if (agent && !ConditionTrue(vmi, "AgentConnected")) {
      auto reply = hv_->AgentCommand(dname, R"({"execute":"guest-get-osinfo"})", 5s);
      if (reply) {
        if (auto r = AgentReturn(*reply)) os_info = GuestOsInfo(*r);
      } else if (!known || known->empty()) {
        agent = false;  // not answering yet: try again at the next reconcile
        queue_.AddAfter(key, 2s);
      }
    }
  }
  // status.interfaces: DHCP leases of the default network, and what the agent sees.
  // The agent is asked only for VMIs with host-network NICs (their addresses come from DHCP
  // servers that are not ours), at most every 20 s, and not while a volume operation is in
  // flight. Asking it on every reconcile broke disk hotplug: after a hot-unplug and a daemon
  // restart, QEMU still held the detached disk's image and device_add of it again failed with
  // "Failed to get write lock" (vm_devices_test; cause not understood yet, see the README).
  bool host_nics = false;
  if (auto reqs = NetworkRequests(vmi)) {
    for (const auto& r : *reqs) host_nics = host_nics || !r.pod;
  }
  Json agent_nics;
  if (agent && host_nics) {
    auto& [asked, known_nics] = agent_nics_[uid];
    const auto now = std::chrono::steady_clock::now();
    if (!volumes_requeue && (asked == std::chrono::steady_clock::time_point() ||
                             now - asked >= std::chrono::seconds(20))) {
      asked = now;
      auto reply = hv_->AgentCommand(dname, R"({"execute":"guest-network-get-interfaces"})", 2s);
      if (reply) {
        if (auto r = AgentReturn(*reply)) known_nics = std::move(*r);
      }
    }
    agent_nics = known_nics;
  }
  bool nics_complete = true;
  Json interfaces =
      net_->InterfaceStatus(vmi, agent_nics.is_array() ? &agent_nics : nullptr, &nics_complete);
  if (!nics_complete && !paused) queue_.AddAfter(key, 2s);  // until the guest took its lease
  return WriteVmiStatus(ns, name, [&](Json& o, const std::string& now) {
    const bool was_running = Str(o, {"status", "phase"}) == "Running";
    SetPhase(o, "Running", now);
    Json& status = o["status"];
    status["nodeName"] = options_.node_name;
    status.erase("reason");
    RemoveCondition(status, "Synchronized");
    SetCondition(status, "Ready", "True", "", "", now);
    if (paused) {
      std::string reason = "PausedByUser";
      std::string message = "VMI was paused by user";
      if (ds.reason_text == "ioerror") {
        reason = "PausedIOError";
        message = "VMI was paused, low-level IO error detected";
      } else if (const Json* pc = Condition(o, "Paused"); pc && pc->value("status", "") == "True") {
        reason = pc->value("reason", reason);
        message = pc->value("message", message);
      } else if (Str(o, {"spec", "startStrategy"}) == "Paused" && !was_running) {
        reason = "PausedStartStrategy";
        message = "VMI was started in paused state";
      }
      SetCondition(status, "Paused", "True", reason, message, now);
    } else {
      RemoveCondition(status, "Paused");
    }
    const Json* cpu = At(o, {"spec", "domain", "cpu"});
    status["currentCPUTopology"] = {{"sockets", cpu ? cpu->value("sockets", 1) : 1},
                                    {"cores", cpu ? cpu->value("cores", 1) : 1},
                                    {"threads", cpu ? cpu->value("threads", 1) : 1}};
    if (const Json* m = At(o, {"spec", "domain", "machine"})) status["machine"] = *m;
    status["qosClass"] = "Burstable";
    if (volume_status.empty()) {
      status.erase("volumeStatus");
    } else {
      status["volumeStatus"] = volume_status;
    }
    if (interfaces.empty()) {
      status.erase("interfaces");
    } else {
      status["interfaces"] = interfaces;
    }
    if (os_info) status["guestOSInfo"] = *os_info;
    if (!status.contains("guestOSInfo")) status["guestOSInfo"] = Json::object();
    if (agent) {
      SetCondition(status, "AgentConnected", "True", "", "", now);
    } else if (!paused) {
      RemoveCondition(status, "AgentConnected");
    }
  });
}

Status Controller::Impl::EnsurePlaced(const std::string& dname, const std::string& uid) {
  if (placed_.count(uid) != 0) return Ok();
  // After a daemon restart (or a crash during a start): the cgroup, the filter and the map are
  // made to match LMDB again; QEMU kept running meanwhile.
  ASSIGN_OR_RETURN(pid_t pid, hv_->QemuPid(dname));
  RETURN_IF_ERROR(iso_->Reconcile(uid, pid));
  placed_.insert(uid);
  return Ok();
}

namespace {

const Json* FindNamed(const Json* list, const std::string& name) {
  if (list == nullptr || !list->is_array()) return nullptr;
  for (const auto& v : *list) {
    if (v.is_object() && v.value("name", "") == name) return &v;
  }
  return nullptr;
}

}  // namespace

Result<Json> Controller::Impl::SyncVolumes(const Json& vmi, const std::string& dname,
                                           bool& requeue) {
  const std::string uid = Str(vmi, {"metadata", "uid"});
  const Json* volumes = At(vmi, {"spec", "volumes"});
  ASSIGN_OR_RETURN(auto live_list, hv_->LiveDisks(dname));
  std::map<std::string, vmm::LiveDisk> live;
  for (auto& d : live_list) live.emplace(d.name, std::move(d));
  std::set<std::string> wanted;  // hotpluggable volumes of the spec
  if (volumes && volumes->is_array()) {
    for (const auto& v : *volumes) {
      if (api::subresources::IsHotplugVolume(v)) wanted.insert(v.value("name", ""));
    }
  }
  // 1. Grants a crash (or an earlier pass) left pending are settled against the live domain.
  ASSIGN_OR_RETURN(auto grants, iso_->Grants(uid));
  for (const auto& g : grants) {
    const bool attached = live.count(g.volume) != 0;
    if (g.state == GrantState::kPendingAdd) {
      if (attached) {
        RETURN_IF_ERROR(iso_->CommitGrant(uid, g.volume));
      } else if (!wanted.count(g.volume)) {
        RETURN_IF_ERROR(iso_->FinishRevoke(uid, g.volume));
      }  // else: attached again below
    } else if (g.state == GrantState::kPendingRemove) {
      if (attached) {
        // QEMU still has it: (re)ask for the detach; the grant goes once the disk is gone.
        if (Status st = hv_->DetachDisk(dname, g.volume, false); !st) {
          EV_LOG(kDebug) << "detach " << g.volume << ": " << st.error().message;
        }
        requeue = true;
      } else {
        RETURN_IF_ERROR(iso_->FinishRevoke(uid, g.volume));
      }
    } else if (!attached && !wanted.count(g.volume)) {
      // An active grant whose disk is gone and not wanted (e.g. removed while we were down).
      RETURN_IF_ERROR(iso_->BeginRevoke(uid, g.volume));
      RETURN_IF_ERROR(iso_->FinishRevoke(uid, g.volume));
    }
  }
  std::map<std::string, std::pair<std::string, std::string>> pending;  // volume → reason, msg
  std::map<std::string, ClaimSource> claims;
  // 2. Attach what the spec wants and the domain lacks: grant (durable intent first), attach,
  //    record completion; a failed attach takes its grant back.
  for (const auto& volume : wanted) {
    if (live.count(volume)) continue;
    auto plan = PlanHotplugDisk(vmi, volume, options_.host, options_.claims);
    if (!plan) {
      const bool waiting = plan.error().code == Code::kUnavailable;
      pending[volume] = {waiting ? "PVCNotReady" : "AttachFailed", plan.error().message};
      continue;
    }
    claims[volume] = plan->claim;
    Status attach = Ok();
    for (const auto& grant : plan->grants) {
      attach = iso_->BeginGrant(uid, grant);
      if (!attach) break;
    }
    if (attach) attach = hv_->AttachDisk(dname, plan->disk, false);
    if (!attach) {
      for (const auto& grant : plan->grants) (void)iso_->FinishRevoke(uid, grant.volume);
      pending[volume] = {"AttachFailed", attach.error().message};
      Event(vmi, EventType::kWarning, "VolumeAttachFailed",
            "attach of volume " + volume + " failed: " + attach.error().message);
      requeue = true;
      continue;
    }
    FaultPoint("hotplug.after-attach");
    for (const auto& grant : plan->grants) RETURN_IF_ERROR(iso_->CommitGrant(uid, grant.volume));
    Event(vmi, EventType::kNormal, "VolumeAttached", "Attached hot-plugged volume " + volume);
    EV_LOG(kInfo).Field("VM_UID", uid) << "attached volume " << volume << " to " << dname;
  }
  // 3. Detach attached disks the spec no longer has: revoke intent first, then the detach;
  //    the grant goes when the disk is gone (step 1 of a later pass).
  for (const auto& [name, disk] : live) {
    if (name.empty() || FindNamed(volumes, name) != nullptr) continue;
    bool granted = false;
    for (const auto& g : grants) granted |= g.volume == name;
    if (granted) RETURN_IF_ERROR(iso_->BeginRevoke(uid, name));
    if (Status st = hv_->DetachDisk(dname, name, false); !st) {
      if (st.error().code != Code::kNotFound) {
        EV_LOG(kDebug) << "detach " << name << ": " << st.error().message;
      }
    } else {
      Event(vmi, EventType::kNormal, "VolumeDetaching", "Detaching volume " + name);
    }
    FaultPoint("hotplug.after-detach");
    requeue = true;
  }
  // 4. status.volumeStatus from the domain as it is now.
  ASSIGN_OR_RETURN(live_list, hv_->LiveDisks(dname));
  live.clear();
  for (auto& d : live_list) live.emplace(d.name, std::move(d));
  Json out = Json::array();
  auto claim_info = [&](const Json& v) -> std::optional<Json> {
    const Json* pvc = At(v, {"persistentVolumeClaim"});
    if (!pvc) pvc = At(v, {"ephemeral", "persistentVolumeClaim"});
    if (!pvc || !options_.claims) return std::nullopt;
    const std::string name = v.value("name", "");
    auto it = claims.find(name);
    ClaimSource c;
    if (it != claims.end()) {
      c = it->second;
    } else {
      auto found = options_.claims(Str(vmi, {"metadata", "namespace"}), Str(*pvc, {"claimName"}));
      if (!found) return std::nullopt;
      c = std::move(*found);
    }
    Json info = {{"accessModes", c.access_modes},
                 {"capacity", {{"storage", std::to_string(c.capacity_bytes)}}},
                 {"volumeMode", c.block ? "Block" : "Filesystem"}};
    return info;
  };
  if (volumes && volumes->is_array()) {
    for (const auto& v : *volumes) {
      const std::string name = v.value("name", "");
      Json st = {{"name", name}};
      auto l = live.find(name);
      if (l != live.end()) st["target"] = l->second.target;
      if (api::subresources::IsHotplugVolume(v)) {
        st["hotplugVolume"] = Json::object();
        if (l != live.end()) {
          st["phase"] = "Ready";
          st["reason"] = "VolumeReady";
          st["message"] = "Successfully attach hotplugged volume " + name + " to VM";
        } else if (auto p = pending.find(name); p != pending.end()) {
          st["phase"] = p->second.first == "PVCNotReady" ? "Pending" : "Bound";
          st["reason"] = p->second.first;
          st["message"] = p->second.second;
        } else {
          st["phase"] = "Bound";
          st["reason"] = "VolumeBound";
          st["message"] = "PVC is bound, attaching";
        }
      }
      if (auto info = claim_info(v)) st["persistentVolumeClaimInfo"] = std::move(*info);
      out.push_back(std::move(st));
    }
  }
  for (const auto& [name, disk] : live) {
    if (name.empty() || FindNamed(volumes, name) != nullptr) continue;
    out.push_back({{"name", name},
                   {"target", disk.target},
                   {"hotplugVolume", Json::object()},
                   {"phase", "Detaching"},
                   {"reason", "VolumeDetaching"},
                   {"message", "Detaching volume " + name}});
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Controller::~Controller() { Stop(); }

Result<std::unique_ptr<Controller>> Controller::Start(api::machinery::Machinery& machinery,
                                                      api::machinery::EventRecorder* events,
                                                      ControllerOptions options) {
  auto impl = std::make_unique<Impl>(machinery, events, std::move(options));
  RETURN_IF_ERROR(impl->Open());
  Impl* p = impl.get();
  p->loop_.Start();
  p->watcher_ = std::thread([p] { p->WatchLoop(); });
  return std::unique_ptr<Controller>(new Controller(std::move(impl)));
}

void Controller::Stop() {
  if (impl_) impl_->Stop();
}

vmm::Accelerator Controller::accelerator() const { return impl_->hv_->accelerator(); }
const std::string& Controller::libvirt_uri() const { return impl_->hv_->uri(); }

size_t Controller::QueueDepth() const { return impl_->queue_.Len(); }

Result<std::vector<vmm::DomainStats>> Controller::DomainStats() const {
  // hv_ is set in Start and reset only by Stop, after the API server has stopped.
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopped");
  return impl_->hv_->AllDomainStats();
}

bool Controller::WaitIdleForTest(std::chrono::milliseconds timeout) {
  return impl_->loop_.WaitIdle(timeout);
}

namespace {
std::string VmiDomain(const Json& vmi) {
  return DomainName(Str(vmi, {"metadata", "namespace"}), Str(vmi, {"metadata", "name"}));
}
std::string VmiKey(const Json& vmi) {
  return "vmi/" + Str(vmi, {"metadata", "namespace"}) + "/" + Str(vmi, {"metadata", "name"});
}
}  // namespace

Status Controller::Pause(const Json& vmi) {
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopping");
  RETURN_IF_ERROR(impl_->hv_->Pause(VmiDomain(vmi)));
  impl_->queue_.Add(VmiKey(vmi));
  return Ok();
}

Status Controller::Unpause(const Json& vmi) {
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopping");
  RETURN_IF_ERROR(impl_->hv_->Resume(VmiDomain(vmi)));
  impl_->queue_.Add(VmiKey(vmi));
  return Ok();
}

Status Controller::SoftReboot(const Json& vmi) {
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopping");
  return impl_->hv_->Reboot(VmiDomain(vmi));
}

Status Controller::Reset(const Json& vmi) {
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopping");
  return impl_->hv_->Reset(VmiDomain(vmi));
}

Result<std::unique_ptr<api::Stream>> Controller::OpenStream(const Json& vmi, StreamKind kind,
                                                            uint16_t port,
                                                            std::string_view protocol) {
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopping");
  const std::string dname = VmiDomain(vmi);
  const std::string uid = Str(vmi, {"metadata", "uid"});
  auto state = impl_->hv_->State(dname);
  if (!state || !DomainActive(state->state)) {
    return Error(Code::kUnavailable, "VMI is not running");
  }
  const Json* devices = At(vmi, {"spec", "domain", "devices"});
  auto enabled = [&](const char* key) {
    const Json* v = devices != nullptr ? At(*devices, {key}) : nullptr;
    return v == nullptr || !v->is_boolean() || v->get<bool>();
  };
  const std::string dir = impl_->options_.host.vms_dir + "/" + uid;
  switch (kind) {
    case StreamKind::kConsole: {
      if (!enabled("autoattachSerialConsole")) {
        return Error(Code::kNotFound, "the VMI has no serial console (autoattachSerialConsole)");
      }
      // The console the running domain has, not the kind vmi_domain.cc defines today: a
      // domain an older edgevirtd started keeps its unix socket console until it stops.
      auto console = impl_->hv_->LiveConsole(dname);
      if (!console) {
        if (console.error().code == Code::kConflict) {
          return Error(Code::kUnavailable, "VMI is not running");
        }
        return Error(console.error());
      }
      if (console->kind == vmm::ConsoleKind::kNone) {
        return Error(Code::kNotFound, "the VMI's domain has no serial console");
      }
      vmm::Hypervisor& hv = *impl_->hv_;
      return impl_->sessions_.Open(uid, "console",
                                   [&] { return OpenSerialConsole(hv, dname, *console); });
    }
    case StreamKind::kVnc: {
      if (!enabled("autoattachGraphicsDevice")) {
        return Error(Code::kNotFound, "the VMI has no graphics device (autoattachGraphicsDevice)");
      }
      ASSIGN_OR_RETURN(auto stream, OpenUnixStream(dir + "/vnc/vnc.sock"));
      return impl_->sessions_.Adopt(uid, "vnc", std::move(stream));
    }
    case StreamKind::kPortForward: {
      ASSIGN_OR_RETURN(std::string ip, impl_->net_->PodAddress(vmi));
      if (protocol == "udp") return OpenUdpStream(ip, port, net::kPortForwardMark);
      return OpenTcpStream(ip, port, std::chrono::seconds(5), net::kPortForwardMark);
    }
  }
  return Error(Code::kInvalid, "unknown stream kind");
}

Result<std::string> Controller::Screenshot(const Json& vmi) {
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopping");
  auto shot = impl_->hv_->Screenshot(VmiDomain(vmi));
  if (!shot && shot.error().code == Code::kConflict) {
    return Error(Code::kUnavailable, shot.error().message);
  }
  return shot;
}

Result<Json> Controller::GuestAgent(const Json& vmi, std::string_view kind) {
  if (!impl_->hv_) return Error(Code::kUnavailable, "the controller is stopping");
  vmm::Hypervisor& hv = *impl_->hv_;
  const std::string dname = VmiDomain(vmi);
  auto run = [&](const char* command) -> Result<Json> {
    auto reply = hv.AgentCommand(dname, std::string(R"({"execute":")") + command + "\"}", 10s);
    if (!reply) {
      if (reply.error().code == Code::kConflict) {
        return Error(Code::kConflict, "VMI does not have guest agent connected");
      }
      return Error(reply.error());
    }
    return AgentReturn(*reply);
  };
  if (kind == "userlist") {
    ASSIGN_OR_RETURN(Json users, run("guest-get-users"));
    return Json{{"kind", "VirtualMachineInstanceGuestOSUserList"},
                {"apiVersion", "kubevirt.io/v1"},
                {"metadata", Json::object()},
                {"items", GuestUsers(users)}};
  }
  if (kind == "filesystemlist") {
    ASSIGN_OR_RETURN(Json fs, run("guest-get-fsinfo"));
    return Json{{"kind", "VirtualMachineInstanceFileSystemList"},
                {"apiVersion", "kubevirt.io/v1"},
                {"metadata", Json::object()},
                {"items", GuestFileSystems(fs)}};
  }
  if (kind != "guestosinfo") return Error(Code::kNotFound, "unknown guest agent query");
  // KubeVirt's VirtualMachineInstanceGuestAgentInfo, from the same agent commands its
  // virt-launcher polls.
  ASSIGN_OR_RETURN(Json info, run("guest-info"));
  Json out = {{"kind", "VirtualMachineInstanceGuestAgentInfo"}, {"apiVersion", "kubevirt.io/v1"}};
  out["guestAgentVersion"] = info.value("version", "");
  Json commands = Json::array();
  if (info.contains("supported_commands") && info["supported_commands"].is_array()) {
    for (const auto& c : info["supported_commands"]) {
      commands.push_back({{"name", c.value("name", "")}, {"enabled", c.value("enabled", false)}});
    }
  }
  out["supportedCommands"] = std::move(commands);
  if (auto host = run("guest-get-host-name")) out["hostname"] = host->value("host-name", "");
  ASSIGN_OR_RETURN(Json os, run("guest-get-osinfo"));
  out["os"] = GuestOsInfo(os);
  if (auto tz = run("guest-get-timezone")) {
    // KubeVirt's form: "<zone>, <offset seconds>".
    out["timezone"] = tz->value("zone", "") + ", " + std::to_string(tz->value("offset", 0));
  }
  if (auto users = run("guest-get-users")) out["userList"] = GuestUsers(*users);
  if (auto fs = run("guest-get-fsinfo")) out["fsInfo"] = {{"disks", GuestFileSystems(*fs)}};
  out["fsFreezeStatus"] = "thawed";
  return out;
}

}  // namespace edgevirt::daemon
