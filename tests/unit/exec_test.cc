// common/exec: real programs from the base system (true, false, sh, sleep, cat).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/exec.h"
#include "tests/support/catch.h"

namespace edgevirt {
namespace {

using std::chrono::milliseconds;

TEST_CASE("Exec resolves bare names in the fixed search path only") {
  auto t = ResolveProgram("true");
  REQUIRE(t.has_value());
  CHECK((*t == "/usr/bin/true" || *t == "/bin/true"));
  CHECK(ResolveProgram("/bin/sh").value() == "/bin/sh");
  CHECK(ResolveProgram("no-such-program-xyz").error().code == Code::kNotFound);
  CHECK(ResolveProgram("/no/such/program").error().code == Code::kNotFound);
  CHECK(ResolveProgram("bin/true").error().code == Code::kInvalid);
  CHECK(ResolveProgram("").error().code == Code::kInvalid);
  CHECK(ResolveProgram("/etc").error().code == Code::kNotFound);  // a directory
}

TEST_CASE("Exec reports exit status, stdout and stderr") {
  auto ok = Exec({"true"});
  REQUIRE(ok.has_value());
  CHECK(ok->ok());
  CHECK(ok->exit_code == 0);

  auto bad = Exec({"false"});
  REQUIRE(bad.has_value());
  CHECK(bad->exit_code == 1);
  CHECK_FALSE(bad->ok());

  // Arguments are passed as they are: no shell expansion of $HOME, globs or quotes.
  auto sh = Exec({"sh", "-c", "printf '%s' \"$1\"; echo oops >&2; exit 3", "sh", "$HOME *'\""});
  REQUIRE(sh.has_value());
  CHECK(sh->exit_code == 3);
  CHECK(sh->stdout_text == "$HOME *'\"");
  CHECK(sh->stderr_text == "oops\n");

  // stdin is /dev/null: cat ends at once.
  auto cat = Exec({"cat"}, ExecOptions{milliseconds(5000)});
  REQUIRE(cat.has_value());
  CHECK(cat->ok());
  CHECK(cat->stdout_text.empty());

  // The environment is reduced.
  auto env = Exec({"env"});
  REQUIRE(env.has_value());
  CHECK(env->stdout_text == "PATH=/usr/bin:/usr/sbin:/bin:/sbin\nLC_ALL=C\n");
}

TEST_CASE("Exec feeds stdin from options.stdin_path, else /dev/null, on both spawn paths") {
  char path[] = "/tmp/edgevirt-exec-stdin-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  const std::string text = "line one\n$HOME *\n";
  REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  ::close(fd);
  for (const bool limits : {false, true}) {  // posix_spawn, then fork (rlimits)
    INFO("with rlimits: " << limits);
    ExecOptions o;
    if (limits) o.rlimit_cpu_seconds = 30;
    auto none = Exec({"cat"}, o);
    REQUIRE(none.has_value());
    CHECK(none->ok());
    CHECK(none->stdout_text.empty());
    o.stdin_path = path;
    auto fed = Exec({"cat"}, o);
    REQUIRE(fed.has_value());
    CHECK(fed->stdout_text == text);
    o.stdin_path = "/no/such/file";
    auto missing = Exec({"cat"}, o);
    CHECK_FALSE((missing.has_value() && missing->ok()));
  }
  ::unlink(path);
}

TEST_CASE("Exec bounds captured output and keeps draining") {
  ExecOptions o;
  o.max_output_bytes = 1000;
  // 1 MiB on stdout: more than a pipe holds, so a reader that stopped would deadlock.
  auto r = Exec({"sh", "-c", "head -c 1048576 /dev/zero; echo done >&2"}, o);
  REQUIRE(r.has_value());
  CHECK(r->ok());
  CHECK(r->stdout_text.size() == 1000);
  CHECK(r->stdout_truncated);
  CHECK(r->stderr_text == "done\n");
  CHECK_FALSE(r->stderr_truncated);
}

TEST_CASE("Exec kills and reaps a child that overruns its timeout") {
  ExecOptions o;
  o.timeout = milliseconds(300);
  auto start = std::chrono::steady_clock::now();
  // The grandchild (sleep) holds the pipes too: the whole process group is killed.
  auto r = Exec({"sh", "-c", "echo started; sleep 30; echo never"}, o);
  auto took = std::chrono::steady_clock::now() - start;
  REQUIRE(r.has_value());
  CHECK(r->timed_out);
  CHECK(r->signal == SIGKILL);
  CHECK(r->stdout_text == "started\n");
  CHECK(took < std::chrono::seconds(5));

  auto checked = ExecChecked({"sleep", "30"}, o, "sleep a while");
  REQUIRE_FALSE(checked.has_value());
  CHECK(checked.error().code == Code::kTimeout);
  CHECK(checked.error().message == "sleep a while: timed out after 300ms (killed)");
}

TEST_CASE("ExecChecked turns failures into errors with context and stderr") {
  auto r = ExecChecked({"sh", "-c", "echo 'no such file' >&2; exit 1"}, {}, "qemu-img create x");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Code::kInternal);
  CHECK(r.error().message == "qemu-img create x: exit 1: no such file");

  auto sig = ExecChecked({"sh", "-c", "kill -TERM $$"});
  REQUIRE_FALSE(sig.has_value());
  CHECK(sig.error().message == "sh -c kill -TERM $$: killed by signal 15: (no stderr)");

  auto missing = ExecChecked({"no-such-program-xyz"}, {}, "run it");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Code::kNotFound);
  CHECK(missing.error().message ==
        "run it: program no-such-program-xyz not found in /usr/bin:/usr/sbin:/bin:/sbin");

  auto ok = ExecChecked({"echo", "hi"});
  REQUIRE(ok.has_value());
  CHECK(ok->stdout_text == "hi\n");
}

TEST_CASE("Exec gives the child default signal handling even when the caller blocks signals") {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &block, &old) == 0);
  auto r = Exec({"sh", "-c", "kill -TERM $$; sleep 5"}, ExecOptions{milliseconds(3000)});
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  REQUIRE(r.has_value());
  CHECK(r->signal == SIGTERM);
  CHECK_FALSE(r->timed_out);
}

TEST_CASE("Exec applies resource limits in the child only") {
  ExecOptions o;
  o.rlimit_cpu_seconds = 7;
  o.rlimit_as_bytes = uint64_t{512} << 20;
  auto r = Exec({"sh", "-c", "ulimit -t; ulimit -v"}, o);
  REQUIRE(r.has_value());
  CHECK(r->ok());
  CHECK(r->stdout_text == "7\n524288\n");  // ulimit -v is in KiB

  // Unlimited by default (the parent's limits are inherited as they are).
  auto d = Exec({"sh", "-c", "ulimit -t"});
  REQUIRE(d.has_value());
  CHECK(d->stdout_text == "unlimited\n");

  // The address-space limit bites: a child that needs more memory fails.
  o.rlimit_as_bytes = uint64_t{64} << 20;
  auto big = Exec({"python3", "-c", "b = bytearray(256 << 20)"}, o);
  REQUIRE(big.has_value());
  CHECK_FALSE(big->ok());
  CHECK(big->stderr_text.find("MemoryError") != std::string::npos);

  // The CPU limit bites: SIGXCPU (or SIGKILL at the hard limit) ends a busy loop.
  ExecOptions cpu;
  cpu.rlimit_cpu_seconds = 1;
  cpu.timeout = std::chrono::seconds(20);
  auto spin = Exec({"sh", "-c", "while :; do :; done"}, cpu);
  REQUIRE(spin.has_value());
  CHECK_FALSE(spin->timed_out);
  CHECK((spin->signal == SIGXCPU || spin->signal == SIGKILL));

  // Signals, process group and stdin as with posix_spawn.
  auto cat = Exec({"cat"}, o);
  REQUIRE(cat.has_value());
  CHECK(cat->ok());
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &block, &old) == 0);
  ::signal(SIGPIPE, SIG_IGN);
  o.timeout = milliseconds(3000);
  auto term = Exec({"sh", "-c", "kill -TERM $$; sleep 5"}, o);
  auto pg = Exec({"sh", "-c", "ps -o pgid= -p $$; echo $$"}, o);
  ::signal(SIGPIPE, SIG_DFL);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  REQUIRE(term.has_value());
  CHECK(term->signal == SIGTERM);
  REQUIRE(pg.has_value());
  if (pg->ok()) {  // ps may be missing
    std::string out = pg->stdout_text;
    auto nl = out.find('\n');
    REQUIRE(nl != std::string::npos);
    auto trim = [](std::string v) {
      v.erase(0, v.find_first_not_of(' '));
      v.erase(v.find_last_not_of(" \n") + 1);
      return v;
    };
    CHECK(trim(out.substr(0, nl)) == trim(out.substr(nl + 1)));
  }
  CHECK(Exec({"/no/such/program"}, o).error().code == Code::kNotFound);

  // An exec failure in the forked child is an error, as posix_spawn reports it.
  char tmpl[] = "/tmp/ev-exec-noexec-XXXXXX";
  int fd = ::mkstemp(tmpl);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd,
                  "\x7f"
                  "ELF garbage",
                  12) == 12);
  ::fchmod(fd, 0755);
  ::close(fd);
  CHECK_FALSE(Exec({tmpl}, o).has_value());
  CHECK_FALSE(Exec({tmpl}).has_value());
  ::unlink(tmpl);
}

}  // namespace
}  // namespace edgevirt
