// The per-VM eBPF device filter (part of the public header cgroup/cgroup.h).
//
// One BPF_PROG_TYPE_CGROUP_DEVICE program per VM cgroup, attached through a bpf_link, that
// looks its answer up in a hash map {type, major, minor} -> access bits: first the exact
// minor, then the wildcard minor (kAnyMinor). Hotplug is one map update; nothing is ever
// re-attached. Map and link are pinned in bpffs (<pin_dir>/map, <pin_dir>/link) so that they
// survive the daemon: a pinned link stays attached after the process that made it exits, and
// Open() finds both again. The map is a cache of the allow-list whose truth lives in the
// daemon's store; Sync() makes the kernel equal to it.
//
// Kernel facts relied on (see docs/reference/cgroup-devices-and-oci-pull.md, A.2.4):
// - the program runs on mknod() and on open() of a device node; returning 0 fails it with
//   EPERM. It does not revoke fds that are already open.
// - cgroup bpf_links (Linux 5.7) have BPF_F_ALLOW_MULTI semantics: other programs on the same
//   cgroup or its ancestors (systemd's, libvirt's) still run, and every one must allow.
// - when the cgroup is removed, the link is detached automatically and stays "defunct" while
//   pinned; a new cgroup at the same path has a new id, so Open() refuses the old pins.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "common/result.h"

namespace edgevirt::cgroup {

// BPF_DEVCG_DEV_* (linux/bpf.h).
enum class DeviceType : uint32_t { kBlock = 1, kChar = 2 };
// BPF_DEVCG_ACC_* (linux/bpf.h); a rule's access is an OR of these.
enum Access : uint32_t { kMknod = 1, kRead = 2, kWrite = 4 };
inline constexpr uint32_t kAccessAll = kMknod | kRead | kWrite;
// A rule with this minor matches every minor of its major.
inline constexpr uint32_t kAnyMinor = 0xffffffff;

struct DeviceRule {
  DeviceType type;
  uint32_t major;
  uint32_t minor;   // kAnyMinor: every minor
  uint32_t access;  // OR of Access bits
  bool operator==(const DeviceRule&) const = default;
};

// The stable text form of a rule's device, without the access: "b:7:3", "c:136:*". Used as the
// suffix of the rule's key in the daemon's store.
std::string RuleKey(const DeviceRule& rule);
// Parses RuleKey's form back; kInvalid for anything else (including access bits outside
// kAccessAll or no bit at all).
Result<DeviceRule> ParseRuleKey(std::string_view key, uint32_t access);
// The rule for the device node at `dev_path` (stat(), following symlinks): its type, major and
// minor with `access`. kNotFound when the path does not exist, kInvalid when it is not a block
// or character device.
Result<DeviceRule> RuleForPath(const std::string& dev_path, uint32_t access);
// "rwm"-style text of access bits ("rw", "m", ...), for logs and messages.
std::string AccessString(uint32_t access);

// The devices every QEMU needs, by the numbers that Documentation/admin-guide/devices.txt
// fixes, whether or not the node exists on this host (a rule for a missing node grants nothing,
// and a fixed list keeps the allow-list the same on every host and across daemon versions):
//   c 1:3 null, 1:5 zero, 1:7 full, 1:8 random, 1:9 urandom                      rwm
//   c 5:0 tty, c 5:2 ptmx, c 136..143:* Unix98 PTY slaves (one wildcard rule per major)  rwm
//   c 10:232 kvm, 10:200 net/tun, 10:238 vhost-net, 10:241 vhost-vsock            rw
// The PTY range is 136-143 as devices.txt lists it (KubeVirt #15851 used 136-151). Disks,
// hostdevs, /dev/vfio/* and the like are per-VM rules, added by the caller.
std::vector<DeviceRule> BaseRules();

// Map size: no realloc dance ever. A VM needs tens of rules; a 1024-entry hash costs 89 KiB of
// kernel memory (memlock in the map fd's fdinfo, Linux 6.18).
inline constexpr uint32_t kMaxRules = 1024;

// Methods may be called from any thread (each is one or a few syscalls on the map); two Syncs
// of one filter at once race, which the daemon's single reconcile thread rules out.
class DeviceFilter {
 public:
  // Creates the map (BPF_MAP_TYPE_HASH, kMaxRules entries), fills it with `rules`, loads the
  // program (on a verifier rejection the load is retried with a log buffer and the log is in
  // the error), pins the map at <pin_dir>/map, attaches the program to `cgroup_dir` with a
  // bpf_link (BPF_CGROUP_DEVICE) and pins it at <pin_dir>/link. pin_dir (and missing parents)
  // is created; it must be on bpffs. The map is filled before the link exists, so the filter
  // never denies a device of the initial set. Raises RLIMIT_MEMLOCK first (kernels before 5.11
  // charge BPF memory to it). kAlreadyExists when either pin exists (RemovePins first); on any
  // failure nothing is left pinned.
  static Result<std::unique_ptr<DeviceFilter>> Create(const std::filesystem::path& cgroup_dir,
                                                      const std::filesystem::path& pin_dir,
                                                      const std::vector<DeviceRule>& rules);

  // Re-opens the pins of a filter made by Create (by this or an earlier process). Checks the
  // link (bpf_obj_get_info_by_fd): a cgroup link, attach type BPF_CGROUP_DEVICE, attached to
  // the cgroup now at `cgroup_dir` (same cgroup id), and its program uses the pinned map (and
  // the map has this layout). kNotFound when neither pin exists; kConflict when the pins are
  // stale (one pin missing, the cgroup removed or recreated, the link defunct, another map):
  // RemovePins and Create again.
  static Result<std::unique_ptr<DeviceFilter>> Open(const std::filesystem::path& cgroup_dir,
                                                    const std::filesystem::path& pin_dir);

  DeviceFilter(const DeviceFilter&) = delete;
  DeviceFilter& operator=(const DeviceFilter&) = delete;
  ~DeviceFilter();

  // Grants `rule` (one map update, BPF_ANY): the entry's access becomes rule.access, replacing
  // (not OR-ing) what the entry had. kTooLarge when the map is full.
  Status Allow(const DeviceRule& rule);
  // Revokes the entry of rule's device (its access is ignored); absent is success. Open fds
  // stay usable: remove a rule only after QEMU has closed the device.
  Status Remove(const DeviceRule& rule);
  // The map's entries, in no particular order.
  Result<std::vector<DeviceRule>> List() const;
  // Makes the map equal to `desired` (the last rule of a device wins): adds missing entries,
  // fixes access bits, then deletes entries not in `desired`. Each step is idempotent, so an
  // interrupted Sync is repaired by the next.
  Status Sync(const std::vector<DeviceRule>& desired);

  const std::filesystem::path& pin_dir() const { return pin_dir_; }
  uint64_t cgroup_id() const { return cgroup_id_; }
  // Kernel object ids (bpftool prog/map/link show id N), for logs.
  uint32_t map_id() const { return map_id_; }
  uint32_t prog_id() const { return prog_id_; }
  uint32_t link_id() const { return link_id_; }

 private:
  DeviceFilter() = default;

  std::filesystem::path pin_dir_;
  uint64_t cgroup_id_ = 0;
  UniqueFd map_fd_;
  UniqueFd link_fd_;
  uint32_t map_id_ = 0, prog_id_ = 0, link_id_ = 0;
};

// Unpins <pin_dir>/link and <pin_dir>/map and removes pin_dir; missing ones are success. The
// kernel frees link, program and map when their last reference goes: if the cgroup still
// exists and no DeviceFilter holds the link open, this detaches the filter.
Status RemovePins(const std::filesystem::path& pin_dir);

// Whether `path` is on a bpf file system (statfs magic). Pins need one; systemd mounts it at
// /sys/fs/bpf at boot, this module never mounts it. kNotFound when `path` does not exist.
Result<bool> IsBpffs(const std::filesystem::path& path);

// The names of the subdirectories of `pin_root` (e.g. /sys/fs/bpf/edgevirt), sorted, for
// garbage collection of pins no VM owns. A missing pin_root is an empty list.
Result<std::vector<std::string>> ListPinDirs(const std::filesystem::path& pin_root);

}  // namespace edgevirt::cgroup
