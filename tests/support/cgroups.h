// Test-side helpers for the cgroups and bpffs pins a daemon under test makes: each test daemon
// gets a private cgroup root and pin root (so tests running side by side never collect each
// other's VMs), and the test removes both when it ends.
#pragma once

#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace edgevirt::testing {

// The cgroup2 mount point from /proc/self/mounts ("" when there is none).
inline std::filesystem::path Cgroup2Mount() {
  std::ifstream in("/proc/self/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string dev, dir, type;
    fields >> dev >> dir >> type;
    if (type == "cgroup2") return dir;
  }
  return {};
}

// A name unique to `dir` (a test's private directory), short enough for cgroup and pin paths.
inline std::string TestCgroupName(const std::filesystem::path& dir) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : dir.string()) h = (h ^ c) * 1099511628211ull;
  char buf[32];
  std::snprintf(buf, sizeof buf, "evtest-%012llx",
                static_cast<unsigned long long>(h & 0xffffffffffffull));
  return buf;
}

// Kills every process in the cgroup tree at `dir` and removes it, leaves first.
inline void RemoveCgroupTree(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_directory(ec)) RemoveCgroupTree(e.path());
  }
  for (int i = 0; i < 100; ++i) {
    std::ifstream procs(dir / "cgroup.procs");
    std::vector<pid_t> pids;
    for (pid_t p; procs >> p;) pids.push_back(p);
    if (pids.empty()) break;
    for (pid_t p : pids) ::kill(p, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // A cgroup whose last tasks are still exiting refuses rmdir (EBUSY) for a moment.
  for (int i = 0; i < 100 && ::rmdir(dir.c_str()) != 0 && errno == EBUSY; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// The `cgroups:` config section of a test daemon, and the cleanup of what it made.
struct TestCgroups {
  explicit TestCgroups(const std::filesystem::path& dir)
      : name(TestCgroupName(dir)),
        root(Cgroup2Mount() / name),
        bpf_root(std::filesystem::path("/sys/fs/bpf") / name) {}
  ~TestCgroups() { Cleanup(); }
  TestCgroups(const TestCgroups&) = delete;
  TestCgroups& operator=(const TestCgroups&) = delete;

  std::string Config() const {
    return "cgroups:\n  root: " + root.string() + "\n  bpfRoot: " + bpf_root.string() + "\n";
  }
  void Cleanup() const {
    RemoveCgroupTree(root);
    std::error_code ec;
    std::filesystem::remove_all(bpf_root, ec);
  }

  std::string name;
  std::filesystem::path root;      // <mount>/<name>: the daemon's cgroups.root
  std::filesystem::path bpf_root;  // /sys/fs/bpf/<name>
};

}  // namespace edgevirt::testing
