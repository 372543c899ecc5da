// QEMU processes of a test: found in /proc by a path their command line names, and a guard
// that kills them when the test ends (also after a failed REQUIRE) and registers the path for
// the vmm_reap_qemu CTest cleanup fixture (the safety net for a test killed by a timeout).
#pragma once

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

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

}  // namespace edgevirt::testing
