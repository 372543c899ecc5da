// The claims controller: provisions a volume for every core/v1 PersistentVolumeClaim from the
// storage class it names (config storage.classes) and binds the claim to it, the way a
// Kubernetes external provisioner plus the PV controller do; releases the volume when the
// claim is deleted. ResolveClaim gives the VM side the volume of a Bound claim.
//
// Threads: one store-watch thread that only enqueues, one worker thread that provisions,
// binds and releases (one claim at a time, so two claims never pick the same device), and a
// periodic resync. Independent of the VM controller: it runs with `vms.enabled: false` too.
//
// Crash safety. Every allocation is a durable raw store record (space "claims", key the claim's
// UID, value JSON {ns, name, class, kind: files|lvm|device, path, dir, vg, capacity, block,
// format, state: provisioning|bound}) written BEFORE the file or logical volume is created;
// creation is idempotent (a file is made under a temporary name and renamed into place, an
// existing LV is taken as made), then the record is marked bound and the claim's spec.volumeName
// and status written. A daemon killed at any point resumes from the records: a "provisioning"
// record is completed, a record whose claim (matched by UID) is gone is released. So a claim
// never gets two volumes and a volume never outlives its claim's deletion for longer than a
// reconcile.
//
// Host resources owned: the files of files classes (<dir>/<namespace>/<uid>.qcow2|.img and
// <dir>/<namespace>/.<uid>.tmp while being made), the LVs "edgevirt-<uid>" of LVM classes, and
// the listed devices of device classes while a claim holds them. Paths are validated against
// the class directory and never followed through symbolic links.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "api/machinery/machinery.h"
#include "common/result.h"
#include "daemon/config.h"
#include "daemon/work_queue.h"
#include "store/store.h"

namespace edgevirt::daemon {

// The raw store space of the claims records.
inline constexpr char kClaimsSpace[] = "claims";

// The provisioned volume of a Bound claim.
struct ClaimVolume {
  std::string claim_uid;
  std::string path;    // the image file or the block device
  bool block = false;  // path is a block device (LVM or a listed device)
  bool qcow2 = false;  // path is a qcow2 image (files class, format qcow2); else raw
  uint64_t capacity_bytes = 0;
  // The claim only allows read-only use: its access modes are ReadOnlyMany alone.
  bool read_only_many = false;
};

// The provisioned volume of a Bound claim ns/name. kNotFound: no such PVC; kUnavailable: not
// Bound yet or being deleted (the message says why, with the latest provisioning failure when
// there is one). Reads only the store; callable from any thread.
Result<ClaimVolume> ResolveClaim(const store::Store& store, const std::string& ns,
                                 const std::string& name);

// One claims record (the value of a kClaimsSpace entry), as JSON in the store.
struct ClaimRecord {
  enum class Kind { kFiles, kLvm, kDevice };
  enum class State { kProvisioning, kBound };
  std::string ns;
  std::string name;
  std::string class_name;
  Kind kind = Kind::kFiles;
  std::string path;          // file, LV device path (/dev/<vg>/<lv>) or listed device
  std::string dir;           // files: the class directory the file lies in
  std::string volume_group;  // lvm
  std::string lv_name;       // lvm: edgevirt-<uid>
  uint64_t capacity = 0;     // bytes: requested while provisioning, actual once bound
  bool block = false;
  std::string format;  // files: "qcow2" | "raw"
  State state = State::kProvisioning;

  std::string ToJson() const;
  static Result<ClaimRecord> FromJson(std::string_view text);
};

// The argv of the helper programs, built from validated parts (never a shell).
std::vector<std::string> QemuImgCreateArgv(const std::string& format, const std::string& path,
                                           uint64_t bytes);
std::vector<std::string> LvCreateArgv(const std::string& volume_group, const std::string& lv_name,
                                      uint64_t bytes);
std::vector<std::string> LvRemoveArgv(const std::string& volume_group, const std::string& lv_name);

// Capacity as Kubernetes writes a binary quantity: 1073741824 → "1Gi", 1610612736 → "1536Mi",
// 1000000000 → "1000000000".
std::string FormatCapacity(uint64_t bytes);

struct ClaimsOptions {
  // The configured classes with their defaults applied (Config::EffectiveStorageClasses).
  std::vector<StorageClass> classes;
  // The group QEMU runs as, which owns the image files (root:<group>, mode 0660) and the
  // per-namespace directories (0750) when the daemon runs as root. Empty: the first of "kvm",
  // "nogroup", "nobody" that exists.
  std::string qemu_group;
  // Every claim and record is reconciled at least this often.
  std::chrono::milliseconds resync_period{30'000};
  // Helper programs time out after this (qemu-img, lvcreate, lvremove).
  std::chrono::milliseconds exec_timeout{120'000};
};

class Claims {
 public:
  // Validates the classes (files dirs are created with mode 0711 and resolved once; their
  // symbolic links are resolved here and never below), starts the threads, and enqueues every
  // claim and every record: records of claims that no longer exist are released. `machinery`
  // (and `events`, which may be null) must outlive the controller.
  static Result<std::unique_ptr<Claims>> Start(api::machinery::Machinery& machinery,
                                               api::machinery::EventRecorder* events,
                                               ClaimsOptions options);
  ~Claims();  // Stop()
  Claims(const Claims&) = delete;
  Claims& operator=(const Claims&) = delete;

  // Stops the threads; a provisioning step in progress finishes first. Idempotent.
  void Stop();

  // For tests: blocks until the queue is empty and no work runs, or the timeout passes.
  bool WaitIdleForTest(std::chrono::milliseconds timeout);

 private:
  class Impl;
  explicit Claims(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgevirt::daemon
