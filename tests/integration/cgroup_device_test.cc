// cgroup/ against the real kernel: cgroups made under the discovered cgroup2 mount, a device
// filter attached to one of them, pins in bpffs, a loop device as the hotplugged disk. Each
// check runs open() in a forked child that moved itself into the cgroup; the test process itself
// stays where it is. Needs root and losetup; uses the host's bpffs at /sys/fs/bpf, or a private
// one in a mount namespace of the test's own when the host has none (tests/support/bpffs.h).
//
// Everything made here (cgroups <mount>/edgevirt-test-<pid>-<n>, pins
// /sys/fs/bpf/edgevirt-test-<pid>-<n>, loop devices) is removed by the Env guard, also when a
// check fails.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>

#include "cgroup/cgroup.h"
#include "common/exec.h"
#include "tests/support/bpffs.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::cgroup {
namespace {

namespace fs = std::filesystem;

#define REQUIRE_OK(expr)                                                      \
  do {                                                                        \
    auto&& r_ = (expr);                                                       \
    if (!r_.has_value()) FAIL(#expr << " failed: " << r_.error().ToString()); \
  } while (false)

const fs::path kBpffs = "/sys/fs/bpf";

// The cgroups, pins and loop devices of one test case; removed in the destructor.
class Env {
 public:
  Env() {
    REQUIRE(::geteuid() == 0);
    static const Result<std::string> bpffs = testing::EnsureBpffs();
    if (!bpffs) FAIL("bpffs: " << bpffs.error().ToString());
    auto mount = FindCgroup2Mount();
    REQUIRE(mount.has_value());
    static int counter = 0;
    std::string name =
        "edgevirt-test-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    root_ = *mount / name;
    pin_root_ = kBpffs / name;
    REQUIRE_OK(CreateCgroup(root_));
    vm_ = root_ / "vm";
    REQUIRE_OK(CreateCgroup(vm_));
    pin_dir_ = pin_root_ / "vm";
  }
  ~Env() {
    // Best effort, in the order that frees each thing: processes, cgroups, pins, loop devices.
    (void)KillAll(root_);
    if (auto st = RemoveCgroup(root_); !st) WARN("cleanup: " << st.error().ToString());
    if (auto dirs = ListPinDirs(pin_root_)) {
      for (const auto& d : *dirs) (void)RemovePins(pin_root_ / d);
    }
    ::rmdir(pin_root_.c_str());
    for (const auto& loop : loops_) (void)Exec({"losetup", "-d", loop});
  }
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;

  const fs::path& root() const { return root_; }
  const fs::path& vm() const { return vm_; }
  const fs::path& pin_root() const { return pin_root_; }
  const fs::path& pin_dir() const { return pin_dir_; }

  // A 1 MiB loop device backed by a file in the temp dir; detached by the destructor.
  std::string LoopDevice() {
    auto file = tmp_.path() / ("disk" + std::to_string(loops_.size()));
    {
      std::ofstream out(file);
      out << std::string(1 << 20, '\0');
    }
    auto r = ExecChecked({"losetup", "--find", "--show", file.string()});
    REQUIRE(r.has_value());
    std::string dev = r->stdout_text;
    while (!dev.empty() && (dev.back() == '\n' || dev.back() == ' ')) dev.pop_back();
    REQUIRE(dev.rfind("/dev/loop", 0) == 0);
    loops_.push_back(dev);
    return dev;
  }

 private:
  testing::TempDir tmp_{"ev-cgroup"};
  fs::path root_, vm_, pin_root_, pin_dir_;
  std::vector<std::string> loops_;
};

// Forks a child that moves itself into `cgroup_dir` and opens `path`: 0 when open() succeeded,
// else its errno (255: the child could not join the cgroup).
int OpenInCgroup(const fs::path& cgroup_dir, const std::string& path, int flags = O_RDONLY) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (!MovePid(cgroup_dir, ::getpid())) ::_exit(255);
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    ::_exit(fd >= 0 ? 0 : errno);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

// A child (and a grandchild, both in `cgroup_dir`) that sleep until killed. Returns the child's
// pid once both are in the cgroup.
pid_t SleepersInCgroup(const fs::path& cgroup_dir) {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipefd[0]);
    if (!MovePid(cgroup_dir, ::getpid())) ::_exit(255);
    if (::fork() == 0) {  // inherits the cgroup
      (void)!::write(pipefd[1], "g", 1);
      for (;;) ::pause();
    }
    (void)!::write(pipefd[1], "c", 1);
    for (;;) ::pause();
  }
  ::close(pipefd[1]);
  char buf[2];
  size_t got = 0;
  while (got < 2) {
    ssize_t n = ::read(pipefd[0], buf + got, 2 - got);
    REQUIRE(n > 0);
    got += static_cast<size_t>(n);
  }
  ::close(pipefd[0]);
  return pid;
}

std::vector<std::string> Keys(std::vector<DeviceRule> rules) {
  std::vector<std::string> out;
  for (const auto& r : rules) out.push_back(RuleKey(r) + "/" + AccessString(r.access));
  std::sort(out.begin(), out.end());
  return out;
}

TEST_CASE("the device filter denies what is not allowed, and one map update changes that") {
  Env env;
  std::string loop = env.LoopDevice();
  auto rule = RuleForPath(loop, kRead | kWrite);
  REQUIRE(rule.has_value());
  CHECK(rule->type == DeviceType::kBlock);
  CHECK(rule->major == 7);

  // Without a filter the cgroup may open anything (checks the helper, not the filter).
  CHECK(OpenInCgroup(env.vm(), loop) == 0);

  auto filter = DeviceFilter::Create(env.vm(), env.pin_dir(), BaseRules());
  if (!filter) FAIL("create: " << filter.error().ToString());
  auto& f = **filter;
  CHECK(fs::exists(env.pin_dir() / "map"));
  CHECK(fs::exists(env.pin_dir() / "link"));
  CHECK(f.cgroup_id() == CgroupId(env.vm()).value());

  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  CHECK(OpenInCgroup(env.vm(), "/dev/null", O_RDWR) == 0);
  CHECK(OpenInCgroup(env.vm(), "/dev/urandom") == 0);
  // The parent cgroup and this process are not filtered.
  CHECK(OpenInCgroup(env.root(), loop) == 0);

  REQUIRE_OK(f.Allow(*rule));
  CHECK(OpenInCgroup(env.vm(), loop) == 0);
  CHECK(OpenInCgroup(env.vm(), loop, O_RDWR) == 0);

  // Allow replaces the access bits: write only, so a read-only open fails.
  DeviceRule write_only = *rule;
  write_only.access = kWrite;
  REQUIRE_OK(f.Allow(write_only));
  CHECK(OpenInCgroup(env.vm(), loop, O_WRONLY) == 0);
  CHECK(OpenInCgroup(env.vm(), loop, O_RDONLY) == EPERM);
  CHECK(OpenInCgroup(env.vm(), loop, O_RDWR) == EPERM);

  REQUIRE_OK(f.Remove(*rule));
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  CHECK(OpenInCgroup(env.vm(), "/dev/null", O_RDWR) == 0);
  REQUIRE_OK(f.Remove(*rule));  // absent: success

  // The wildcard minor covers every loop device.
  DeviceRule any_loop{DeviceType::kBlock, 7, kAnyMinor, kRead};
  REQUIRE_OK(f.Allow(any_loop));
  CHECK(OpenInCgroup(env.vm(), loop) == 0);
  REQUIRE_OK(f.Remove(any_loop));
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);

  // The type is part of the key: a char rule with the loop device's numbers grants nothing.
  DeviceRule as_char = *rule;
  as_char.type = DeviceType::kChar;
  REQUIRE_OK(f.Allow(as_char));
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  REQUIRE_OK(f.Remove(as_char));

  auto listed = f.List();
  REQUIRE(listed.has_value());
  CHECK(Keys(*listed) == Keys(BaseRules()));

  // Sync adds, fixes and removes.
  auto desired = BaseRules();
  desired.push_back(*rule);
  desired.front().access = kRead | kWrite;  // /dev/null without mknod
  REQUIRE_OK(f.Allow(as_char));             // an extra that Sync must delete
  REQUIRE_OK(f.Sync(desired));
  listed = f.List();
  REQUIRE(listed.has_value());
  CHECK(Keys(*listed) == Keys(desired));
  CHECK(OpenInCgroup(env.vm(), loop) == 0);
  REQUIRE_OK(f.Sync(BaseRules()));
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  CHECK(OpenInCgroup(env.vm(), "/dev/null", O_RDWR) == 0);

  // Bad rules are refused before the kernel sees them.
  CHECK(f.Allow({DeviceType::kBlock, 7, 1, 0}).error().code == Code::kInvalid);
  CHECK(f.Allow({DeviceType::kBlock, 7, 1, 8}).error().code == Code::kInvalid);

  // A second Create over the same pins is refused and leaves them alone.
  auto again = DeviceFilter::Create(env.vm(), env.pin_dir(), BaseRules());
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().code == Code::kAlreadyExists);
  CHECK(fs::exists(env.pin_dir() / "link"));
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
}

TEST_CASE("the pinned filter outlives the process that made it and is found again") {
  Env env;
  std::string loop = env.LoopDevice();
  auto rule = RuleForPath(loop, kRead | kWrite);
  REQUIRE(rule.has_value());
  auto rules = BaseRules();
  rules.push_back(*rule);

  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto f = DeviceFilter::Create(env.vm(), env.pin_dir(), rules);
    ::_exit(f.has_value() ? 0 : 1);  // closes every fd of the filter
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);

  // The kernel still enforces with no process holding the filter.
  CHECK(OpenInCgroup(env.vm(), loop) == 0);
  CHECK(OpenInCgroup(env.vm(), "/dev/zero") == 0);

  auto dirs = ListPinDirs(env.pin_root());
  REQUIRE(dirs.has_value());
  CHECK(*dirs == std::vector<std::string>{"vm"});

  auto opened = DeviceFilter::Open(env.vm(), env.pin_dir());
  if (!opened) FAIL("open: " << opened.error().ToString());
  auto& f = **opened;
  CHECK(f.cgroup_id() == CgroupId(env.vm()).value());
  CHECK(f.map_id() != 0);
  CHECK(f.prog_id() != 0);
  auto listed = f.List();
  REQUIRE(listed.has_value());
  CHECK(Keys(*listed) == Keys(rules));

  // The re-opened map is the one the kernel uses.
  REQUIRE_OK(f.Remove(*rule));
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  REQUIRE_OK(f.Allow(*rule));
  CHECK(OpenInCgroup(env.vm(), loop) == 0);

  auto missing = DeviceFilter::Open(env.vm(), env.pin_root() / "no-such-vm");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Code::kNotFound);
}

TEST_CASE("pins of a removed or recreated cgroup are stale; RemovePins clears them") {
  Env env;
  std::string loop = env.LoopDevice();
  {
    auto f = DeviceFilter::Create(env.vm(), env.pin_dir(), BaseRules());
    if (!f) FAIL("create: " << f.error().ToString());
  }
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  uint64_t old_id = CgroupId(env.vm()).value();

  // Removed: the link is detached with the cgroup.
  REQUIRE_OK(RemoveCgroup(env.vm()));
  auto gone = DeviceFilter::Open(env.vm(), env.pin_dir());
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error().code == Code::kConflict);

  // Recreated at the same path: a new cgroup (new id) that the old link does not filter.
  REQUIRE_OK(CreateCgroup(env.vm()));
  CHECK(CgroupId(env.vm()).value() != old_id);
  auto stale = DeviceFilter::Open(env.vm(), env.pin_dir());
  REQUIRE_FALSE(stale.has_value());
  CHECK(stale.error().code == Code::kConflict);
  INFO(stale.error().message);
  CHECK(OpenInCgroup(env.vm(), loop) == 0);

  REQUIRE_OK(RemovePins(env.pin_dir()));
  CHECK_FALSE(fs::exists(env.pin_dir()));
  REQUIRE_OK(RemovePins(env.pin_dir()));  // idempotent
  CHECK(ListPinDirs(env.pin_root()).value().empty());
  auto none = DeviceFilter::Open(env.vm(), env.pin_dir());
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().code == Code::kNotFound);

  // A fresh filter on the new cgroup enforces again.
  auto fresh = DeviceFilter::Create(env.vm(), env.pin_dir(), BaseRules());
  if (!fresh) FAIL("create: " << fresh.error().ToString());
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  CHECK(OpenInCgroup(env.vm(), "/dev/null") == 0);

  // Half a pin pair (a crash inside Create) is stale too.
  REQUIRE(::unlink((env.pin_dir() / "link").c_str()) == 0);
  auto half = DeviceFilter::Open(env.vm(), env.pin_dir());
  REQUIRE_FALSE(half.has_value());
  CHECK(half.error().code == Code::kConflict);
  // The object still holds the link: enforcement lasts until it is closed.
  CHECK(OpenInCgroup(env.vm(), loop) == EPERM);
  fresh->reset();
  CHECK(OpenInCgroup(env.vm(), loop) == 0);
  REQUIRE_OK(RemovePins(env.pin_dir()));
}

TEST_CASE("Create refuses a pin dir outside bpffs and leaves nothing attached") {
  Env env;
  std::string loop = env.LoopDevice();
  testing::TempDir not_bpffs("ev-pins");
  auto f = DeviceFilter::Create(env.vm(), not_bpffs / "vm", BaseRules());
  REQUIRE_FALSE(f.has_value());
  CHECK(f.error().code == Code::kInvalid);
  CHECK(OpenInCgroup(env.vm(), loop) == 0);
}

TEST_CASE("ApplyLimits writes what the host has and reports the rest") {
  Env env;
  auto available = AvailableControllers(env.root());  // what the VM's parent can enable
  REQUIRE(available.has_value());
  Limits limits;
  limits.cpu_max_quota_us = 150000;
  limits.cpu_weight = 200;
  limits.memory_max = 512ull << 20;
  limits.memory_high = 480ull << 20;
  limits.pids_max = 4096;
  limits.io_weight = 300;
  auto report = ApplyLimits(env.vm(), limits);
  if (!report) FAIL("apply: " << report.error().ToString());

  std::vector<std::string> want_unavailable;
  for (const char* c : {"cpu", "memory", "pids", "io"}) {
    bool have = available->count(c) > 0;
    bool applied = std::count(report->applied.begin(), report->applied.end(), c) > 0;
    bool unavailable = std::count(report->unavailable.begin(), report->unavailable.end(), c) > 0;
    INFO(c);
    CHECK(unavailable == !have);
    if (!have) {
      want_unavailable.push_back(c);
      WARN("controller " << c << " is not available here: its limits were not checked");
    } else if (std::string(c) == "io" && !applied) {
      // io.weight needs blk-iocost; then the file is reported missing.
      CHECK(report->missing_files == std::vector<std::string>{"io.weight"});
    } else {
      CHECK(applied);
    }
  }
  CHECK(report->unavailable == want_unavailable);

  auto read = [&](const char* file) {
    std::ifstream in(env.vm() / file);
    std::string s;
    std::getline(in, s);
    return s;
  };
  if (available->count("cpu")) {
    CHECK(read("cpu.max") == "150000 100000");
    CHECK(read("cpu.weight") == "200");
  }
  if (available->count("memory")) {
    CHECK(read("memory.max") == std::to_string(512ull << 20));
    CHECK(read("memory.high") == std::to_string(480ull << 20));
  }
  if (available->count("pids")) CHECK(read("pids.max") == "4096");

  auto nothing = ApplyLimits(env.vm(), Limits{});
  REQUIRE(nothing.has_value());
  CHECK(nothing->applied.empty());
  CHECK(nothing->unavailable.empty());

  Limits bad;
  bad.cpu_weight = 0;
  auto refused = ApplyLimits(env.vm(), bad);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == Code::kInvalid);

  // Stats: cpu.stat exists with or without the cpu controller.
  pid_t sleeper = SleepersInCgroup(env.vm());
  auto stats = ReadStats(env.vm());
  REQUIRE(stats.has_value());
  CHECK(stats->usage_usec.has_value());
  CHECK(stats->user_usec.has_value());
  CHECK(stats->system_usec.has_value());
  CHECK(stats->pids_current.has_value() == (available->count("pids") > 0));
  if (stats->pids_current) CHECK(*stats->pids_current == 2);
  CHECK(stats->memory_current.has_value() == (available->count("memory") > 0));
  REQUIRE_OK(KillAll(env.vm()));
  int status = 0;
  ::waitpid(sleeper, &status, 0);
  auto no_cgroup = ReadStats(env.root() / "no-such");
  REQUIRE_FALSE(no_cgroup.has_value());
  CHECK(no_cgroup.error().code == Code::kNotFound);
}

void CheckKillAll(Env& env, const KillOptions& options) {
  fs::path sub = env.vm() / "sub";  // a nested cgroup: KillAll covers the subtree
  REQUIRE_OK(CreateCgroup(sub));
  pid_t a = SleepersInCgroup(env.vm());
  pid_t b = SleepersInCgroup(sub);
  auto vm_pids = Pids(env.vm());
  CHECK(vm_pids.size() == 2);
  CHECK(std::count(vm_pids.begin(), vm_pids.end(), a) == 1);
  CHECK(Pids(sub).size() == 2);

  auto busy = RemoveCgroup(env.vm());
  REQUIRE_FALSE(busy.has_value());
  CHECK(fs::exists(env.vm()));

  REQUIRE_OK(KillAll(env.vm(), options));
  CHECK(Pids(env.vm()).empty());
  CHECK(Pids(sub).empty());
  for (pid_t p : {a, b}) {
    int status = 0;
    REQUIRE(::waitpid(p, &status, 0) == p);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
  }
  REQUIRE_OK(RemoveCgroup(env.vm()));
  CHECK_FALSE(fs::exists(env.vm()));
  REQUIRE_OK(RemoveCgroup(env.vm()));  // missing: success
  REQUIRE_OK(KillAll(env.vm()));       // missing: success
}

TEST_CASE("KillAll kills every process of the subtree with cgroup.kill") {
  Env env;
  REQUIRE(fs::exists(env.vm() / "cgroup.kill"));  // Linux >= 5.14
  CheckKillAll(env, KillOptions{});
}

TEST_CASE("KillAll kills every process of the subtree without cgroup.kill") {
  Env env;
  KillOptions options;
  options.use_cgroup_kill = false;
  CheckKillAll(env, options);
}

TEST_CASE("MovePid, Pids and OwnCgroup agree") {
  Env env;
  auto mount = FindCgroup2Mount().value();
  pid_t pid = SleepersInCgroup(env.vm());
  auto pids = Pids(env.vm());
  CHECK(std::find(pids.begin(), pids.end(), pid) != pids.end());
  auto own = OwnCgroup(pid);
  REQUIRE(own.has_value());
  CHECK(mount / own->substr(1) == env.vm());
  CHECK_FALSE(MovePid(env.vm(), 0x7ffffff0).has_value());
  REQUIRE_OK(KillAll(env.vm()));
  int status = 0;
  ::waitpid(pid, &status, 0);
}

}  // namespace
}  // namespace edgevirt::cgroup
