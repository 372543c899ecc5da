// Hypervisor: one libvirt connection (by default libvirt's QEMU driver embedded in this process,
// qemu:///embed?root=<root>), the libvirt event loop it needs, lifecycle events, and the domain
// lifecycle operations. Part of the public header vmm/vmm.h.
//
// Thread rules: every method may be called from any thread (libvirt connections are
// thread-safe). libvirt errors are converted where they happen; no libvirt type appears here.
// The lifecycle event callback runs on the libvirt event loop thread and must only enqueue
// (it must not block and must not call back into the Hypervisor).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "vmm/console.h"
#include "vmm/domain.h"
#include "vmm/domain_stats.h"

namespace edgevirt::vmm {

// libvirt's domain states (virDomainState), as the daemon needs them.
enum class DomainState {
  kNoState,
  kRunning,
  kBlocked,  // running, but blocked on a resource (treated as running)
  kPaused,
  kShuttingDown,  // a shutdown is in progress
  kShutOff,
  kCrashed,
  kPmSuspended,
};
std::string_view DomainStateName(DomainState state);

struct DomainStatus {
  DomainState state = DomainState::kNoState;
  int reason = 0;           // libvirt's per-state reason code (virDomain*Reason)
  std::string reason_text;  // e.g. "user", "booted", "shutdown", "destroyed", "crashed", "ioerror"
};

struct DomainInfo {
  std::string name;
  std::string uuid;  // lower-case canonical form
  bool persistent = false;
  DomainStatus status;
};

// libvirt's lifecycle event kinds (virDomainEventType).
enum class LifecycleEvent {
  kDefined,
  kUndefined,
  kStarted,
  kSuspended,
  kResumed,
  kStopped,
  kShutdown,  // the guest started or finished a shutdown (detail says which)
  kPmSuspended,
  kCrashed,
  kOther,
  // Not a libvirt lifecycle event: the guest agent's channel connected or disconnected
  // (VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE); detail 1 = connected, 2 = disconnected.
  kAgent,
  // Not lifecycle events either: a device left the running domain (VIR_DOMAIN_EVENT_ID_
  // DEVICE_REMOVED), e.g. the guest released a virtio disk that DetachDisk asked it to let go,
  // or QEMU removed a scsi disk. DomainEvent::device is the device's alias ("ua-<disk name>").
  kDeviceRemoved,
  // The guest refused or failed to release a device (VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED);
  // the device stays attached. DomainEvent::device is its alias.
  kDeviceRemovalFailed,
};
std::string_view LifecycleEventName(LifecycleEvent event);

struct DomainEvent {
  std::string name;
  std::string uuid;
  LifecycleEvent event = LifecycleEvent::kOther;
  int detail = 0;  // libvirt's detail code for `event` (virDomainEvent*DetailType)
  // kDeviceRemoved, kDeviceRemovalFailed: the device's alias, e.g. "ua-data". Else empty.
  std::string device;
};

// Called on the libvirt event loop thread. Must not block and must not call the Hypervisor:
// copy the event into a queue and return.
using DomainEventCallback = std::function<void(const DomainEvent&)>;

struct HypervisorOptions {
  // Root of the embedded QEMU driver's private state (config, caches, domain definitions,
  // status of running domains). Used when `uri` is empty.
  std::string root = "/var/lib/edgevirt/libvirt";
  // Empty: "qemu:///embed?root=<root>". Any other libvirt URI ("qemu:///system",
  // "test:///default") is used as given; the private qemu.conf is written only for an embed
  // URI.
  std::string uri;
  // User and group QEMU runs as (qemu.conf user/group, embed URIs only). See README.md for
  // why not libvirt's default. An empty group means "kvm" when that group exists (it owns
  // /dev/kvm), else "nogroup".
  std::string qemu_user = "nobody";
  std::string qemu_group;
  // Keepalive for remote connections (qemu:///system goes through libvirtd). The embedded
  // driver has no peer, so no keepalive there.
  int keepalive_interval_s = 5;
  unsigned keepalive_count = 5;
  DomainEventCallback on_event;  // optional
};

// Identifies a domain: a canonical UUID string is looked up as a UUID, anything else as a name.
using DomainId = std::string_view;

// A disk of a running domain, as its live XML describes it.
struct LiveDisk {
  std::string name;    // from the user alias "ua-<name>"; empty for a disk without one
  std::string target;  // "vda", "sdb", ...
  std::string path;    // the source file or block device; empty for an empty cdrom
  DiskBus bus = DiskBus::kVirtio;
  bool block = false;  // <disk type='block'>
  bool readonly = false;
};

enum class ShutdownOutcome {
  kAlreadyOff,  // the domain was not running
  kGraceful,    // the guest powered off within the grace period
  kDestroyed,   // the grace period passed; the domain was destroyed (QEMU killed)
};

class Hypervisor {
 public:
  // Connects. For an embed URI it first creates <root> (0755: QEMU runs unprivileged and must
  // traverse it) and writes <root>/etc/qemu.conf. Starts (or joins) the process's libvirt event
  // loop thread, registers the lifecycle callback and detects the accelerator (which asks
  // libvirt for domain capabilities: the first open of a fresh root probes QEMU, seconds).
  // Errors: kInvalid (bad options), kUnavailable (libvirt cannot connect; the message has
  // libvirt's reason and, for the known embed pitfall, the fix), kInternal (file system).
  static Result<std::unique_ptr<Hypervisor>> Open(HypervisorOptions options);

  // Deregisters the callback and closes the connection. Domains keep running (QEMU outlives
  // the connection); a later Open on the same root sees them again.
  ~Hypervisor();
  Hypervisor(const Hypervisor&) = delete;
  Hypervisor& operator=(const Hypervisor&) = delete;

  const std::string& uri() const;
  // KVM when the CPU has vmx/svm, /dev/kvm opens read-write and creates a VM, and libvirt's
  // domain capabilities for kvm say it is supported; TCG otherwise. Detected once in Open.
  Accelerator accelerator() const;

  // Defines (or redefines, same name and UUID) the persistent domain from DomainXml(spec).
  // Errors: kInvalid (spec or libvirt refused the XML), kAlreadyExists (the name or UUID
  // belongs to another domain), kInternal.
  Status Define(const DomainSpec& spec);
  // Starts a defined domain with its vCPUs paused (VIR_DOMAIN_START_PAUSED), so the caller can
  // place QEMU in its cgroup before any guest code runs. kConflict when already running.
  Status StartPaused(DomainId id);
  // Define, then StartPaused.
  Status DefineAndStartPaused(const DomainSpec& spec);

  Status Pause(DomainId id);   // kConflict when not running
  Status Resume(DomainId id);  // kConflict when not running
  // Hard reset (like the reset button); the domain keeps running. kConflict when not running.
  Status Reset(DomainId id);
  // Asks the guest to reboot through the ACPI power button; QEMU restarts the guest once it
  // powers off (libvirt's "fake reboot"). Returns at once.
  Status Reboot(DomainId id);
  // Presses the ACPI power button and returns at once. kConflict when not running.
  Status RequestShutdown(DomainId id);
  // Presses the ACPI power button, waits up to `grace` for the domain to shut off (polling,
  // this call blocks the caller), then destroys it. A paused guest cannot react to the button.
  Result<ShutdownOutcome> Shutdown(DomainId id, std::chrono::milliseconds grace);
  // Kills QEMU (SIGTERM, then SIGKILL). Not running: success (idempotent).
  Status Destroy(DomainId id);
  // Removes the definition, its NVRAM file, managed save and snapshot metadata. Not defined:
  // success. kConflict when the domain is running (destroy it first).
  Status Undefine(DomainId id);

  Result<DomainStatus> State(DomainId id);
  // Whether the qemu-guest-agent channel is connected (a guest agent opened its end), as
  // libvirt reports it in the live domain XML. false for a domain without the channel.
  Result<bool> AgentConnected(DomainId id);
  // Runs one guest agent command (QGA JSON, e.g. {"execute":"guest-get-osinfo"}) and returns
  // the agent's whole reply ({"return": ...}). kConflict when no agent is connected, kTimeout
  // when it does not answer within `timeout`.
  Result<std::string> AgentCommand(DomainId id, const std::string& command,
                                   std::chrono::seconds timeout);
  Result<DomainInfo> Info(DomainId id);

  // Disk hotplug. AttachDisk and DetachDisk calls are serialized inside the Hypervisor (one
  // lock: the choice of a free target and unit and the attach that takes it cannot interleave).
  //
  // Attaches `disk` to the running domain (VIR_DOMAIN_AFFECT_LIVE, plus VIR_DOMAIN_AFFECT_CONFIG
  // when `persist`), with the same <disk> XML DomainXml writes for it. The caller gives the
  // DiskSpec; the target is the lowest free name of the bus's sequence in the live XML (vd* for
  // virtio, sd* for scsi; with `persist` also free in the inactive XML), and a scsi disk gets
  // the lowest free unit on controller 0. Needs: for scsi, the domain's scsi controller 0
  // (DomainSpec::hotplug_scsi_controller); for virtio on q35, a free PCIe root port
  // (DomainSpec::spare_pcie_ports). The guest sees a scsi disk at once; a virtio disk once its
  // PCIe hotplug driver has handled the new slot (a second or two). Errors: kConflict (not
  // running; a disk named `disk.name` is already attached; no free root port for a virtio
  // disk), kInvalid (the disk fails DomainXml's checks; a sata disk, which QEMU cannot
  // hotplug; scsi without a scsi controller), kNotFound (no such domain), kInternal.
  Status AttachDisk(DomainId id, const DiskSpec& disk, bool persist);
  // Detaches the disk whose user alias is "ua-<name>" (LIVE, plus CONFIG when `persist` and the
  // inactive definition has it). Returns once libvirt accepted the request: the removal
  // completes asynchronously. QEMU removes a scsi disk at once; a virtio disk goes only when the
  // guest releases its PCIe slot (an unresponsive guest keeps it forever). Observe completion
  // with LiveDisks() or the kDeviceRemoved event (device "ua-<name>"). Asking again while a
  // removal is pending succeeds. Errors: kNotFound (no such domain, or no disk "ua-<name>" in
  // the live XML), kConflict (not running), kInternal.
  Status DetachDisk(DomainId id, const std::string& name, bool persist);
  // The disks of the running domain, parsed from its live XML (virDomainGetXMLDesc(0)), in the
  // XML's order; a disk whose removal is pending is still listed. kConflict when not running.
  Result<std::vector<LiveDisk>> LiveDisks(DomainId id);
  // The pid of the domain's QEMU process (for cgroup placement), from the pid file libvirt's
  // QEMU driver keeps: <root>/run/qemu/<name>.pid for the embedded driver,
  // /run/libvirt/qemu/<name>.pid for qemu:///system. The pid is checked against
  // /proc/<pid>/cmdline (a qemu-system binary started with "-name guest=<name>,..."), so a
  // stale file is never believed. Errors: kConflict (not running), kUnsupported (a connection
  // that is not libvirt's QEMU driver, e.g. test:///), kNotFound (no such domain), kInternal
  // (no pid file, or it names another process).
  Result<pid_t> QemuPid(DomainId id);
  // The guest's serial console as a non-blocking stream (see ConsoleStream). A session that
  // another client holds on the same console is ended (VIR_DOMAIN_CONSOLE_FORCE; its on_end
  // gets libvirt's reason). Errors: kNotFound (no such domain), kConflict (not running),
  // kUnavailable (libvirt could not open the console), kInternal.
  Result<std::unique_ptr<ConsoleStream>> OpenConsole(DomainId id);
  // The serial console the running domain was started with, from its live XML
  // (virDomainGetXMLDesc(0)): kPty (OpenConsole reaches it), kUnix with the socket QEMU listens
  // on (libvirt 9.0 streams no other kind: connect to socket_path), or kNone; log_path as
  // defined. A domain keeps its console until it stops, whatever a newer DomainSpec says, so
  // this is how to reach the console of a domain started earlier. Errors: kNotFound (no such
  // domain), kConflict (not running), kUnsupported (a chardev ConsoleKind cannot express),
  // kInternal.
  Result<ConsoleSpec> LiveConsole(DomainId id);
  // A PNG of the domain's screen 0 (virDomainScreenshot: QEMU's screendump, a PPM, encoded
  // here). Needs a video device (DomainSpec::vnc_socket_path gives one). Blocks the caller
  // while QEMU writes the picture (milliseconds). Errors: kNotFound, kConflict (not running, or
  // no video device), kInternal.
  Result<std::string> Screenshot(DomainId id);
  // Statistics of every active (running or paused) domain in one virConnectGetAllDomainStats
  // call (state, cpu-total, balloon, vcpu, interface, block), with each NIC's and disk's user
  // alias from the domain's live XML. A domain that stops during the call is left out. Blocks
  // the caller while QEMU answers (milliseconds per domain; a hung QEMU monitor makes libvirt
  // skip that domain's figures after its job timeout). Errors: kUnavailable, kInternal.
  Result<std::vector<DomainStats>> AllDomainStats();
  // Every domain of this connection, running or defined (after a daemon restart: the ones
  // whose QEMU kept running are listed as running or paused).
  Result<std::vector<DomainInfo>> List();

 private:
  class Impl;
  explicit Hypervisor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "qemu:///embed?root=<root>". Exposed for tests and tools.
std::string EmbedUri(std::string_view root);
// The private qemu.conf the embedded driver reads (<root>/etc/qemu.conf), as written by Open.
std::string EmbedQemuConf(const HypervisorOptions& options);

}  // namespace edgevirt::vmm
