#include "vmm/hypervisor.h"

#include <fcntl.h>
#include <grp.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/fd.h"
#include "vmm/console_libvirt.h"
#include "vmm/domain_stats_libvirt.h"
#include "vmm/hotplug.h"
#include "vmm/live_xml.h"

namespace edgevirt::vmm {
namespace {

using ConnPtr = UniqueHandle<virConnect, virConnectClose>;
using DomPtr = UniqueHandle<virDomain, virDomainFree>;

// libvirt keeps the last error per thread; convert it right after the failing call.
Error LibvirtError(std::string_view context, Code fallback = Code::kInternal) {
  const virError* err = virGetLastError();
  std::string msg = err && err->message ? err->message : "unknown libvirt error";
  Code code = fallback;
  if (err) {
    switch (err->code) {
      case VIR_ERR_NO_DOMAIN:
        code = Code::kNotFound;
        break;
      case VIR_ERR_OPERATION_INVALID:
        code = Code::kConflict;
        break;
      case VIR_ERR_DOM_EXIST:
        code = Code::kAlreadyExists;
        break;
      case VIR_ERR_XML_ERROR:
      case VIR_ERR_XML_DETAIL:
      case VIR_ERR_INVALID_ARG:
      case VIR_ERR_CONFIG_UNSUPPORTED:
        code = Code::kInvalid;
        break;
      case VIR_ERR_OPERATION_TIMEOUT:
      case VIR_ERR_AGENT_UNRESPONSIVE:
        code = Code::kTimeout;
        break;
      case VIR_ERR_NO_CONNECT:
      case VIR_ERR_SYSTEM_ERROR:
        if (fallback == Code::kUnavailable) code = Code::kUnavailable;
        break;
      default:
        break;
    }
  }
  virResetLastError();
  return Error{code, std::string(context) + ": " + msg};
}

// libvirt prints every error to stderr unless an error handler is set; errors are values here.
void IgnoreLibvirtError(void*, virErrorPtr) {}

bool IsUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(s[i]))) {
      return false;
    }
  }
  return true;
}

// libvirt's default event loop implementation is process-wide: virEventRegisterDefaultImpl
// may be called once, and exactly one thread should run virEventRunDefaultImpl. Every
// Hypervisor of the process shares one EventLoop; the last one to go stops the thread.
class EventLoop {
 public:
  static Result<std::shared_ptr<EventLoop>> Acquire() {
    static std::mutex mu;  // guards `current` (the loop is process-wide, see above)
    static std::weak_ptr<EventLoop> current;
    static int register_rc = [] {
      virSetErrorFunc(nullptr, IgnoreLibvirtError);
      return virEventRegisterDefaultImpl();
    }();
    if (register_rc < 0) return LibvirtError("register libvirt event loop", Code::kUnavailable);
    std::lock_guard lock(mu);
    if (auto loop = current.lock()) return loop;
    auto loop = std::shared_ptr<EventLoop>(new EventLoop());
    current = loop;
    return loop;
  }

  ~EventLoop() {
    stop_.store(true);
    // Wake virEventRunDefaultImpl: a timer that fires at once makes it return.
    int timer = virEventAddTimeout(
        0, [](int, void*) {}, nullptr, nullptr);
    thread_.join();
    if (timer >= 0) virEventRemoveTimeout(timer);
  }

 private:
  EventLoop() {
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        if (virEventRunDefaultImpl() < 0) virResetLastError();
      }
    });
  }
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

DomainState MapState(int state) {
  switch (state) {
    case VIR_DOMAIN_RUNNING:
      return DomainState::kRunning;
    case VIR_DOMAIN_BLOCKED:
      return DomainState::kBlocked;
    case VIR_DOMAIN_PAUSED:
      return DomainState::kPaused;
    case VIR_DOMAIN_SHUTDOWN:
      return DomainState::kShuttingDown;
    case VIR_DOMAIN_SHUTOFF:
      return DomainState::kShutOff;
    case VIR_DOMAIN_CRASHED:
      return DomainState::kCrashed;
    case VIR_DOMAIN_PMSUSPENDED:
      return DomainState::kPmSuspended;
    default:
      return DomainState::kNoState;
  }
}

std::string ReasonText(int state, int reason) {
  switch (state) {
    case VIR_DOMAIN_RUNNING: {
      static const char* const k[] = {
          "unknown",       "booted",   "migrated",           "restored",
          "from snapshot", "unpaused", "migration canceled", "save canceled",
          "wakeup",        "crashed",  "post-copy",          "post-copy failed"};
      return reason >= 0 && reason < int(std::size(k)) ? k[reason] : "unknown";
    }
    case VIR_DOMAIN_PAUSED: {
      static const char* const k[] = {"unknown",       "user",
                                      "migration",     "save",
                                      "dump",          "ioerror",
                                      "watchdog",      "from snapshot",
                                      "shutting down", "snapshot",
                                      "crashed",       "starting up",
                                      "post-copy",     "post-copy failed",
                                      "api error"};
      return reason >= 0 && reason < int(std::size(k)) ? k[reason] : "unknown";
    }
    case VIR_DOMAIN_SHUTDOWN:
      return reason == VIR_DOMAIN_SHUTDOWN_USER ? "user" : "unknown";
    case VIR_DOMAIN_SHUTOFF: {
      static const char* const k[] = {"unknown", "shutdown", "destroyed",     "crashed", "migrated",
                                      "saved",   "failed",   "from snapshot", "daemon"};
      return reason >= 0 && reason < int(std::size(k)) ? k[reason] : "unknown";
    }
    case VIR_DOMAIN_CRASHED:
      return reason == VIR_DOMAIN_CRASHED_PANICKED ? "panicked" : "unknown";
    case VIR_DOMAIN_PMSUSPENDED:
      return "unknown";
    default:
      return "unknown";
  }
}

LifecycleEvent MapEvent(int event) {
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
      return LifecycleEvent::kDefined;
    case VIR_DOMAIN_EVENT_UNDEFINED:
      return LifecycleEvent::kUndefined;
    case VIR_DOMAIN_EVENT_STARTED:
      return LifecycleEvent::kStarted;
    case VIR_DOMAIN_EVENT_SUSPENDED:
      return LifecycleEvent::kSuspended;
    case VIR_DOMAIN_EVENT_RESUMED:
      return LifecycleEvent::kResumed;
    case VIR_DOMAIN_EVENT_STOPPED:
      return LifecycleEvent::kStopped;
    case VIR_DOMAIN_EVENT_SHUTDOWN:
      return LifecycleEvent::kShutdown;
    case VIR_DOMAIN_EVENT_PMSUSPENDED:
      return LifecycleEvent::kPmSuspended;
    case VIR_DOMAIN_EVENT_CRASHED:
      return LifecycleEvent::kCrashed;
    default:
      return LifecycleEvent::kOther;
  }
}

std::string DomainUuid(virDomainPtr dom) {
  char buf[VIR_UUID_STRING_BUFLEN] = {};
  if (virDomainGetUUIDString(dom, buf) < 0) {
    virResetLastError();
    return "";
  }
  return buf;
}

Status WriteFileAtomically(const std::filesystem::path& path, const std::string& content) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return ErrnoError("create " + tmp.string(), errno);
    size_t off = 0;
    while (off < content.size()) {
      ssize_t n = ::write(fd.get(), content.data() + off, content.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("write " + tmp.string(), errno);
      }
      off += size_t(n);
    }
    if (::fsync(fd.get()) < 0) return ErrnoError("fsync " + tmp.string(), errno);
  }
  if (::rename(tmp.c_str(), path.c_str()) < 0) return ErrnoError("rename " + path.string(), errno);
  return Ok();
}

// x86 hardware virtualization: Intel VT-x ("vmx") or AMD-V ("svm") in /proc/cpuinfo's flags.
bool CpuHasVirtualization() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("flags")) continue;
    line += ' ';
    return line.find(" vmx ") != std::string::npos || line.find(" svm ") != std::string::npos;
  }
  return false;
}

bool IsSafeConfString(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.')
      return false;
  }
  return true;
}

// The directory where libvirt's QEMU driver behind `uri` writes <domain name>.pid: the state
// directory, <root>/run/qemu for the embedded driver (checked with libvirt 9.0), /run/libvirt/qemu
// for the system driver. Empty for every other driver (test:///, session URIs).
std::string QemuPidDir(const std::string& uri) {
  constexpr std::string_view kEmbed = "qemu:///embed?";
  if (uri.starts_with(kEmbed)) {
    std::string_view query = std::string_view(uri).substr(kEmbed.size());
    while (!query.empty()) {
      const size_t amp = query.find('&');
      const std::string_view param = query.substr(0, amp);
      if (param.starts_with("root=")) return std::string(param.substr(5)) + "/run/qemu";
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
    return "";
  }
  if (uri == "qemu:///system" || uri.starts_with("qemu:///system?")) return "/run/libvirt/qemu";
  return "";
}

// The NUL-separated arguments of /proc/<pid>/cmdline; empty when the process is gone.
std::vector<std::string> ProcessArgs(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::vector<std::string> args;
  std::string arg;
  while (std::getline(in, arg, '\0')) args.push_back(arg);
  return args;
}

// Whether `args` are those of a QEMU that libvirt started for domain `name`: the binary is a
// qemu-system-* and "-name" is followed by "guest=<name>" (libvirt writes
// "guest=<name>,debug-threads=on"; domain names cannot contain a comma here).
bool IsQemuOf(const std::vector<std::string>& args, const std::string& name) {
  if (args.empty() || args[0].find("qemu") == std::string::npos) return false;
  const std::string guest = "guest=" + name;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] != "-name") continue;
    const std::string& v = args[i + 1];
    if (v == guest || v.starts_with(guest + ",")) return true;
  }
  return false;
}

}  // namespace

std::string_view DomainStateName(DomainState state) {
  switch (state) {
    case DomainState::kNoState:
      return "no state";
    case DomainState::kRunning:
      return "running";
    case DomainState::kBlocked:
      return "blocked";
    case DomainState::kPaused:
      return "paused";
    case DomainState::kShuttingDown:
      return "shutting down";
    case DomainState::kShutOff:
      return "shut off";
    case DomainState::kCrashed:
      return "crashed";
    case DomainState::kPmSuspended:
      return "pmsuspended";
  }
  return "unknown";
}

std::string_view LifecycleEventName(LifecycleEvent event) {
  switch (event) {
    case LifecycleEvent::kDefined:
      return "defined";
    case LifecycleEvent::kUndefined:
      return "undefined";
    case LifecycleEvent::kStarted:
      return "started";
    case LifecycleEvent::kSuspended:
      return "suspended";
    case LifecycleEvent::kResumed:
      return "resumed";
    case LifecycleEvent::kStopped:
      return "stopped";
    case LifecycleEvent::kShutdown:
      return "shutdown";
    case LifecycleEvent::kPmSuspended:
      return "pmsuspended";
    case LifecycleEvent::kCrashed:
      return "crashed";
    case LifecycleEvent::kOther:
      return "other";
    case LifecycleEvent::kAgent:
      return "agent";
    case LifecycleEvent::kDeviceRemoved:
      return "device-removed";
    case LifecycleEvent::kDeviceRemovalFailed:
      return "device-removal-failed";
  }
  return "other";
}

std::string EmbedUri(std::string_view root) { return "qemu:///embed?root=" + std::string(root); }

std::string EmbedQemuConf(const HypervisorOptions& options) {
  std::string conf =
      "# Written by edgevirtd at every start; local edits are overwritten.\n"
      "# edgevirt owns the VM cgroups (cgroup/): QEMU stays in the daemon's cgroup until the\n"
      "# daemon moves it, and libvirt creates no cgroup of its own.\n"
      "cgroup_controllers = [ ]\n"
      "# QEMU writes its own log and the serial log files: no virtlogd daemon is needed\n"
      "# (with the default \"logd\" a start fails on a missing virtlogd-sock).\n"
      "stdio_handler = \"file\"\n"
      "# QEMU runs unprivileged as this user/group. libvirt's compiled-in default\n"
      "# (libvirt-qemu on Debian, qemu on RHEL) must still exist (a root QEMU driver resolves it\n"
      "# before reading this file), but is not used: it comes with libvirt-daemon-system, which\n"
      "# edgevirt does not need; libvirt's DAC driver gives QEMU's files to this user.\n";
  conf += "user = \"" + options.qemu_user + "\"\n";
  conf += "group = \"" + options.qemu_group + "\"\n";
  return conf;
}

class Hypervisor::Impl {
 public:
  std::string uri;
  std::shared_ptr<EventLoop> loop;  // declared before conn: outlives it
  ConnPtr conn;
  int callback_id = -1;
  int agent_callback_id = -1;
  int removed_callback_id = -1;
  int removal_failed_callback_id = -1;
  DomainEventCallback on_event;
  Accelerator accelerator = Accelerator::kTcg;
  // Where the QEMU driver keeps <name>.pid of each running domain; empty for a connection that
  // is not libvirt's QEMU driver.
  std::string pid_dir;
  // Serializes disk hotplug: the choice of a free target/unit and the attach that takes it.
  std::mutex hotplug_mu;

  ~Impl() {
    for (int id :
         {callback_id, agent_callback_id, removed_callback_id, removal_failed_callback_id}) {
      if (conn && id >= 0) virConnectDomainEventDeregisterAny(conn.get(), id);
    }
    conn.reset();
    loop.reset();
  }

  static int OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
    auto* self = static_cast<Impl*>(opaque);
    if (!self->on_event) return 0;
    DomainEvent ev;
    const char* name = virDomainGetName(dom);
    ev.name = name ? name : "";
    ev.uuid = DomainUuid(dom);
    ev.event = MapEvent(event);
    ev.detail = detail;
    self->on_event(ev);
    return 0;
  }

  static void OnAgent(virConnectPtr, virDomainPtr dom, int state, int /*reason*/, void* opaque) {
    auto* self = static_cast<Impl*>(opaque);
    if (!self->on_event) return;
    DomainEvent ev;
    const char* name = virDomainGetName(dom);
    ev.name = name ? name : "";
    ev.uuid = DomainUuid(dom);
    ev.event = LifecycleEvent::kAgent;
    ev.detail = state;
    self->on_event(ev);
  }

  static void OnDevice(virDomainPtr dom, LifecycleEvent event, const char* alias, void* opaque) {
    auto* self = static_cast<Impl*>(opaque);
    if (!self->on_event) return;
    DomainEvent ev;
    const char* name = virDomainGetName(dom);
    ev.name = name ? name : "";
    ev.uuid = DomainUuid(dom);
    ev.event = event;
    ev.device = alias ? alias : "";
    self->on_event(ev);
  }
  static void OnDeviceRemoved(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
    OnDevice(dom, LifecycleEvent::kDeviceRemoved, alias, opaque);
  }
  static void OnDeviceRemovalFailed(virConnectPtr, virDomainPtr dom, const char* alias,
                                    void* opaque) {
    OnDevice(dom, LifecycleEvent::kDeviceRemovalFailed, alias, opaque);
  }

  // The domain's XML: live (flags 0) or the persistent definition (VIR_DOMAIN_XML_INACTIVE).
  Result<std::string> XmlDesc(virDomainPtr dom, unsigned flags, DomainId id) {
    char* xml = virDomainGetXMLDesc(dom, flags);
    if (!xml) return LibvirtError("domain XML of " + std::string(id));
    std::string text(xml);
    std::free(xml);
    return text;
  }

  Result<DomPtr> Lookup(DomainId id) {
    std::string s(id);
    virDomainPtr dom = IsUuid(s) ? virDomainLookupByUUIDString(conn.get(), s.c_str())
                                 : virDomainLookupByName(conn.get(), s.c_str());
    if (!dom) return LibvirtError("domain " + s, Code::kNotFound);
    return DomPtr(dom);
  }

  // Drivers differ in how they report an operation on a stopped domain (QEMU: operation
  // invalid; test driver: internal error), so check first and say it the same way everywhere.
  Status RequireActive(virDomainPtr dom, std::string_view op, DomainId id) {
    int active = virDomainIsActive(dom);
    if (active < 0) return LibvirtError(std::string(op) + " domain " + std::string(id));
    if (active == 0) {
      return MakeError(Code::kConflict,
                       std::string(op) + " domain " + std::string(id) + ": it is not running");
    }
    return Ok();
  }

  Accelerator DetectAccelerator() {
    // A usable /dev/kvm needs the CPU's virtualization extensions. Checked first because a
    // /dev/kvm without them can look fine: on the build machines (no vmx in the CPU flags) it
    // opens, KVM_CREATE_VM succeeds and libvirt's domain capabilities list kvm, yet a kvm
    // guest never gets past its boot loader.
    if (!CpuHasVirtualization()) return Accelerator::kTcg;
    UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm) return Accelerator::kTcg;
    if (::ioctl(kvm.get(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION) return Accelerator::kTcg;
    UniqueFd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (!vm) return Accelerator::kTcg;
    char* caps = virConnectGetDomainCapabilities(conn.get(), nullptr, nullptr, nullptr, "kvm", 0);
    if (!caps) {
      // libvirt refuses kvm domain capabilities when its QEMU probe found no usable KVM.
      virResetLastError();
      return Accelerator::kTcg;
    }
    std::free(caps);
    return Accelerator::kKvm;
  }
};

Hypervisor::Hypervisor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Hypervisor::~Hypervisor() = default;

Result<std::unique_ptr<Hypervisor>> Hypervisor::Open(HypervisorOptions options) {
  auto impl = std::make_unique<Impl>();
  bool embed = options.uri.empty() || options.uri.starts_with("qemu:///embed");
  if (options.uri.empty()) {
    if (options.root.empty() || options.root[0] != '/' ||
        options.root.find('?') != options.root.npos ||
        options.root.find('&') != options.root.npos) {
      return MakeError(Code::kInvalid, "libvirt root must be an absolute path without ?/&: \"" +
                                           options.root + "\"");
    }
    impl->uri = EmbedUri(options.root);
  } else {
    impl->uri = options.uri;
  }
  if (embed && options.uri.empty()) {
    if (options.qemu_group.empty()) {
      // /dev/kvm is root:kvm 0660: an unprivileged QEMU reaches it through the kvm group.
      options.qemu_group = ::getgrnam("kvm") ? "kvm" : "nogroup";
    }
    if (!IsSafeConfString(options.qemu_user) || !IsSafeConfString(options.qemu_group)) {
      return MakeError(Code::kInvalid, "qemu user/group must match [A-Za-z0-9_.-]+");
    }
    std::error_code ec;
    std::filesystem::path root(options.root);
    std::filesystem::create_directories(root / "etc", ec);
    if (ec)
      return MakeError(Code::kInternal, "create " + (root / "etc").string() + ": " + ec.message());
    // QEMU runs as an unprivileged user and opens files libvirt keeps under the root.
    if (::chmod(root.c_str(), 0755) < 0) return ErrnoError("chmod " + root.string(), errno);
    RETURN_IF_ERROR(WriteFileAtomically(root / "etc" / "qemu.conf", EmbedQemuConf(options)));
  }

  ASSIGN_OR_RETURN(impl->loop, EventLoop::Acquire());
  virConnectPtr conn = virConnectOpen(impl->uri.c_str());
  if (!conn) {
    Error err = LibvirtError("connect to " + impl->uri, Code::kUnavailable);
    err.code = Code::kUnavailable;
    if (err.message.find("Failed to parse user") != std::string::npos ||
        err.message.find("Failed to parse group") != std::string::npos) {
      err.message +=
          " (a root embedded QEMU driver needs libvirt's compiled-in QEMU user and group to "
          "exist even though qemu.conf overrides them; scripts/install-deps.sh creates them)";
    }
    return err;
  }
  impl->conn.reset(conn);
  virConnSetErrorFunc(conn, nullptr, IgnoreLibvirtError);

  if (!embed && options.keepalive_interval_s > 0) {
    // Returns 1 when the peer does not support keepalive, and fails with VIR_ERR_NO_SUPPORT
    // for in-process drivers (test:///); neither is an error: there is no peer to lose.
    if (virConnectSetKeepAlive(conn, options.keepalive_interval_s, options.keepalive_count) < 0) {
      const virError* err = virGetLastError();
      if (!err || err->code != VIR_ERR_NO_SUPPORT) {
        return LibvirtError("set keepalive on " + impl->uri, Code::kUnavailable);
      }
      virResetLastError();
    }
  }
  impl->on_event = std::move(options.on_event);
  impl->callback_id = virConnectDomainEventRegisterAny(
      conn, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(&Impl::OnLifecycle),
      impl.get(), nullptr);
  if (impl->callback_id < 0) {
    return LibvirtError("register lifecycle events on " + impl->uri, Code::kUnavailable);
  }
  // Agent connection events are optional (the test driver has none).
  impl->agent_callback_id = virConnectDomainEventRegisterAny(
      conn, nullptr, VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(&Impl::OnAgent),
      impl.get(), nullptr);
  if (impl->agent_callback_id < 0) virResetLastError();
  // Device removal events (hotplug) are optional too.
  impl->removed_callback_id = virConnectDomainEventRegisterAny(
      conn, nullptr, VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
      VIR_DOMAIN_EVENT_CALLBACK(&Impl::OnDeviceRemoved), impl.get(), nullptr);
  if (impl->removed_callback_id < 0) virResetLastError();
  impl->removal_failed_callback_id = virConnectDomainEventRegisterAny(
      conn, nullptr, VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
      VIR_DOMAIN_EVENT_CALLBACK(&Impl::OnDeviceRemovalFailed), impl.get(), nullptr);
  if (impl->removal_failed_callback_id < 0) virResetLastError();
  impl->pid_dir = QemuPidDir(impl->uri);
  impl->accelerator = impl->DetectAccelerator();
  return std::unique_ptr<Hypervisor>(new Hypervisor(std::move(impl)));
}

const std::string& Hypervisor::uri() const { return impl_->uri; }
Accelerator Hypervisor::accelerator() const { return impl_->accelerator; }

Status Hypervisor::Define(const DomainSpec& spec) {
  ASSIGN_OR_RETURN(std::string xml, DomainXml(spec));
  virDomainPtr dom =
      virDomainDefineXMLFlags(impl_->conn.get(), xml.c_str(), VIR_DOMAIN_DEFINE_VALIDATE);
  if (!dom) {
    Error err = LibvirtError("define domain " + spec.name, Code::kInternal);
    // libvirt reports a name/UUID clash with another domain as an operation failure.
    if (err.message.find("already exists") != std::string::npos) err.code = Code::kAlreadyExists;
    return err;
  }
  virDomainFree(dom);
  return Ok();
}

Status Hypervisor::StartPaused(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  if (virDomainCreateWithFlags(dom.get(), VIR_DOMAIN_START_PAUSED) < 0) {
    return LibvirtError("start domain " + std::string(id) + " paused");
  }
  return Ok();
}

Status Hypervisor::DefineAndStartPaused(const DomainSpec& spec) {
  RETURN_IF_ERROR(Define(spec));
  return StartPaused(spec.uuid.empty() ? std::string_view(spec.name) : spec.uuid);
}

Result<std::unique_ptr<ConsoleStream>> Hypervisor::OpenConsole(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  return OpenLibvirtConsole(impl_->conn.get(), dom.get(), "domain " + std::string(id));
}

Result<ConsoleSpec> Hypervisor::LiveConsole(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "find the console of", id));
  ASSIGN_OR_RETURN(std::string live, impl_->XmlDesc(dom.get(), 0, id));
  auto console = ParseLiveConsole(live);
  if (!console) return std::move(console).error().Wrap("console of domain " + std::string(id));
  return console;
}

Result<std::string> Hypervisor::Screenshot(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  return LibvirtScreenshot(impl_->conn.get(), dom.get(), "domain " + std::string(id));
}

Status Hypervisor::Pause(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "pause", id));
  if (virDomainSuspend(dom.get()) < 0) return LibvirtError("pause domain " + std::string(id));
  return Ok();
}

Status Hypervisor::Resume(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "resume", id));
  if (virDomainResume(dom.get()) < 0) return LibvirtError("resume domain " + std::string(id));
  return Ok();
}

Status Hypervisor::Reset(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "reset", id));
  if (virDomainReset(dom.get(), 0) < 0) return LibvirtError("reset domain " + std::string(id));
  return Ok();
}

Status Hypervisor::Reboot(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "reboot", id));
  if (virDomainReboot(dom.get(), VIR_DOMAIN_REBOOT_ACPI_POWER_BTN) < 0) {
    return LibvirtError("reboot domain " + std::string(id));
  }
  return Ok();
}

Status Hypervisor::RequestShutdown(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "shut down", id));
  if (virDomainShutdownFlags(dom.get(), VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) < 0) {
    return LibvirtError("shut down domain " + std::string(id));
  }
  return Ok();
}

Result<ShutdownOutcome> Hypervisor::Shutdown(DomainId id, std::chrono::milliseconds grace) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  int active = virDomainIsActive(dom.get());
  if (active < 0) return LibvirtError("shut down domain " + std::string(id));
  if (active == 0) return ShutdownOutcome::kAlreadyOff;
  if (virDomainShutdownFlags(dom.get(), VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) < 0) {
    Error err = LibvirtError("shut down domain " + std::string(id));
    if (err.code != Code::kConflict) return err;  // kConflict: it stopped meanwhile
  }
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (true) {
    active = virDomainIsActive(dom.get());
    if (active < 0) return LibvirtError("shut down domain " + std::string(id));
    if (active == 0) return ShutdownOutcome::kGraceful;
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (virDomainDestroy(dom.get()) < 0) {
    Error err = LibvirtError("destroy domain " + std::string(id) + " after its shutdown grace");
    if (err.code == Code::kConflict) return ShutdownOutcome::kGraceful;  // just powered off
    return err;
  }
  return ShutdownOutcome::kDestroyed;
}

Status Hypervisor::Destroy(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  if (virDomainDestroy(dom.get()) < 0) {
    Error err = LibvirtError("destroy domain " + std::string(id));
    if (err.code == Code::kConflict) return Ok();  // not running: nothing to destroy
    return err;
  }
  return Ok();
}

Status Hypervisor::Undefine(DomainId id) {
  auto dom = impl_->Lookup(id);
  if (!dom) {
    if (dom.error().code == Code::kNotFound) return Ok();
    return std::move(dom).error();
  }
  int active = virDomainIsActive(dom->get());
  if (active < 0) return LibvirtError("undefine domain " + std::string(id));
  if (active == 1) {
    return MakeError(Code::kConflict,
                     "undefine domain " + std::string(id) + ": it is running; destroy it first");
  }
  unsigned flags = VIR_DOMAIN_UNDEFINE_NVRAM | VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                   VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                   VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
  if (virDomainUndefineFlags(dom->get(), flags) < 0) {
    Error err = LibvirtError("undefine domain " + std::string(id));
    if (err.code == Code::kNotFound) return Ok();
    return err;
  }
  return Ok();
}

Result<DomainStatus> Hypervisor::State(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  int state = 0, reason = 0;
  if (virDomainGetState(dom.get(), &state, &reason, 0) < 0) {
    return LibvirtError("state of domain " + std::string(id));
  }
  return DomainStatus{MapState(state), reason, ReasonText(state, reason)};
}

namespace {
Result<DomainInfo> InfoOf(virDomainPtr dom) {
  DomainInfo info;
  const char* name = virDomainGetName(dom);
  info.name = name ? name : "";
  info.uuid = DomainUuid(dom);
  int persistent = virDomainIsPersistent(dom);
  if (persistent < 0) return LibvirtError("domain " + info.name);
  info.persistent = persistent == 1;
  int state = 0, reason = 0;
  if (virDomainGetState(dom, &state, &reason, 0) < 0) {
    return LibvirtError("state of domain " + info.name);
  }
  info.status = DomainStatus{MapState(state), reason, ReasonText(state, reason)};
  return info;
}
}  // namespace

Result<DomainInfo> Hypervisor::Info(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  return InfoOf(dom.get());
}

Result<std::vector<DomainInfo>> Hypervisor::List() {
  virDomainPtr* doms = nullptr;
  int n = virConnectListAllDomains(impl_->conn.get(), &doms, 0);
  if (n < 0) return LibvirtError("list domains");
  std::vector<DomPtr> owned;
  owned.reserve(size_t(n));
  for (int i = 0; i < n; ++i) owned.emplace_back(doms[i]);
  std::free(doms);
  std::vector<DomainInfo> out;
  for (auto& dom : owned) {
    auto info = InfoOf(dom.get());
    if (!info) {
      // Undefined or stopped (transient) between the list and the query: not there any more.
      if (info.error().code == Code::kNotFound) continue;
      return std::move(info).error();
    }
    out.push_back(std::move(*info));
  }
  return out;
}

Result<std::vector<DomainStats>> Hypervisor::AllDomainStats() {
  virDomainStatsRecordPtr* records = nullptr;
  // NOWAIT: a domain whose QEMU is busy with another job (a hotplug, a shutdown) reports what
  // libvirt has without waiting for the job, so a scrape never stalls behind a reconcile.
  const int n = virConnectGetAllDomainStats(
      impl_->conn.get(), DomainStatsTypes(), &records,
      VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT);
  if (n < 0) return LibvirtError("domain statistics");
  std::vector<DomainStats> out;
  out.reserve(size_t(n));
  for (int i = 0; i < n; ++i) {
    virDomainPtr dom = records[i]->dom;
    const char* name = virDomainGetName(dom);
    DomainStats stats = ParseDomainStats(name ? name : "", DomainUuid(dom), records[i]->params,
                                         records[i]->nparams);
    if (char* xml = virDomainGetXMLDesc(dom, 0)) {
      AddAliases(stats, xml);
      std::free(xml);
    } else {
      virResetLastError();  // stopped meanwhile: the figures are still the last ones it had
    }
    out.push_back(std::move(stats));
  }
  virDomainStatsRecordListFree(records);
  return out;
}

Result<bool> Hypervisor::AgentConnected(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  char* xml = virDomainGetXMLDesc(dom.get(), 0);
  if (!xml) return LibvirtError("domain XML of " + std::string(id));
  std::string text(xml);
  std::free(xml);
  // <channel type='unix'>...<target type='virtio' name='org.qemu.guest_agent.0'
  //  state='connected'/>: libvirt tracks the virtio-serial port's open state.
  const size_t at = text.find("name='org.qemu.guest_agent.0'");
  if (at == std::string::npos) return false;
  const size_t end = text.find("/>", at);
  return text.substr(at, end == std::string::npos ? std::string::npos : end - at)
             .find("state='connected'") != std::string::npos;
}

Result<std::string> Hypervisor::AgentCommand(DomainId id, const std::string& command,
                                             std::chrono::seconds timeout) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  char* reply =
      virDomainQemuAgentCommand(dom.get(), command.c_str(), static_cast<int>(timeout.count()), 0);
  if (!reply) {
    Error err = LibvirtError("guest agent command on " + std::string(id), Code::kInternal);
    // libvirt reports a missing agent as "unresponsive" too; it is a state, not a timeout.
    if (err.message.find("not connected") != std::string::npos) err.code = Code::kConflict;
    return err;
  }
  std::string out(reply);
  std::free(reply);
  return out;
}

Status Hypervisor::AttachDisk(DomainId id, const DiskSpec& disk, bool persist) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  const std::string context = "attach disk \"" + disk.name + "\" to domain " + std::string(id);
  std::lock_guard lock(impl_->hotplug_mu);
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "attach a disk to", id));
  ASSIGN_OR_RETURN(std::string live, impl_->XmlDesc(dom.get(), 0, id));
  std::string config;
  if (persist) {
    ASSIGN_OR_RETURN(config, impl_->XmlDesc(dom.get(), VIR_DOMAIN_XML_INACTIVE, id));
  }
  auto xml = HotplugDiskXml(disk, live, config);
  if (!xml) return std::move(xml).error().Wrap(context);
  unsigned flags = VIR_DOMAIN_AFFECT_LIVE;
  if (persist) flags |= VIR_DOMAIN_AFFECT_CONFIG;
  if (virDomainAttachDeviceFlags(dom.get(), xml->c_str(), flags) < 0) {
    Error err = LibvirtError(context);
    // libvirt 9.0 on q35 without an empty pcie-root-port: "No more available PCI slots".
    if (err.message.find("No more available PCI slots") != std::string::npos) {
      err.code = Code::kConflict;
      err.message += " (no free PCIe root port: define the domain with spare_pcie_ports)";
    }
    return err;
  }
  return Ok();
}

Status Hypervisor::DetachDisk(DomainId id, const std::string& name, bool persist) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  const std::string context = "detach disk \"" + name + "\" from domain " + std::string(id);
  std::lock_guard lock(impl_->hotplug_mu);
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "detach a disk from", id));
  ASSIGN_OR_RETURN(std::string live, impl_->XmlDesc(dom.get(), 0, id));
  auto disks = ParseLiveDisks(live);
  if (!disks) return std::move(disks).error().Wrap(context);
  auto attached = [&](const std::vector<LiveDisk>& list) {
    return std::any_of(list.begin(), list.end(), [&](const LiveDisk& d) { return d.name == name; });
  };
  if (name.empty() || !attached(*disks)) {
    return MakeError(Code::kNotFound, context + ": no such disk is attached");
  }
  unsigned flags = VIR_DOMAIN_AFFECT_LIVE;
  if (persist) {
    // Only when the definition has it: a disk attached without `persist` is not there, and
    // libvirt would refuse the whole request.
    ASSIGN_OR_RETURN(std::string config, impl_->XmlDesc(dom.get(), VIR_DOMAIN_XML_INACTIVE, id));
    auto defined = ParseLiveDisks(config);
    if (!defined) return std::move(defined).error().Wrap(context);
    if (attached(*defined)) flags |= VIR_DOMAIN_AFFECT_CONFIG;
  }
  // Asynchronous by contract (unlike virDomainDetachDeviceFlags, which waits up to 5 s):
  // completion is the DEVICE_REMOVED event.
  const std::string alias = "ua-" + name;
  if (virDomainDetachDeviceAlias(dom.get(), alias.c_str(), flags) < 0) {
    Error err = LibvirtError(context);
    // QEMU (>= 6.2) refuses a second device_del while the guest has not released the device
    // yet; the first request stands, so asking again is not an error.
    if (err.message.find("already in the process of unplug") != std::string::npos) return Ok();
    return err;
  }
  return Ok();
}

Result<std::vector<LiveDisk>> Hypervisor::LiveDisks(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "list the disks of", id));
  ASSIGN_OR_RETURN(std::string live, impl_->XmlDesc(dom.get(), 0, id));
  auto disks = ParseLiveDisks(live);
  if (!disks) return std::move(disks).error().Wrap("disks of domain " + std::string(id));
  return disks;
}

Result<pid_t> Hypervisor::QemuPid(DomainId id) {
  ASSIGN_OR_RETURN(DomPtr dom, impl_->Lookup(id));
  const std::string context = "QEMU pid of domain " + std::string(id);
  if (impl_->pid_dir.empty()) {
    return MakeError(Code::kUnsupported, context + ": " + impl_->uri +
                                             " is not libvirt's QEMU driver (embedded or system)");
  }
  RETURN_IF_ERROR(impl_->RequireActive(dom.get(), "find the QEMU of", id));
  const char* name_c = virDomainGetName(dom.get());
  const std::string name = name_c ? name_c : std::string(id);
  const std::string pid_file = impl_->pid_dir + "/" + name + ".pid";
  std::ifstream in(pid_file);
  long long pid = 0;
  if (!(in >> pid) || pid <= 0) {
    return MakeError(Code::kInternal, context + ": no pid in " + pid_file);
  }
  if (!IsQemuOf(ProcessArgs(pid_t(pid)), name)) {
    // The domain may have stopped meanwhile; say so rather than "stale".
    if (virDomainIsActive(dom.get()) == 0) {
      return MakeError(Code::kConflict, context + ": it is not running");
    }
    virResetLastError();
    return MakeError(Code::kInternal, context + ": " + pid_file + " names pid " +
                                          std::to_string(pid) + ", which is not its QEMU");
  }
  return pid_t(pid);
}

}  // namespace edgevirt::vmm
