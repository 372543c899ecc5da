// A bpf file system at /sys/fs/bpf for a test or bench process. The build machines do not
// always have one mounted there (systemd mounts it at boot on production hosts); then the
// process moves into a mount namespace of its own and mounts a private bpffs instance, which
// with every pin in it disappears when the process exits — nothing is left on the host.
// Call it while the process is single-threaded (unshare(CLONE_NEWNS) needs that).
#pragma once

#include <sched.h>
#include <sys/mount.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "cgroup/cgroup.h"
#include "common/result.h"

namespace edgevirt::testing {

inline constexpr char kBpffsPath[] = "/sys/fs/bpf";

// Returns "host" when kBpffsPath already is a bpffs, "private" when one was mounted in a new
// mount namespace of this process.
inline Result<std::string> EnsureBpffs() {
  auto is = cgroup::IsBpffs(kBpffsPath);
  if (!is) return is.error();
  if (*is) return std::string("host");
  if (::unshare(CLONE_NEWNS) != 0) return ErrnoError("unshare mount namespace", errno);
  // Keep our mounts from propagating back to the host's namespace.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return ErrnoError("make mounts private", errno);
  }
  if (::mount("bpf", kBpffsPath, "bpf", 0, "mode=0700") != 0) {
    return ErrnoError(std::string("mount bpffs at ") + kBpffsPath, errno);
  }
  return std::string("private");
}

}  // namespace edgevirt::testing
