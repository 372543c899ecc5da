// The controller: the one reconcile thread that turns VirtualMachine and VirtualMachineInstance
// objects into QEMU guests through vmm::Hypervisor, and reports their state back into the
// store the way KubeVirt v1.0's virt-controller (VM → VMI, runStrategy, printableStatus) and
// virt-handler (VMI → domain, phases, conditions) do. See README.md "Controller".
//
// Threads: one reconcile thread fed by a WorkQueue; one store-watch thread and the libvirt event
// loop only enqueue keys ("vm/<ns>/<name>", "vmi/<ns>/<name>"); a periodic resync enqueues every
// object. Host actions requested through the subresources (pause, reset, ...) run on the caller's
// thread: libvirt connections are thread-safe and those calls do not change stored state
// themselves (the resulting libvirt event does, through a reconcile).
//
// Crash safety: everything the controller decides is derived from the store and libvirt, never
// from memory alone. A VMI's progress is recorded in its status before the next step (Scheduled
// before the domain is defined, Running once it started), a domain's name is the VMI's
// "<namespace>_<name>", and a shutdown's deadline is deletionTimestamp + grace, so a daemon
// killed at any point and restarted reconnects to the same QEMU processes and converges.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "api/machinery/machinery.h"
#include "api/subresources/subresources.h"
#include "common/result.h"
#include "daemon/images.h"
#include "daemon/isolation.h"
#include "daemon/networking.h"
#include "daemon/streams.h"
#include "daemon/vmi_domain.h"
#include "daemon/work_queue.h"
#include "image/image.h"
#include "store/store.h"
#include "vmm/vmm.h"

namespace edgevirt::daemon {

using api::Json;

struct ControllerOptions {
  // The hypervisor connection (on_event is the controller's own).
  vmm::HypervisorOptions hypervisor;
  // Where per-VMI files live and which host paths VMs may use; the accelerator is filled in
  // from the hypervisor.
  VmiHostOptions host;
  // status.nodeName of every VMI (the host name).
  std::string node_name;
  // Every object is reconciled at least this often (catches anything an event missed).
  std::chrono::milliseconds resync_period{30'000};
  // Cap of the start-failure backoff (KubeVirt's defaultMaxCrashLoopBackoffDelaySeconds).
  std::chrono::seconds max_crash_loop_delay{300};
  // VM cgroups and device filters (the store is the machinery's).
  IsolationOptions isolation;
  // Provisioned PersistentVolumeClaims; empty: persistentVolumeClaim volumes fail to start.
  ClaimLookup claims;
  // The containerDisk cache (must outlive the controller); null: containerDisk volumes fail to
  // start. The controller pulls through an ImagePuller of its own with these options (its
  // notify is the controller's).
  image::Cache* images = nullptr;
  ImagePullerOptions pulls;
  // images.cacheBudget: after a pull, unused images are pruned down to this (0: never).
  uint64_t image_cache_budget = 0;
  // VM networking: the default network (opened on first use; its store is the machinery's)
  // and the host networks VMIs may join.
  net::Options network;
  // Wall clock for timestamps and deadlines; empty = the system clock.
  std::function<WallClock::time_point()> clock;
};

class Controller : public api::subresources::VmiRuntime {
 public:
  // Opens the hypervisor, garbage-collects what no VMI owns (domains named like ours, per-VMI
  // directories), starts the threads and enqueues every VM and VMI. `machinery` must outlive
  // the controller. `events` may be null.
  static Result<std::unique_ptr<Controller>> Start(api::machinery::Machinery& machinery,
                                                   api::machinery::EventRecorder* events,
                                                   ControllerOptions options);
  ~Controller() override;  // Stop()
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // Stops the threads (a reconcile in progress finishes) and closes the hypervisor connection.
  // QEMU processes keep running. Idempotent.
  void Stop();

  vmm::Accelerator accelerator() const;
  const std::string& libvirt_uri() const;

  // api::subresources::VmiRuntime
  Status Pause(const Json& vmi) override;
  Status Unpause(const Json& vmi) override;
  Status SoftReboot(const Json& vmi) override;
  Status Reset(const Json& vmi) override;
  Result<Json> GuestAgent(const Json& vmi, std::string_view kind) override;
  // console (a libvirt console stream on the domain's pty; the chardev socket of a domain an
  // older edgevirtd started with a unix console), vnc (QEMU's VNC socket): one session of each
  // per VMI, a new one ends the old; portforward: TCP/UDP to the VMI's default-network address.
  Result<std::unique_ptr<api::Stream>> OpenStream(const Json& vmi, StreamKind kind, uint16_t port,
                                                  std::string_view protocol) override;
  Result<std::string> Screenshot(const Json& vmi) override;

  // For /metrics: keys waiting in the work queue, and libvirt's statistics of the running
  // domains (vmm::Hypervisor::AllDomainStats; kUnavailable once stopped).
  size_t QueueDepth() const;
  Result<std::vector<vmm::DomainStats>> DomainStats() const;

  // For tests: blocks until the queue is empty and no reconcile runs, or the timeout passes.
  bool WaitIdleForTest(std::chrono::milliseconds timeout);

 private:
  class Impl;
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "<namespace>_<name>": the libvirt domain name of a VMI (KubeVirt's form; neither part can
// contain '_', so it splits back unambiguously).
std::string DomainName(const std::string& ns, const std::string& name);

}  // namespace edgevirt::daemon
