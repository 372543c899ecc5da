// QEMU processes of a test: found in /proc by a path their command line names, and a guard
// that kills them when the test ends (also after a failed REQUIRE) and registers the path for
// the vmm_reap_qemu CTest cleanup fixture (the safety net for a test killed by a timeout).
#pragma once

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/catch.h"

namespace edgevirt::testing {

// Live (non-zombie) QEMU processes whose command line names a path under `dir`.
inline std::vector<pid_t> QemuPidsUnder(const std::string& dir) {
  std::vector<pid_t> pids;
  std::error_code ec;
  auto read = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = entry.path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = read(entry.path() / "cmdline");
    if (cmdline.find("qemu-system") == std::string::npos) continue;
    if (cmdline.find(dir + "/") == std::string::npos) continue;
    std::string stat = read(entry.path() / "stat");
    size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z') continue;
    pids.push_back(pid_t(std::stoi(name)));
  }
  return pids;
}

// Kills every QEMU under `dir` on destruction. With `registry` (BUILD_DIR/vmm_test_roots), the
// dir is registered there meanwhile, so that vmm_reap_qemu cleans up after a killed test.
class QemuGuard {
 public:
  explicit QemuGuard(std::string dir, const std::string& registry = "") : dir_(std::move(dir)) {
    if (registry.empty()) return;
    std::filesystem::create_directories(registry);
    marker_ = std::filesystem::path(registry) / std::filesystem::path(dir_).filename();
    std::ofstream(marker_) << dir_ << "\n";
  }
  ~QemuGuard() {
    for (pid_t pid : QemuPidsUnder(dir_)) ::kill(pid, SIGKILL);
    if (!marker_.empty()) {
      std::error_code ec;
      std::filesystem::remove(marker_, ec);
    }
  }
  QemuGuard(const QemuGuard&) = delete;
  QemuGuard& operator=(const QemuGuard&) = delete;

 private:
  std::string dir_;
  std::filesystem::path marker_;
};

// A fresh directory /var/tmp/<prefix>.XXXXXX (0755: QEMU runs unprivileged and must reach its
// files below it) registered in BUILD_DIR/vmm_test_roots for vmm_reap_qemu. On destruction it
// kills every QEMU still running from it, waits for them, and removes it (kept when
// EDGEVIRT_KEEP_TEST_ROOT is set).
class QemuTestRoot {
 public:
  explicit QemuTestRoot(const std::string& prefix) {
    std::string tmpl = "/var/tmp/" + prefix + ".XXXXXX";
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
    REQUIRE(::chmod(path_.c_str(), 0755) == 0);
    guard_.emplace(path_, EDGEVIRT_BINARY_DIR "/vmm_test_roots");
  }
  ~QemuTestRoot() {
    guard_.reset();  // kills, unregisters
    for (int i = 0; i < 100 && !QemuPidsUnder(path_).empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::error_code ec;
    if (!std::getenv("EDGEVIRT_KEEP_TEST_ROOT")) std::filesystem::remove_all(path_, ec);
  }
  QemuTestRoot(const QemuTestRoot&) = delete;
  QemuTestRoot& operator=(const QemuTestRoot&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::optional<QemuGuard> guard_;
};

}  // namespace edgevirt::testing
