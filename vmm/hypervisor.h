// Hypervisor: one libvirt connection (by default libvirt's QEMU driver embedded in this process,
// qemu:///embed?root=<root>), the libvirt event loop it needs, lifecycle events, and the domain
// lifecycle operations. Part of the public header vmm/vmm.h.
//
// Thread rules: every method may be called from any thread (libvirt connections are
// thread-safe). libvirt errors are converted where they happen; no libvirt type appears here.
// The lifecycle event callback runs on the libvirt event loop thread and must only enqueue
// (it must not block and must not call back into the Hypervisor).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "vmm/domain.h"

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
};
std::string_view LifecycleEventName(LifecycleEvent event);

struct DomainEvent {
  std::string name;
  std::string uuid;
  LifecycleEvent event = LifecycleEvent::kOther;
  int detail = 0;  // libvirt's detail code for `event` (virDomainEvent*DetailType)
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
