// Structured logging to the systemd journal, with stderr as the fallback.
//
// Every record carries SYSLOG_IDENTIFIER=edgevirtd, PRIORITY, CODE_FILE/CODE_LINE/CODE_FUNC and
// MESSAGE, plus the fields a call site adds (VM_NAMESPACE, VM_NAME, VM_UID, ...). The logger is
// the only mutable global in the program (STYLE.md); it is thread-safe.
//
//   EV_LOG(kInfo).Field("OBJECT_KIND", "VirtualMachine").Vm(ns, name, uid) << "domain started";
#pragma once

#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace edgevirt::log {

// syslog(3) priorities, as journald stores them in PRIORITY=.
enum class Level { kError = 3, kWarning = 4, kNotice = 5, kInfo = 6, kDebug = 7 };

enum class Target {
  kAuto,     // the journal when its socket exists, else stderr; stderr also when it is a TTY
  kJournal,  // the journal only (stderr if a send fails)
  kStderr,   // stderr only
};

// Parses "error", "warning", "notice", "info", "debug".
Result<Level> ParseLevel(std::string_view s);
std::string_view LevelName(Level level);
Result<Target> ParseTarget(std::string_view s);

// Configures the process-wide logger. Safe to call at any time (SIGHUP re-applies the level).
void Configure(Level level, Target target);
void SetLevel(Level level);
Level CurrentLevel();
bool Enabled(Level level);
// Where records go right now: "journal" or "stderr" (for tests and the startup banner).
std::string_view ActiveSink();

// One record under construction; emitted by the destructor.
class Line {
 public:
  Line(Level level, const char* file, int line, const char* func);
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;
  ~Line();

  // Adds a journal field. Names must be upper case [A-Z0-9_], not starting with '_'.
  Line& Field(std::string_view name, std::string_view value);
  // Adds VM_NAMESPACE, VM_NAME and VM_UID (empty values are left out).
  Line& Vm(std::string_view ns, std::string_view name, std::string_view uid = {});

  template <typename T>
  Line& operator<<(const T& v) {
    msg_ << v;
    return *this;
  }

 private:
  Level level_;
  const char* file_;
  int line_;
  const char* func_;
  std::ostringstream msg_;
  std::vector<std::pair<std::string, std::string>> fields_;
};

// Used by EV_LOG so that disabled levels cost one comparison.
struct Voidify {
  void operator&(Line&) {}
};

}  // namespace edgevirt::log

#define EV_LOG(level)                                      \
  !::edgevirt::log::Enabled(::edgevirt::log::Level::level) \
      ? (void)0                                            \
      : ::edgevirt::log::Voidify() &                       \
            ::edgevirt::log::Line(::edgevirt::log::Level::level, __FILE__, __LINE__, __func__)
