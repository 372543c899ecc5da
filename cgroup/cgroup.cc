#include "cgroup/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <thread>

#include "common/fd.h"

namespace edgevirt::cgroup {
namespace {

namespace fs = std::filesystem;

// Reads a whole (small, virtual) file. cgroupfs and procfs files report size 0, so read until
// EOF rather than trusting stat().
Result<std::string> ReadFile(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open " + path.string(), errno);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read " + path.string(), errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// One write(2) of the whole value: cgroupfs parses each write as one command, and reports the
// kernel's refusal (EINVAL, EBUSY, EOPNOTSUPP, ...) on that write.
Status WriteFile(const fs::path& path, std::string_view value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open " + path.string(), errno);
  for (;;) {
    ssize_t n = ::write(fd.get(), value.data(), value.size());
    if (n >= 0 && static_cast<size_t>(n) == value.size()) return Ok();
    if (n < 0 && errno == EINTR) continue;
    if (n >= 0) return MakeError(Code::kInternal, "write " + path.string() + ": short write");
    return ErrnoError("write " + std::string(value) + " to " + path.string(), errno);
  }
}

std::vector<std::string_view> SplitWs(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n')) ++i;
    size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t' && s[j] != '\n') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::optional<uint64_t> ParseU64(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string UnescapeMountPath(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' &&
        s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
      out.push_back(
          static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// A file holding one number (memory.current); nullopt when absent or not a number.
std::optional<uint64_t> ReadSingleValue(const fs::path& path) {
  auto text = ReadFile(path);
  if (!text) return std::nullopt;
  auto fields = SplitWs(*text);
  if (fields.size() != 1) return std::nullopt;
  return ParseU64(fields[0]);
}

// "populated 0|1" of cgroup.events (the whole subtree); nullopt when unreadable.
std::optional<bool> Populated(const fs::path& dir) {
  auto text = ReadFile(dir / "cgroup.events");
  if (!text) return std::nullopt;
  auto v = ParseKeyedValue(*text, "populated");
  if (!v) return std::nullopt;
  return *v != 0;
}

// `dir` and every cgroup below it.
void CollectSubtree(const fs::path& dir, std::vector<fs::path>& out) {
  out.push_back(dir);
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_directory(type_ec) && !it->is_symlink(type_ec)) CollectSubtree(it->path(), out);
  }
}

bool SubtreeHasPids(const fs::path& dir) {
  std::vector<fs::path> all;
  CollectSubtree(dir, all);
  return std::any_of(all.begin(), all.end(), [](const fs::path& d) { return !Pids(d).empty(); });
}

}  // namespace

Result<fs::path> ParseCgroup2Mount(std::string_view mountinfo) {
  // Fields: id parent maj:min root mount-point options [optional...] - fstype source super.
  size_t pos = 0;
  while (pos < mountinfo.size()) {
    size_t eol = mountinfo.find('\n', pos);
    if (eol == std::string_view::npos) eol = mountinfo.size();
    auto fields = SplitWs(mountinfo.substr(pos, eol - pos));
    pos = eol + 1;
    auto sep = std::find(fields.begin(), fields.end(), std::string_view("-"));
    if (fields.size() < 5 || sep == fields.end() || sep + 1 == fields.end() ||
        sep - fields.begin() < 6) {
      continue;
    }
    if (*(sep + 1) == "cgroup2") return fs::path(UnescapeMountPath(fields[4]));
  }
  return MakeError(Code::kNotFound, "no cgroup2 file system in mountinfo");
}

Result<std::string> ParseOwnCgroup(std::string_view proc_cgroup) {
  size_t pos = 0;
  while (pos < proc_cgroup.size()) {
    size_t eol = proc_cgroup.find('\n', pos);
    if (eol == std::string_view::npos) eol = proc_cgroup.size();
    std::string_view line = proc_cgroup.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.substr(0, 3) == "0::") return std::string(line.substr(3));
  }
  return MakeError(Code::kNotFound, "no cgroup v2 (0::) line");
}

std::optional<uint64_t> ParseKeyedValue(std::string_view text, std::string_view key) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    auto fields = SplitWs(text.substr(pos, eol - pos));
    pos = eol + 1;
    if (fields.size() == 2 && fields[0] == key) return ParseU64(fields[1]);
  }
  return std::nullopt;
}

Result<fs::path> FindCgroup2Mount() {
  ASSIGN_OR_RETURN(std::string text, ReadFile("/proc/self/mountinfo"));
  auto mount = ParseCgroup2Mount(text);
  if (!mount) return std::move(mount).error().Wrap("/proc/self/mountinfo");
  return mount;
}

Result<std::string> OwnCgroup(pid_t pid) {
  fs::path file =
      pid == 0 ? fs::path("/proc/self/cgroup") : fs::path("/proc") / std::to_string(pid) / "cgroup";
  ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  auto own = ParseOwnCgroup(text);
  if (!own) return std::move(own).error().Wrap(file.string());
  return own;
}

Result<std::set<std::string>> AvailableControllers(const fs::path& dir) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(dir / "cgroup.controllers"));
  std::set<std::string> out;
  for (auto c : SplitWs(text)) out.emplace(c);
  return out;
}

Status EnableControllers(const fs::path& dir, const std::set<std::string>& want) {
  ASSIGN_OR_RETURN(auto available, AvailableControllers(dir));
  ASSIGN_OR_RETURN(std::string enabled_text, ReadFile(dir / "cgroup.subtree_control"));
  auto enabled = SplitWs(enabled_text);
  for (const auto& c : want) {
    if (!available.count(c)) continue;
    if (std::find(enabled.begin(), enabled.end(), c) != enabled.end()) continue;
    RETURN_IF_ERROR(WriteFile(dir / "cgroup.subtree_control", "+" + c));
  }
  return Ok();
}

Status CreateCgroup(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) return Ok();
  return ErrnoError("create cgroup " + dir.string(), errno);
}

Status MovePid(const fs::path& dir, pid_t pid) {
  auto st = WriteFile(dir / "cgroup.procs", std::to_string(pid));
  if (!st) return std::move(st).error().Wrap("move pid " + std::to_string(pid));
  return Ok();
}

std::vector<pid_t> Pids(const fs::path& dir) {
  std::vector<pid_t> out;
  auto text = ReadFile(dir / "cgroup.procs");
  if (!text) return out;
  for (auto f : SplitWs(*text)) {
    if (auto v = ParseU64(f); v && *v > 0) out.push_back(static_cast<pid_t>(*v));
  }
  return out;
}

Status KillAll(const fs::path& dir, const KillOptions& options) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return Ok();
  bool via_kill_file = options.use_cgroup_kill && fs::exists(dir / "cgroup.kill", ec);
  if (via_kill_file) {
    // cgroup.kill (5.14) kills the whole subtree and is safe against forks in flight.
    // It fails with EOPNOTSUPP in a threaded cgroup: then kill pid by pid.
    auto st = WriteFile(dir / "cgroup.kill", "1");
    if (!st) {
      if (!fs::exists(dir, ec)) return Ok();
      via_kill_file = false;
    }
  }
  auto deadline = std::chrono::steady_clock::now() + options.timeout;
  for (;;) {
    if (!via_kill_file) {
      // Without cgroup.kill a process may fork between our read of cgroup.procs and the kill,
      // so keep killing until the subtree is empty.
      std::vector<fs::path> all;
      CollectSubtree(dir, all);
      for (const auto& d : all) {
        for (pid_t pid : Pids(d)) ::kill(pid, SIGKILL);
      }
    }
    // cgroup.events covers the subtree; fall back to cgroup.procs when it cannot be read.
    // Exited (zombie) processes leave cgroup.procs and "populated" at exit, before they are
    // reaped.
    auto populated = Populated(dir);
    bool busy = populated.has_value() ? *populated : SubtreeHasPids(dir);
    if (!busy) return Ok();
    if (!fs::exists(dir, ec)) return Ok();
    if (std::chrono::steady_clock::now() >= deadline) {
      return MakeError(Code::kTimeout, "kill all in " + dir.string() + ": processes remain after " +
                                           std::to_string(options.timeout.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Status RemoveCgroup(const fs::path& dir) {
  std::vector<fs::path> all;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return Ok();
  CollectSubtree(dir, all);
  // CollectSubtree lists parents before children: remove in reverse.
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (::rmdir(it->c_str()) != 0 && errno != ENOENT) {
      return ErrnoError("remove cgroup " + it->string(), errno);
    }
  }
  return Ok();
}

Result<uint64_t> CgroupId(const fs::path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return ErrnoError("stat cgroup " + dir.string(), errno);
  if (!S_ISDIR(st.st_mode)) return MakeError(Code::kInvalid, dir.string() + " is not a cgroup");
  return static_cast<uint64_t>(st.st_ino);
}

Result<std::vector<LimitFile>> LimitFiles(const Limits& limits) {
  std::vector<LimitFile> out;
  auto weight_ok = [](uint32_t w) { return w >= 1 && w <= 10000; };
  if (limits.cpu_max_quota_us) {
    if (*limits.cpu_max_quota_us == 0) return MakeError(Code::kInvalid, "cpu.max quota is 0");
    out.push_back({"cpu", "cpu.max",
                   std::to_string(*limits.cpu_max_quota_us) + " " + std::to_string(kCpuPeriodUs)});
  }
  if (limits.cpu_weight) {
    if (!weight_ok(*limits.cpu_weight)) {
      return MakeError(Code::kInvalid,
                       "cpu.weight " + std::to_string(*limits.cpu_weight) + " not in 1..10000");
    }
    out.push_back({"cpu", "cpu.weight", std::to_string(*limits.cpu_weight)});
  }
  // memory.high before memory.max: lowering both, the throttle takes effect before the OOM
  // limit can hit.
  if (limits.memory_high) {
    out.push_back({"memory", "memory.high", std::to_string(*limits.memory_high)});
  }
  if (limits.memory_max) {
    out.push_back({"memory", "memory.max", std::to_string(*limits.memory_max)});
  }
  if (limits.pids_max) {
    if (*limits.pids_max == 0) return MakeError(Code::kInvalid, "pids.max is 0");
    out.push_back({"pids", "pids.max", std::to_string(*limits.pids_max)});
  }
  if (limits.io_weight) {
    if (!weight_ok(*limits.io_weight)) {
      return MakeError(Code::kInvalid,
                       "io.weight " + std::to_string(*limits.io_weight) + " not in 1..10000");
    }
    out.push_back({"io", "io.weight", "default " + std::to_string(*limits.io_weight)});
  }
  return out;
}

Result<ApplyReport> ApplyLimits(const fs::path& dir, const Limits& limits) {
  ASSIGN_OR_RETURN(auto files, LimitFiles(limits));
  std::vector<std::string> needed;  // in LimitFiles order, each once
  for (const auto& f : files) {
    if (std::find(needed.begin(), needed.end(), f.controller) == needed.end()) {
      needed.push_back(f.controller);
    }
  }
  ApplyReport report;
  if (needed.empty()) return report;
  RETURN_IF_ERROR(
      EnableControllers(dir.parent_path(), std::set<std::string>(needed.begin(), needed.end())));
  ASSIGN_OR_RETURN(auto available, AvailableControllers(dir));
  for (const auto& controller : needed) {
    if (!available.count(controller)) {
      report.unavailable.push_back(controller);
      continue;
    }
    bool wrote = false;
    for (const auto& f : files) {
      if (f.controller != controller) continue;
      std::error_code ec;
      if (!fs::exists(dir / f.file, ec)) {
        report.missing_files.push_back(f.file);
        continue;
      }
      RETURN_IF_ERROR(WriteFile(dir / f.file, f.value));
      wrote = true;
    }
    if (wrote) report.applied.push_back(controller);
  }
  return report;
}

Result<Stats> ReadStats(const fs::path& dir) {
  auto cpu = ReadFile(dir / "cpu.stat");
  if (!cpu) return std::move(cpu).error().Wrap("cgroup stats");
  Stats s;
  s.usage_usec = ParseKeyedValue(*cpu, "usage_usec");
  s.user_usec = ParseKeyedValue(*cpu, "user_usec");
  s.system_usec = ParseKeyedValue(*cpu, "system_usec");
  s.memory_current = ReadSingleValue(dir / "memory.current");
  s.pids_current = ReadSingleValue(dir / "pids.current");
  return s;
}

}  // namespace edgevirt::cgroup
