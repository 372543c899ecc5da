// cgroup/: the cgroup v2 driver of edgevirt. This is its one public header: the cgroup tree
// (discovery of the cgroup2 mount, creating, populating, killing and removing cgroups), resource
// limits and statistics, and (through cgroup/device_filter.h) the per-VM eBPF device filter.
// Depends only on common/. See README.md.
//
// Every function takes absolute cgroup directories (below the cgroup2 mount) and touches only
// files inside them, or in the parent's cgroup.subtree_control (ApplyLimits). Nothing here ever
// writes to a cgroup v1 hierarchy: the mount is found by its file system type, cgroup2.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cgroup/device_filter.h"
#include "common/result.h"

namespace edgevirt::cgroup {

// The cgroup2 mount point.
struct Mount {
  std::filesystem::path path;
};

// The mount point of the (first) cgroup2 file system in /proc/self/mountinfo:
// /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified on a hybrid one. kNotFound when
// there is none.
Result<std::filesystem::path> FindCgroup2Mount();

// The cgroup v2 path of a process (the "0::" line of /proc/<pid>/cgroup; pid 0 = this process),
// relative to the cgroup2 mount, e.g. "/system.slice/edgevirtd.service". kNotFound when the
// process is gone or has no v2 line.
Result<std::string> OwnCgroup(pid_t pid = 0);

// The controllers the parent offers to `dir` (its cgroup.controllers).
Result<std::set<std::string>> AvailableControllers(const std::filesystem::path& dir);

// Enables, in `dir`'s cgroup.subtree_control, each controller of `want` that `dir` has
// available and has not enabled yet (one "+name" write each). Unavailable controllers are not
// an error (the caller learns about them from AvailableControllers or ApplyLimits). Errors on
// a failed write, e.g. EBUSY when `dir` itself holds processes (cgroup v2 has no internal
// processes in a cgroup with domain controllers enabled).
Status EnableControllers(const std::filesystem::path& dir, const std::set<std::string>& want);

// mkdir with mode 0755; an existing directory is success.
Status CreateCgroup(const std::filesystem::path& dir);

// Moves the whole process `pid` (all its threads) into `dir` (cgroup.procs).
Status MovePid(const std::filesystem::path& dir, pid_t pid);

// The processes in `dir` itself (cgroup.procs; not those of child cgroups). Empty when the
// cgroup is gone or unreadable.
std::vector<pid_t> Pids(const std::filesystem::path& dir);

struct KillOptions {
  // Use cgroup.kill (Linux 5.14) when the cgroup has it. false forces the fallback, which
  // SIGKILLs every pid of the subtree's cgroup.procs until none is left (racy against forks,
  // hence repeated); tests use it to cover older kernels.
  bool use_cgroup_kill = true;
  // How long to wait for the subtree to become empty.
  std::chrono::milliseconds timeout{std::chrono::seconds(5)};
};

// SIGKILLs every process in `dir` and its descendants, then waits (bounded) until the subtree
// is unpopulated ("populated 0" in cgroup.events). Uses cgroup.kill when present and
// writable (not in threaded cgroups: EOPNOTSUPP), else the pid-by-pid fallback. A cgroup that does
// not exist is success. kTimeout when processes remain after the timeout (e.g. stuck in
// uninterruptible sleep).
Status KillAll(const std::filesystem::path& dir, const KillOptions& options = {});

// Removes `dir` and its child cgroups, deepest first (rmdir; files in cgroupfs are not removed
// by hand, the kernel does it). A missing directory is success; a populated cgroup fails
// (EBUSY -> kUnavailable): call KillAll first.
Status RemoveCgroup(const std::filesystem::path& dir);

// The kernel's id of the cgroup at `dir`: on cgroup2 the directory's inode number. A new cgroup
// at the same path has a new id, which is how a stale device filter link is recognised.
Result<uint64_t> CgroupId(const std::filesystem::path& dir);

// Resource limits of one VM. The daemon computes the numbers; this layer writes the files. An
// unset field is not written (a new cgroup has the kernel default: no limit, weight 100).
struct Limits {
  std::optional<uint64_t> cpu_max_quota_us;  // cpu.max "<quota> 100000"
  std::optional<uint32_t> cpu_weight;        // cpu.weight, 1..10000
  std::optional<uint64_t> memory_max;        // memory.max, bytes
  std::optional<uint64_t> memory_high;       // memory.high, bytes
  std::optional<uint64_t> pids_max;          // pids.max
  std::optional<uint32_t> io_weight;         // io.weight "default N", 1..10000
};

// The cpu.max period, in microseconds (the kernel's default period).
inline constexpr uint64_t kCpuPeriodUs = 100000;

// One file write that Limits asks for.
struct LimitFile {
  std::string controller;  // "cpu", "memory", "pids", "io"
  std::string file;        // "cpu.max", ...
  std::string value;       // what is written, e.g. "50000 100000"
};

// The files `limits` asks for, in a fixed order (cpu, memory, pids, io). kInvalid for a value
// out of range (weights 1..10000, a zero quota or pids_max).
Result<std::vector<LimitFile>> LimitFiles(const Limits& limits);

struct ApplyReport {
  std::vector<std::string> applied;      // controllers whose limits were written
  std::vector<std::string> unavailable;  // controllers a set limit needs that the host lacks
  // Files of an available controller that the kernel does not provide, e.g. io.weight without
  // blk-iocost ("io.weight"); listed, never silently skipped.
  std::vector<std::string> missing_files;
};

// Enables the controllers the set limits need in the parent's cgroup.subtree_control (those
// the parent has available; the ancestors above it are the caller's), then writes every set
// limit whose controller `dir` has. A limit whose controller is unavailable is reported in
// `unavailable`. Errors only on a failed write (and kInvalid from LimitFiles).
Result<ApplyReport> ApplyLimits(const std::filesystem::path& dir, const Limits& limits);

struct Stats {
  std::optional<uint64_t> usage_usec, user_usec, system_usec;  // cpu.stat
  std::optional<uint64_t> memory_current;                      // memory.current, bytes
  std::optional<uint64_t> pids_current;                        // pids.current
};

// Reads cpu.stat (always present on cgroup2, with or without the cpu controller),
// memory.current and pids.current when present. kNotFound when the cgroup does not exist.
Result<Stats> ReadStats(const std::filesystem::path& dir);

// Pure parsers behind the functions above, exposed for tests.
//
// The cgroup2 mount point in a /proc/<pid>/mountinfo text (octal escapes such as \040 decoded).
Result<std::filesystem::path> ParseCgroup2Mount(std::string_view mountinfo);
// The path of the "0::" line of a /proc/<pid>/cgroup text.
Result<std::string> ParseOwnCgroup(std::string_view proc_cgroup);
// The value of `key` in a flat keyed file ("usage_usec 123\nuser_usec 4\n"), e.g. cpu.stat.
std::optional<uint64_t> ParseKeyedValue(std::string_view text, std::string_view key);

}  // namespace edgevirt::cgroup
