#include "common/exec.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "common/fd.h"

namespace edgevirt {
namespace {

using Clock = std::chrono::steady_clock;

bool IsExecutableFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Owns posix_spawn attributes and file actions for one spawn.
class SpawnSetup {
 public:
  SpawnSetup() {
    ::posix_spawn_file_actions_init(&actions_);
    ::posix_spawnattr_init(&attr_);
  }
  ~SpawnSetup() {
    ::posix_spawn_file_actions_destroy(&actions_);
    ::posix_spawnattr_destroy(&attr_);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;
  posix_spawn_file_actions_t* actions() { return &actions_; }
  posix_spawnattr_t* attr() { return &attr_; }

 private:
  posix_spawn_file_actions_t actions_;
  posix_spawnattr_t attr_;
};

std::string Joined(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

std::string TrimmedStderr(const ExecResult& r) {
  std::string s = r.stderr_text;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  if (s.size() > 2048) s = s.substr(s.size() - 2048);  // the end usually says why
  if (s.empty()) s = "(no stderr)";
  return s;
}

// Kills the child's process group and reaps the child; returns its wait status.
int KillAndReap(pid_t pid) {
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// posix_spawn cannot set resource limits, so a child that needs them is forked instead. Between
// fork and exec it calls only async-signal-safe functions (the daemon is multi-threaded). An exec
// failure is reported through a close-on-exec pipe, as posix_spawn reports it. Returns the pid,
// or -1 with *err set.
pid_t ForkExecWithLimits(const std::string& program, char* const argv[], char* const envp[],
                         int out_fd, int err_fd, const ExecOptions& options, int* err) {
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) {
    *err = errno;
    return -1;
  }
  UniqueFd status_r(status_pipe[0]), status_w(status_pipe[1]);
  sigset_t empty;
  sigemptyset(&empty);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  const rlimit cpu{options.rlimit_cpu_seconds, options.rlimit_cpu_seconds};
  const rlimit as{options.rlimit_as_bytes, options.rlimit_as_bytes};
  // Before the fork: the child may not allocate.
  const char* stdin_path = options.stdin_path.empty() ? "/dev/null" : options.stdin_path.c_str();
  pid_t pid = ::fork();
  if (pid < 0) {
    *err = errno;
    return -1;
  }
  if (pid == 0) {
    int e = 0;
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
    }
    ::sigprocmask(SIG_SETMASK, &empty, nullptr);
    int null_fd = ::open(stdin_path, O_RDONLY);
    if (::setpgid(0, 0) != 0 || null_fd < 0 || ::dup2(null_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 ||
        ::dup2(err_fd, 2) < 0 ||
        (options.rlimit_cpu_seconds != 0 && ::setrlimit(RLIMIT_CPU, &cpu) != 0) ||
        (options.rlimit_as_bytes != 0 && ::setrlimit(RLIMIT_AS, &as) != 0)) {
      e = errno;
    } else {
      if (null_fd > 2) ::close(null_fd);
      ::execve(program.c_str(), argv, envp);
      e = errno;
    }
    (void)!::write(status_w.get(), &e, sizeof e);
    ::_exit(127);
  }
  // Also from this side, so the group exists whichever runs first (a kill of -pid on timeout
  // must reach it); EACCES once the child has exec'd is fine.
  ::setpgid(pid, pid);
  status_w.reset();
  int child_err = 0;
  ssize_t n;
  while ((n = ::read(status_r.get(), &child_err, sizeof child_err)) < 0 && errno == EINTR) {
  }
  if (n == static_cast<ssize_t>(sizeof child_err)) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    *err = child_err;
    return -1;
  }
  return pid;
}

}  // namespace

Result<std::string> ResolveProgram(std::string_view program) {
  if (program.empty()) return MakeError(Code::kInvalid, "empty program name");
  std::string p(program);
  if (p.front() == '/') {
    if (!IsExecutableFile(p)) return MakeError(Code::kNotFound, "program " + p + " not found");
    return p;
  }
  if (p.find('/') != std::string::npos) {
    return MakeError(Code::kInvalid, "program " + p + ": must be an absolute path or a bare name");
  }
  std::string_view dirs = kExecSearchPath;
  while (!dirs.empty()) {
    size_t colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
    std::string candidate = dir + "/" + p;
    if (IsExecutableFile(candidate)) return candidate;
  }
  return MakeError(Code::kNotFound,
                   "program " + p + " not found in " + std::string(kExecSearchPath));
}

Result<ExecResult> Exec(const std::vector<std::string>& argv, const ExecOptions& options) {
  if (argv.empty()) return MakeError(Code::kInvalid, "exec: empty argv");
  ASSIGN_OR_RETURN(std::string program, ResolveProgram(argv[0]));

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoError("exec " + argv[0] + ": pipe", errno);
  UniqueFd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) return ErrnoError("exec " + argv[0] + ": pipe", errno);
  UniqueFd err_r(err_pipe[0]), err_w(err_pipe[1]);

  SpawnSetup setup;
  // dup2 clears FD_CLOEXEC on the target, so only 0, 1 and 2 survive the exec.
  const std::string stdin_path = options.stdin_path.empty() ? "/dev/null" : options.stdin_path;
  ::posix_spawn_file_actions_addopen(setup.actions(), 0, stdin_path.c_str(), O_RDONLY, 0);
  ::posix_spawn_file_actions_adddup2(setup.actions(), out_w.get(), 1);
  ::posix_spawn_file_actions_adddup2(setup.actions(), err_w.get(), 2);
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  ::posix_spawnattr_setsigmask(setup.attr(), &empty);
  ::posix_spawnattr_setsigdefault(setup.attr(), &all);
  ::posix_spawnattr_setpgroup(setup.attr(), 0);
  ::posix_spawnattr_setflags(
      setup.attr(), POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::string path_env = "PATH=" + std::string(kExecSearchPath);
  std::string lc_env = "LC_ALL=C";
  char* envp[] = {path_env.data(), lc_env.data(), nullptr};

  pid_t pid = -1;
  if (options.rlimit_cpu_seconds != 0 || options.rlimit_as_bytes != 0) {
    int err = 0;
    pid = ForkExecWithLimits(program, cargv.data(), envp, out_w.get(), err_w.get(), options, &err);
    if (pid < 0) return ErrnoError("exec " + program, err);
  } else {
    int rc =
        ::posix_spawn(&pid, program.c_str(), setup.actions(), setup.attr(), cargv.data(), envp);
    if (rc != 0) return ErrnoError("exec " + program, rc);
  }
  out_w.reset();
  err_w.reset();

  ExecResult result;
  const auto deadline = Clock::now() + options.timeout;
  struct Stream {
    UniqueFd* fd;
    std::string* text;
    bool* truncated;
  } streams[2] = {{&out_r, &result.stdout_text, &result.stdout_truncated},
                  {&err_r, &result.stderr_text, &result.stderr_truncated}};
  char buf[16384];
  bool timed_out = false;
  while (out_r.valid() || err_r.valid()) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[2];
    int n = 0;
    for (auto& s : streams) {
      if (s.fd->valid()) fds[n++] = pollfd{s.fd->get(), POLLIN, 0};
    }
    int pr = ::poll(fds, n, static_cast<int>(std::min<long long>(left, 1000)));
    if (pr < 0 && errno != EINTR) {
      int err = errno;
      KillAndReap(pid);
      return ErrnoError("exec " + program + ": poll", err);
    }
    for (int i = 0; i < n && pr > 0; ++i) {
      if (fds[i].revents == 0) continue;
      for (auto& s : streams) {
        if (!s.fd->valid() || s.fd->get() != fds[i].fd) continue;
        ssize_t got = ::read(s.fd->get(), buf, sizeof buf);
        if (got > 0) {
          size_t room =
              options.max_output_bytes - std::min(options.max_output_bytes, s.text->size());
          size_t keep = std::min(room, static_cast<size_t>(got));
          s.text->append(buf, keep);
          if (keep < static_cast<size_t>(got)) *s.truncated = true;
        } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
          s.fd->reset();
        }
      }
    }
  }

  int status = 0;
  if (!timed_out) {
    // Both pipes are closed; the child is exiting (or closed them and lives on: wait for it up
    // to the deadline).
    while (true) {
      pid_t w = ::waitpid(pid, &status, WNOHANG);
      if (w == pid) break;
      if (w < 0 && errno != EINTR) {
        int err = errno;
        return ErrnoError("exec " + program + ": waitpid", err);
      }
      if (Clock::now() >= deadline) {
        timed_out = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  if (timed_out) status = KillAndReap(pid);
  result.timed_out = timed_out;
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  }
  return result;
}

Result<ExecResult> ExecChecked(const std::vector<std::string>& argv, const ExecOptions& options,
                               std::string_view context) {
  std::string ctx = context.empty() ? Joined(argv) : std::string(context);
  auto r = Exec(argv, options);
  if (!r) return std::move(r).error().Wrap(ctx);
  if (r->timed_out) {
    auto ms = options.timeout.count();
    std::string t = ms % 1000 == 0 ? std::to_string(ms / 1000) + "s" : std::to_string(ms) + "ms";
    return MakeError(Code::kTimeout, ctx + ": timed out after " + t + " (killed)");
  }
  if (r->signal != 0) {
    return MakeError(Code::kInternal, ctx + ": killed by signal " + std::to_string(r->signal) +
                                          ": " + TrimmedStderr(*r));
  }
  if (r->exit_code != 0) {
    return MakeError(Code::kInternal,
                     ctx + ": exit " + std::to_string(r->exit_code) + ": " + TrimmedStderr(*r));
  }
  return r;
}

}  // namespace edgevirt
