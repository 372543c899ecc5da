// daemon/isolation against the real kernel and a real store: a real cgroup v2 tree under the
// discovered mount, real BPF programs pinned on bpffs, a real loop device, LMDB on disk.
// Processes standing in for QEMU are forked children that sleep.
#include "daemon/isolation.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

#include "common/exec.h"
#include "tests/support/catch.h"
#include "tests/support/cgroups.h"
#include "tests/support/loop_device.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::daemon {
namespace {

namespace fs = std::filesystem;
using testing::LoopDevice;
using testing::TestCgroups;

struct Sleeper {
  Sleeper() {
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      for (;;) ::pause();
    }
  }
  ~Sleeper() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  pid_t pid;
};

// errno of open(dev) from a child moved into `cgroup` (0: opened).
int OpenIn(const fs::path& cgroup, const std::string& dev) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    int r = 0;
    int procs = ::open((cgroup / "cgroup.procs").c_str(), O_WRONLY);
    if (procs < 0 || ::write(procs, "0", 1) != 1) {
      r = 1000;
    } else {
      int fd = ::open(dev.c_str(), O_RDONLY);
      r = fd >= 0 ? 0 : errno;
    }
    (void)!::write(p[1], &r, sizeof r);
    ::_exit(0);
  }
  ::close(p[1]);
  int r = -1;
  REQUIRE(::read(p[0], &r, sizeof r) == sizeof r);
  ::close(p[0]);
  ::waitpid(pid, nullptr, 0);
  REQUIRE(r != 1000);
  return r;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string Uid(int i) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "00000000-0000-4000-8000-%012d", i);
  return buf;
}

struct Fixture {
  Fixture() : tmp("isolation-test"), cg(tmp.path()), loop((tmp / "disk.img").string(), 8 << 20) {
    store::Options so;
    so.dir = tmp / "state";
    auto s = store::Store::Open(so);
    REQUIRE(s.has_value());
    st = std::move(*s);
    Open();
  }
  void Open() {
    IsolationOptions o;
    o.cgroup_root = cg.root.string();
    o.bpf_root = cg.bpf_root.string();
    o.store = st.get();
    auto i = Isolation::Open(o);
    INFO((i ? "" : i.error().message));
    REQUIRE(i.has_value());
    iso = std::move(*i);
  }
  testing::TempDir tmp;
  TestCgroups cg;
  LoopDevice loop;
  std::unique_ptr<store::Store> st;
  std::unique_ptr<Isolation> iso;
};

TEST_CASE("a placed VM's cgroup denies a block device until it is granted") {
  Fixture f;
  Sleeper qemu;
  const std::string uid = Uid(1);
  auto report = f.iso->Place(uid, qemu.pid, cgroup::Limits{.pids_max = 100}, {});
  REQUIRE(report.has_value());
  const fs::path dir = f.iso->VmCgroup(uid);
  // pids is reported applied or unavailable, as the host offers it.
  const bool pids = ReadAll(f.iso->root() / "cgroup.controllers").find("pids") != std::string::npos;
  CHECK(report->applied == (pids ? std::vector<std::string>{"pids"} : std::vector<std::string>{}));
  CHECK(report->unavailable ==
        (pids ? std::vector<std::string>{} : std::vector<std::string>{"pids"}));
  CHECK(ReadAll(dir / "cgroup.procs").find(std::to_string(qemu.pid)) != std::string::npos);
  CHECK(OpenIn(dir, f.loop.path()) == EPERM);
  CHECK(OpenIn(dir, "/dev/null") == 0);

  REQUIRE(f.iso->BeginGrant(uid, {"data", f.loop.path(), true}));
  CHECK(OpenIn(dir, f.loop.path()) == 0);  // granted from the intent on (QEMU opens it next)
  REQUIRE(f.iso->CommitGrant(uid, "data"));
  auto grants = f.iso->Grants(uid);
  REQUIRE(grants.has_value());
  REQUIRE(grants->size() == 1);
  CHECK((*grants)[0].state == GrantState::kActive);

  REQUIRE(f.iso->BeginRevoke(uid, "data"));
  CHECK(OpenIn(dir, f.loop.path()) == 0);  // still granted until QEMU let go
  REQUIRE(f.iso->FinishRevoke(uid, "data"));
  CHECK(OpenIn(dir, f.loop.path()) == EPERM);
  CHECK(f.iso->Grants(uid)->empty());
}

TEST_CASE("a revoke in progress is not re-granted by Reconcile (restart after the map delete)") {
  Fixture f;
  Sleeper qemu;
  const std::string uid = Uid(2);
  REQUIRE(f.iso->Place(uid, qemu.pid, cgroup::Limits{}, {}).has_value());
  const fs::path dir = f.iso->VmCgroup(uid);
  REQUIRE(f.iso->BeginGrant(uid, {"data", f.loop.path(), true}));
  REQUIRE(f.iso->CommitGrant(uid, "data"));
  CHECK(OpenIn(dir, f.loop.path()) == 0);
  REQUIRE(f.iso->BeginRevoke(uid, "data"));
  // A restarted daemon reconciles from the records: the pending removal stays revoked.
  f.iso.reset();
  f.Open();
  REQUIRE(f.iso->Reconcile(uid, qemu.pid));
  CHECK(OpenIn(dir, f.loop.path()) == EPERM);
  auto grants = f.iso->Grants(uid);
  REQUIRE(grants.has_value());
  REQUIRE(grants->size() == 1);
  CHECK((*grants)[0].state == GrantState::kPendingRemove);
  REQUIRE(f.iso->FinishRevoke(uid, "data"));
  CHECK(f.iso->Grants(uid)->empty());
  CHECK(OpenIn(dir, f.loop.path()) == EPERM);
}

TEST_CASE("the filter outlives the Isolation; a recreated cgroup gets a rebuilt filter") {
  Fixture f;
  Sleeper qemu;
  const std::string uid = Uid(2);
  REQUIRE(f.iso->Place(uid, qemu.pid, {}, {{"boot", f.loop.path(), false}}).has_value());
  const fs::path dir = f.iso->VmCgroup(uid);
  CHECK(OpenIn(dir, f.loop.path()) == 0);
  f.iso.reset();  // the daemon goes away; the pinned link keeps the filter attached
  CHECK(OpenIn(dir, f.loop.path()) == 0);
  CHECK(OpenIn(dir, "/dev/kmsg") == EPERM);
  f.Open();
  REQUIRE(f.iso->Reconcile(uid, qemu.pid));
  CHECK(OpenIn(dir, f.loop.path()) == 0);

  // The VM's cgroup was recreated behind our back (e.g. QEMU restarted): the pinned link is
  // defunct; Reconcile rebuilds the filter on the new cgroup from the records.
  ::kill(qemu.pid, SIGSTOP);
  testing::RemoveCgroupTree(dir);  // kills the sleeper
  REQUIRE_FALSE(fs::exists(dir));
  Sleeper qemu2;
  REQUIRE(f.iso->Reconcile(uid, qemu2.pid));
  CHECK(OpenIn(dir, f.loop.path()) == 0);
  CHECK(OpenIn(dir, "/dev/kmsg") == EPERM);
}

TEST_CASE("200 create/grant/revoke/delete cycles return to the baseline") {
  Fixture f;
  const auto baseline = f.iso->KnownUids();
  REQUIRE(baseline.empty());
  for (int i = 0; i < 200; ++i) {
    Sleeper qemu;
    const std::string uid = Uid(1000 + i);
    REQUIRE(f.iso->Place(uid, qemu.pid, {}, {}).has_value());
    REQUIRE(f.iso->BeginGrant(uid, {"hp", f.loop.path(), true}));
    REQUIRE(f.iso->CommitGrant(uid, "hp"));
    if (i % 2 == 0) {
      REQUIRE(f.iso->BeginRevoke(uid, "hp"));
      REQUIRE(f.iso->FinishRevoke(uid, "hp"));
    }
    REQUIRE(f.iso->Release(uid));  // kills what is left in the cgroup
  }
  CHECK(f.iso->KnownUids().empty());
  std::error_code ec;
  CHECK(fs::is_empty(f.iso->root(), ec) == false);  // only cgroup interface files remain
  for (const auto& e : fs::directory_iterator(f.iso->root())) CHECK_FALSE(e.is_directory());
  CHECK(fs::is_empty(f.cg.bpf_root));
  auto raw = f.st->ListRaw("devices", "");
  REQUIRE(raw.has_value());
  CHECK(raw->empty());
}

TEST_CASE("Collect releases what no live VM owns, and only that") {
  Fixture f;
  Sleeper a, b;
  REQUIRE(f.iso->Place(Uid(7), a.pid, {}, {}).has_value());
  REQUIRE(f.iso->Place(Uid(8), b.pid, {}, {{"d", f.loop.path(), true}}).has_value());
  REQUIRE(f.iso->Collect({Uid(7)}));
  CHECK(f.iso->KnownUids() == std::set<std::string>{Uid(7)});
  CHECK(fs::exists(f.iso->VmCgroup(Uid(7))));
  CHECK_FALSE(fs::exists(f.iso->VmCgroup(Uid(8))));
  CHECK(f.iso->Grants(Uid(8))->empty());
}

TEST_CASE("under systemd (INVOCATION_ID) the daemon moves into <own>/daemon, VMs go to <own>/vms") {
  testing::TempDir tmp("isolation-systemd");
  TestCgroups cg(tmp.path());
  const fs::path unit = cg.root / "edgevirtd.service";  // stands in for the delegated unit
  fs::create_directories(unit);
  store::Options so;
  so.dir = tmp / "state";
  auto st = store::Store::Open(so);
  REQUIRE(st.has_value());
  // A child process placed in the "unit" cgroup opens the Isolation as the daemon would and
  // reports where it ended up.
  int p[2];
  REQUIRE(::pipe(p) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::string result = "move failed";
    int procs = ::open((unit / "cgroup.procs").c_str(), O_WRONLY);
    if (procs >= 0 && ::write(procs, "0", 1) == 1) {
      ::setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef", 1);
      IsolationOptions o;
      o.bpf_root = cg.bpf_root.string();
      o.store = st->get();
      auto iso = Isolation::Open(o);
      if (!iso) {
        result = "open: " + iso.error().message;
      } else {
        result = (*iso)->root().string() + "|" + ReadAll("/proc/self/cgroup");
      }
    }
    (void)!::write(p[1], result.data(), result.size());
    ::_exit(0);
  }
  ::close(p[1]);
  std::string result;
  char buf[4096];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) result.append(buf, n);
  ::close(p[0]);
  ::waitpid(pid, nullptr, 0);
  INFO(result);
  const fs::path mount = testing::Cgroup2Mount();
  const std::string own = "/" + unit.lexically_relative(mount).string();
  CHECK(result.starts_with((unit / "vms").string() + "|"));
  CHECK(result.find("0::" + own + "/daemon\n") != std::string::npos);
  CHECK(fs::is_directory(unit / "daemon"));
  (*st)->Close();
}

TEST_CASE("limits from a VMI: cpu.max, cpu.weight, memory with QEMU's overhead") {
  Json vmi = Json::parse(R"({"spec":{"domain":{"cpu":{"cores":2},"memory":{"guest":"1Gi"},
      "resources":{"requests":{"cpu":"500m","memory":"1Gi"},"limits":{"cpu":"2","memory":"2Gi"}}}}})");
  auto l = LimitsForVmi(vmi);
  REQUIRE(l.has_value());
  CHECK(l->cpu_max_quota_us == 200000u);
  CHECK(l->cpu_weight == 1u + ((512u - 2u) * 9999u) / 262142u);
  const uint64_t overhead = (1ull << 30) / 512 + (64ull << 20) + 2 * (8ull << 20);
  CHECK(l->memory_max == (2ull << 30) + overhead);
  CHECK(l->memory_high == (1ull << 30) + overhead);
  CHECK(l->pids_max == 16384u);
  Json bad = Json::parse(R"({"spec":{"domain":{"resources":{"limits":{"cpu":"lots"}}}}})");
  CHECK_FALSE(LimitsForVmi(bad).has_value());
}

}  // namespace
}  // namespace edgevirt::daemon
