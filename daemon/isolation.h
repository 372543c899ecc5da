// Per-VM isolation: the VM's cgroup v2 cgroup, its resource limits and its eBPF device filter,
// with LMDB as the one source of truth for what each VM may open (the fix for KubeVirt issue
// #7710: rules kept in process memory are lost on a crash and grow forever).
//
// Layout:
//   cgroups  <root>/vms/<vmi-uid>/          QEMU of that VMI, its limits, the filter's link
//   bpffs    <bpf_root>/<vmi-uid>/{map,link}  pinned, so the filter outlives the daemon
//   LMDB     raw space "devices":
//              <uid>/meta           {"cgroup": path, "cgroupId": inode, "bootId": ...}
//              <uid>/grant/<volume> {"path", "rule": "b:7:3", "access": 6, "state": ...}
//
// The kernel map of a VM is always a subset of base rules ∪ its grant records, and Reconcile
// makes it equal base ∪ the records not pending removal. Protocols (every step idempotent; a
// crash between any two steps is repaired by Reconcile):
//   grant (hotplug):  record pending-add (durable) → map update → [caller attaches] → active
//   revoke (unplug):  record pending-remove → [caller detaches, QEMU closes] → map delete →
//                     record deleted
// Intent is durable before the kernel changes, so the kernel never grants what LMDB does not
// record, and a revoked device is never re-granted from a stale record. Whether a pending grant
// is completed or rolled back is the caller's decision (it knows whether the disk is attached).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cgroup/cgroup.h"
#include "cgroup/device_filter.h"
#include "common/result.h"
#include "daemon/vmi_domain.h"
#include "store/store.h"

namespace edgevirt::daemon {

struct IsolationOptions {
  // cgroups.root: the cgroup (absolute path on the cgroup2 mount, or relative to it) under
  // which VM cgroups are made (<root>/vms/<uid>). Empty: under systemd (INVOCATION_ID set) the
  // daemon's own cgroup, the daemon then moving itself into <own>/daemon (the unit has
  // Delegate=yes); otherwise <mount>/edgevirt.
  std::string cgroup_root;
  // Pin directory on bpffs.
  std::string bpf_root = "/sys/fs/bpf/edgevirt";
  store::Store* store = nullptr;  // must outlive the Isolation
};

enum class GrantState { kPendingAdd, kActive, kPendingRemove };
std::string_view GrantStateName(GrantState s);

struct GrantRecord {
  std::string volume;  // owner
  std::string path;    // the device node when granted
  cgroup::DeviceRule rule;
  GrantState state = GrantState::kActive;
};

class Isolation {
 public:
  static Result<std::unique_ptr<Isolation>> Open(IsolationOptions options);

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path VmCgroup(const std::string& uid) const;
  std::filesystem::path PinDir(const std::string& uid) const;

  // A starting domain (vCPUs paused): records `boot` grants as active, then Reconcile (cgroup,
  // QEMU moved in, filter), then the limits. Returns which controllers were unavailable.
  Result<cgroup::ApplyReport> Place(const std::string& uid, pid_t qemu,
                                    const cgroup::Limits& limits,
                                    const std::vector<DeviceGrant>& boot);

  // Makes the kernel match LMDB for a running VM: its cgroup exists and holds `qemu`, the
  // pinned filter is attached to that cgroup (rebuilt when missing, stale or defunct), and
  // the map equals base ∪ records.
  Status Reconcile(const std::string& uid, pid_t qemu);

  // Hotplug protocol steps (see the header comment).
  Status BeginGrant(const std::string& uid, const DeviceGrant& grant);
  Status CommitGrant(const std::string& uid, const std::string& volume);
  Status BeginRevoke(const std::string& uid, const std::string& volume);
  // Removes the grant's rule from the map (unless another grant of the VM needs it) and then
  // its record. Also the rollback of a pending add. Missing record: success.
  Status FinishRevoke(const std::string& uid, const std::string& volume);

  Result<std::vector<GrantRecord>> Grants(const std::string& uid) const;
  // The rules the kernel should hold for `uid`: base ∪ records not pending removal (access
  // OR-ed per rule).
  Result<std::vector<cgroup::DeviceRule>> DesiredRules(const std::string& uid) const;

  // The VM is gone (or about to be): kills what is left in its cgroup, removes the cgroup, the
  // pins and every record. Idempotent.
  Status Release(const std::string& uid);
  // Releases every VM (records, pins, cgroups) whose uid is not in `live`.
  Status Collect(const std::set<std::string>& live);

  // Every uid that has a record, a pin directory or a cgroup (for GC and tests).
  std::set<std::string> KnownUids() const;

 private:
  explicit Isolation(IsolationOptions options) : options_(std::move(options)) {}
  Status WriteGrant(const std::string& uid, const GrantRecord& g);
  // The record of `volume`'s grant; nullopt when there is none.
  Result<std::optional<GrantRecord>> LoadGrant(const std::string& uid,
                                               const std::string& volume) const;

  IsolationOptions options_;
  std::filesystem::path root_;  // the VM cgroups' parent: <cgroup root>/vms
  std::string boot_id_;
  mutable std::mutex mu_;  // serialises protocol steps per process (one controller thread)
};

// Resource limits for a VMI's cgroup, from its spec (KubeVirt's resources + edgevirt's QEMU
// overhead, see daemon/README.md "Cgroups").
Result<cgroup::Limits> LimitsForVmi(const Json& vmi);

}  // namespace edgevirt::daemon
