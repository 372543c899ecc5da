// sd-journal.h otherwise turns sd_journal_sendv into a macro that appends *this* file's
// CODE_FILE/CODE_LINE/CODE_FUNC, duplicating the call site's fields we send ourselves.
#define SD_JOURNAL_SUPPRESS_LOCATION

#include "common/log.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>

namespace edgevirt::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<bool> g_journal{false};
std::atomic<bool> g_stderr{true};
std::mutex g_stderr_mu;  // keeps concurrent stderr lines whole

bool JournalSocketExists() {
  struct stat st;
  return ::stat("/run/systemd/journal/socket", &st) == 0 && S_ISSOCK(st.st_mode);
}

const char* ShortFile(const char* path) {
  // Keep the path relative to the source tree: ".../edgevirt/store/store.cc" -> "store/store.cc".
  std::string_view p(path);
  for (std::string_view dir : {"common/", "store/", "api/", "daemon/", "vmm/", "cgroup/", "net/",
                               "image/", "tests/", "bench/"}) {
    auto pos = p.rfind(dir);
    if (pos != std::string_view::npos) return path + pos;
  }
  return path;
}

}  // namespace

Result<Level> ParseLevel(std::string_view s) {
  if (s == "error") return Level::kError;
  if (s == "warning" || s == "warn") return Level::kWarning;
  if (s == "notice") return Level::kNotice;
  if (s == "info") return Level::kInfo;
  if (s == "debug") return Level::kDebug;
  return MakeError(Code::kInvalid, "unknown log level \"" + std::string(s) +
                                       "\" (expected error, warning, notice, info or debug)");
}

std::string_view LevelName(Level level) {
  switch (level) {
    case Level::kError:
      return "error";
    case Level::kWarning:
      return "warning";
    case Level::kNotice:
      return "notice";
    case Level::kInfo:
      return "info";
    case Level::kDebug:
      return "debug";
  }
  return "info";
}

Result<Target> ParseTarget(std::string_view s) {
  if (s == "auto") return Target::kAuto;
  if (s == "journal") return Target::kJournal;
  if (s == "stderr") return Target::kStderr;
  return MakeError(Code::kInvalid, "unknown log target \"" + std::string(s) +
                                       "\" (expected auto, journal or stderr)");
}

void Configure(Level level, Target target) {
  SetLevel(level);
  switch (target) {
    case Target::kAuto: {
      bool journal = JournalSocketExists();
      g_journal = journal;
      g_stderr = !journal || ::isatty(STDERR_FILENO);
      break;
    }
    case Target::kJournal:
      g_journal = true;
      g_stderr = false;
      break;
    case Target::kStderr:
      g_journal = false;
      g_stderr = true;
      break;
  }
}

void SetLevel(Level level) { g_level = static_cast<int>(level); }
Level CurrentLevel() { return static_cast<Level>(g_level.load()); }
bool Enabled(Level level) {
  return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed);
}
std::string_view ActiveSink() { return g_journal ? "journal" : "stderr"; }

Line::Line(Level level, const char* file, int line, const char* func)
    : level_(level), file_(ShortFile(file)), line_(line), func_(func) {}

Line& Line::Field(std::string_view name, std::string_view value) {
  fields_.emplace_back(std::string(name), std::string(value));
  return *this;
}

Line& Line::Vm(std::string_view ns, std::string_view name, std::string_view uid) {
  if (!ns.empty()) Field("VM_NAMESPACE", ns);
  if (!name.empty()) Field("VM_NAME", name);
  if (!uid.empty()) Field("VM_UID", uid);
  return *this;
}

Line::~Line() {
  const std::string message = msg_.str();
  bool to_stderr = g_stderr.load();
  if (g_journal.load()) {
    // Each field is one "NAME=value" iovec; values may hold any bytes, newlines included.
    std::vector<std::string> parts;
    parts.reserve(7 + fields_.size());
    parts.push_back("MESSAGE=" + message);
    parts.push_back("PRIORITY=" + std::to_string(static_cast<int>(level_)));
    parts.push_back("SYSLOG_IDENTIFIER=edgevirtd");
    parts.push_back(std::string("CODE_FILE=") + file_);
    parts.push_back("CODE_LINE=" + std::to_string(line_));
    parts.push_back(std::string("CODE_FUNC=") + func_);
    for (const auto& [k, v] : fields_) parts.push_back(k + "=" + v);
    std::vector<iovec> iov(parts.size());
    for (size_t i = 0; i < parts.size(); ++i) {
      iov[i].iov_base = parts[i].data();
      iov[i].iov_len = parts[i].size();
    }
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) < 0) to_stderr = true;
  }
  if (!to_stderr) return;
  std::string out;
  out.reserve(message.size() + 64);
  out += "edgevirtd[";
  out += LevelName(level_);
  out += "] ";
  out += message;
  for (const auto& [k, v] : fields_) {
    out += ' ';
    out += k;
    out += '=';
    out += v;
  }
  out += '\n';
  std::lock_guard<std::mutex> lock(g_stderr_mu);
  ::fwrite(out.data(), 1, out.size(), stderr);
}

}  // namespace edgevirt::log
