// Runs the real `promtool check metrics` (Prometheus' own parser and linter) on an exposition.
// promtool is found as $EDGEVIRT_PROMTOOL, else /opt/edgevirt-tools/bin/promtool (where
// scripts/install-deps.sh unpacks it from Debian's prometheus package without installing the
// server), else `promtool` on PATH.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/exec.h"

namespace edgevirt::testing {

inline std::string PromtoolPath() {
  if (const char* env = std::getenv("EDGEVIRT_PROMTOOL"); env && *env) return env;
  if (std::filesystem::exists("/opt/edgevirt-tools/bin/promtool")) {
    return "/opt/edgevirt-tools/bin/promtool";
  }
  for (const char* dir : {"/usr/local/bin", "/usr/bin"}) {
    const std::string p = std::string(dir) + "/promtool";
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

struct PromtoolResult {
  int exit_code = -1;  // 0: clean; 3: parsed, lint problems only; 1: did not parse
  std::string output;  // stdout + stderr
  // Lint lines "<metric> <problem>", split.
  std::vector<std::pair<std::string, std::string>> lints;
};

inline PromtoolResult PromtoolCheckMetrics(const std::string& exposition) {
  PromtoolResult r;
  const std::string promtool = PromtoolPath();
  if (promtool.empty()) {
    r.output = "promtool not found: run scripts/install-deps.sh";
    return r;
  }
  char path[] = "/tmp/edgevirt-metrics-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return r;
  ::close(fd);
  { std::ofstream(path, std::ios::binary) << exposition; }
  // argv, no shell: the exposition goes in on stdin from the file.
  ExecOptions options;
  options.stdin_path = path;
  options.timeout = std::chrono::seconds(60);
  if (auto done = Exec({promtool, "check", "metrics"}, options); done.has_value()) {
    r.output = done->stdout_text + done->stderr_text;
    r.exit_code = done->signal == 0 ? done->exit_code : -1;
  } else {
    r.output = done.error().message;
  }
  std::filesystem::remove(path);
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    const size_t sp = line.find(' ');
    if (sp == std::string::npos) continue;
    r.lints.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  return r;
}

// KubeVirt v1.0 metric names that break Prometheus' naming conventions (gauges ending in
// _total or _count, counters without _total, "ms" units). edgevirt keeps them because dashboards
// query these exact names; promtool's lint problems are accepted for these names only.
inline const std::set<std::string>& KubevirtNamesWithLintProblems() {
  static const std::set<std::string> names = {
      "kubevirt_vmi_phase_count",
      "kubevirt_vmi_memory_domain_bytes_total",
      "kubevirt_vmi_memory_swap_in_traffic_bytes_total",
      "kubevirt_vmi_memory_swap_out_traffic_bytes_total",
      "kubevirt_vmi_memory_pgmajfault",
      "kubevirt_vmi_memory_pgminfault",
      "kubevirt_vmi_vcpu_seconds",
      "kubevirt_vmi_vcpu_wait_seconds",
      "kubevirt_vmi_storage_read_times_ms_total",
      "kubevirt_vmi_storage_write_times_ms_total",
      "kubevirt_vmi_storage_flush_times_ms_total",
  };
  return names;
}

// Empty when promtool parsed `exposition` and its only lint problems are on the names above;
// else what is wrong.
inline std::string PromtoolProblems(const std::string& exposition) {
  PromtoolResult r = PromtoolCheckMetrics(exposition);
  if (r.exit_code != 0 && r.exit_code != 3) {
    return "promtool exit " + std::to_string(r.exit_code) + ": " + r.output;
  }
  std::string bad;
  for (const auto& [name, problem] : r.lints) {
    if (!KubevirtNamesWithLintProblems().count(name)) bad += name + " " + problem + "\n";
  }
  if (r.exit_code == 3 && r.lints.empty()) bad = "promtool exit 3 without lint lines: " + r.output;
  return bad;
}

}  // namespace edgevirt::testing
