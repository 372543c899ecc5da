// Running a helper program (qemu-img, xorriso, ...) without a shell: an argv vector, a fixed
// program search path, stdin from /dev/null, bounded capture of stdout and stderr, and a
// deadline after which the child (and its process group) is SIGKILLed and reaped.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace edgevirt {

struct ExecOptions {
  // After this the child's process group is SIGKILLed and the child reaped.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  // Bytes kept of each of stdout and stderr; the rest is read (so the child never blocks on a
  // full pipe) and dropped, and the *_truncated flag is set.
  size_t max_output_bytes = 64 * 1024;
  // Resource limits set in the child before exec (soft and hard), 0 = unlimited (inherited):
  // RLIMIT_CPU in seconds (the child gets SIGXCPU, then SIGKILL) and RLIMIT_AS in bytes (its
  // allocations fail), as KubeVirt bounds `qemu-img info` on untrusted images.
  uint64_t rlimit_cpu_seconds = 0;
  uint64_t rlimit_as_bytes = 0;
  // The child's stdin: this file, opened read-only; empty = /dev/null.
  std::string stdin_path;
};

struct ExecResult {
  int exit_code = -1;      // the exit status when the child exited; -1 when a signal ended it
  int signal = 0;          // the signal that ended the child, 0 when it exited
  bool timed_out = false;  // the deadline passed and the child was killed (signal == SIGKILL)
  std::string stdout_text;
  std::string stderr_text;
  bool stdout_truncated = false;
  bool stderr_truncated = false;

  bool ok() const { return signal == 0 && exit_code == 0; }
};

// The directories a bare program name is looked up in, in this order. $PATH is never used.
inline constexpr std::string_view kExecSearchPath = "/usr/bin:/usr/sbin:/bin:/sbin";

// An absolute program path is used as given (it must be an executable regular file); a bare
// name (no '/') is looked up in kExecSearchPath. Anything else (a relative path with '/') is
// kInvalid; a program not found or not executable is kNotFound.
Result<std::string> ResolveProgram(std::string_view program);

// Runs argv[0] (resolved by ResolveProgram) with argv as its argument vector — never through a
// shell — with stdin /dev/null (or options.stdin_path), stdout and stderr captured, the environment
// reduced to PATH=kExecSearchPath and LC_ALL=C (stable messages), all signals at their default
// disposition and unblocked (the daemon blocks SIGTERM/SIGINT/SIGHUP and ignores SIGPIPE in every
// thread, and a spawned child would inherit both), in a process group of its own. Returns the
// outcome whatever the exit status, including a timeout (timed_out, signal SIGKILL). Errors only
// when the program cannot be started: kInvalid (empty argv), kNotFound (program), kInternal (pipes,
// spawn).
Result<ExecResult> Exec(const std::vector<std::string>& argv, const ExecOptions& options = {});

// Exec, then requires exit status 0. Errors are prefixed with `context` (default: the argv
// joined by spaces): "<context>: exit 1: <stderr>", "<context>: killed by signal 9: <stderr>",
// kTimeout "<context>: timed out after 10s". A failed exit is kInternal. Never pass secrets in
// argv: they would show in the error and in /proc.
Result<ExecResult> ExecChecked(const std::vector<std::string>& argv,
                               const ExecOptions& options = {}, std::string_view context = {});

}  // namespace edgevirt
