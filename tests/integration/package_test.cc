// The packages end to end (packaging/README.md): the DEB built from this build directory is
// installed on this machine, the installed daemon is started the way systemd would start the
// installed unit (its ExecStart, NOTIFY_SOCKET, WATCHDOG_USEC, INVOCATION_ID, a delegated
// cgroup of its own) and driven with the real kubectl over TLS through the kubeconfig the
// installed binary prints; then an upgrade that keeps the state, removal and purge. The RPM is
// built with rpmbuild from the same binary and inspected with rpm -qpl / -qpR.
//
// Root; RUN_SERIAL (it installs into the host's /usr, /etc, /var and listens on port 8443).
// The daemon runs in a network namespace of the test's own (its bridge, nft table and dnsmasq
// never touch the host's network) and in a cgroup the test makes and removes. A purge before
// and after (also when an assertion fails) keeps the test idempotent.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/integration/kubectl_test_util.h"
#include "tests/support/promtool.h"

namespace edgevirt::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr char kPackage[] = "edgevirt";
constexpr char kBinary[] = "/usr/bin/edgevirtd";
constexpr char kWantsLink[] = "/etc/systemd/system/multi-user.target.wants/edgevirtd.service";
constexpr char kServer[] = "https://localhost:8443";

fs::path Source(const std::string& rel) { return fs::path(EDGEVIRT_SOURCE_DIR) / rel; }

// Runs argv without Catch2 (for cleanup in destructors); its exit code, -1 if it did not run.
int RunQuietly(const std::vector<std::string>& argv) {
  std::vector<char*> cargv;
  std::vector<std::string> copy = argv;
  for (auto& a : copy) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::execvp(cargv[0], cargv.data());
    ::_exit(127);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// The installed version of the package ("" when it is not installed or only its conffiles are
// left).
std::string InstalledVersion(const fs::path& out_dir) {
  auto [code, out] = RunCommand(
      {"/usr/bin/dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", kPackage}, out_dir);
  if (code != 0 || out.rfind("installed ", 0) != 0) return "";
  return out.substr(10);
}

// PIDs whose executable is the installed edgevirtd (also after it was deleted by dpkg -r).
std::vector<pid_t> InstalledDaemons() {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    char buf[256] = {};
    const ssize_t n = ::readlink((e.path() / "exe").c_str(), buf, sizeof buf - 1);
    if (n > 0 && std::string(buf, n).rfind(kBinary, 0) == 0) pids.push_back(std::stoi(name));
  }
  return pids;
}

std::vector<std::string> Split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string s; std::getline(in, s, sep);) {
    if (!s.empty()) out.push_back(s);
  }
  return out;
}

std::string Trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

// What systemd would run for the installed unit: ExecStart's argv and the environment it sets.
struct UnitCommand {
  std::vector<std::string> argv;
  Env env;
};

// Reads ExecStart=, Environment= and WatchdogSec= of a unit. The unit has no quoting or
// specifiers (checked), so splitting at blanks is what systemd does with it.
UnitCommand ParseUnit(const fs::path& unit) {
  UnitCommand c;
  std::ifstream in(unit);
  REQUIRE(in.good());
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("ExecStart=", 0) == 0) {
      const std::string cmd = line.substr(10);
      INFO(line);
      REQUIRE(cmd.find_first_of("\"'%$\\") == std::string::npos);
      REQUIRE(c.argv.empty());  // one ExecStart
      for (auto& w : Split(cmd, ' ')) c.argv.push_back(w);
    } else if (line.rfind("Environment=", 0) == 0) {
      for (auto& kv : Split(line.substr(12), ' ')) {
        const auto eq = kv.find('=');
        REQUIRE(eq != std::string::npos);
        c.env[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
    } else if (line.rfind("WatchdogSec=", 0) == 0) {
      const std::string v = Trim(line.substr(12));
      REQUIRE(v.size() > 1);
      REQUIRE(v.back() == 's');
      c.env["WATCHDOG_USEC"] = std::to_string(std::stoll(v.substr(0, v.size() - 1)) * 1000000);
    }
  }
  REQUIRE_FALSE(c.argv.empty());
  return c;
}

std::string OwnCgroupPath() {
  std::ifstream in("/proc/self/cgroup");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  }
  return "";
}

void WriteCgroupProcs(const fs::path& cgroup, pid_t pid) {
  std::ofstream out(cgroup / "cgroup.procs");
  out << pid << std::flush;
  INFO("moving " << pid << " into " << cgroup);
  REQUIRE(out.good());
}

std::string TokenOf(const std::string& kubeconfig) {
  const auto at = kubeconfig.find("token: \"");
  REQUIRE(at != std::string::npos);
  return kubeconfig.substr(at + 8, kubeconfig.find('"', at + 8) - at - 8);
}

// The host side of the test: packages built, the installed daemon started as systemd would,
// everything undone at the end whatever happened.
class PackageHost {
 public:
  PackageHost() : tmp_("ev-package"), cgroup_(tmp_.path()) {
    REQUIRE(::geteuid() == 0);
    REQUIRE(EnterPrivateNetns() == 0);
    // The "service" cgroup systemd would make for the unit (Delegate=yes).
    unit_cgroup_ = cgroup_.root / "edgevirtd.service";
    fs::create_directories(unit_cgroup_);
  }
  ~PackageHost() {
    daemon_.reset();
    // No Catch2 here (this may run while a failed assertion unwinds). A purge of a package
    // that is not installed changes nothing.
    RunQuietly({"dpkg", "--purge", kPackage});
    // QEMU/dnsmasq the daemon left (KillMode=process leaves them to systemd's stop; here the
    // test is the service manager), then the cgroups.
    cgroup_.Cleanup();
    for (const auto& [dir, mode] : restore_) {
      std::error_code ec;
      fs::create_directories(dir, ec);
      fs::permissions(dir, mode, ec);
    }
  }

  // An empty directory the purge will remove that was there before the test: made again at
  // the end, so the test leaves the host as it found it.
  void RestoreEmptyDirAtEnd(const fs::path& dir) {
    restore_.emplace_back(dir, fs::status(dir).permissions());
  }

  const TempDir& tmp() const { return tmp_; }

  // packaging/build-deb.sh on this build directory.
  fs::path BuildDeb(int revision) {
    auto [code, out] = RunCommand(
        {Source("packaging/build-deb.sh").string(), "--revision", std::to_string(revision),
         "--output", (tmp_ / "packages").string(), EDGEVIRT_BINARY_DIR},
        tmp_.path(), 120s);
    REQUIRE(code == 0);
    const fs::path deb = Trim(out.substr(0, out.find('\n')));
    REQUIRE(fs::exists(deb));
    return deb;
  }

  void Dpkg(const std::vector<std::string>& args) {
    std::vector<std::string> argv{"/usr/bin/dpkg"};
    argv.insert(argv.end(), args.begin(), args.end());
    Child c(argv, {{"DEBIAN_FRONTEND", "noninteractive"}}, tmp_.path(), "dpkg");
    auto code = c.Wait(180s);
    INFO("dpkg output:\n" << c.Stdout() << c.Stderr());
    REQUIRE(code.has_value());
    REQUIRE(*code == 0);
  }

  // Starts the installed unit's ExecStart the way systemd would; waits for READY=1.
  void StartInstalled(const fs::path& unit) {
    UnitCommand cmd = ParseUnit(unit);
    REQUIRE(cmd.argv[0] == kBinary);
    ++starts_;
    notify_ = std::make_unique<NotifySocket>(tmp_ / ("notify-" + std::to_string(starts_)));
    Env env = cmd.env;
    env["NOTIFY_SOCKET"] = notify_->path().string();
    std::mt19937_64 rng(std::random_device{}());
    char id[33];
    std::snprintf(id, sizeof id, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                  static_cast<unsigned long long>(rng()));
    env["INVOCATION_ID"] = id;
    env["WATCHDOG_PID"] = std::nullopt;
    // systemd's PATH for system services (the daemon runs nft, dnsmasq, qemu-img, ip, ...).
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    // systemd forks the service inside its cgroup: the test moves itself there for the fork
    // and back right after, so the daemon is born in the unit's cgroup.
    {
      const std::string own = OwnCgroupPath();
      REQUIRE_FALSE(own.empty());
      // Back home whatever happens: the cleanup kills every process left in the unit's cgroup.
      struct MoveBack {
        fs::path home;
        ~MoveBack() { std::ofstream(home / "cgroup.procs") << ::getpid() << std::flush; }
      } move_back{Cgroup2Mount() / fs::path(own).relative_path()};
      WriteCgroupProcs(unit_cgroup_, ::getpid());
      daemon_ = std::make_unique<Child>(cmd.argv, env, tmp_.path(),
                                        "edgevirtd-" + std::to_string(starts_));
    }
    REQUIRE(OwnCgroupPath() != "/" + unit_cgroup_.lexically_relative(Cgroup2Mount()).string());
    const bool ready = notify_->WaitFor("READY=1", 120s);
    INFO("notifications:\n" << notify_->Dump() << "stderr:\n" << daemon_->Stderr());
    REQUIRE(ready);
    // It moved itself into <service>/daemon, as under systemd with Delegate=yes.
    std::ifstream procs(unit_cgroup_ / "daemon" / "cgroup.procs");
    std::set<pid_t> in_daemon;
    for (pid_t p; procs >> p;) in_daemon.insert(p);
    CHECK(in_daemon.count(daemon_->pid()) == 1);
  }

  int StopInstalled() {
    daemon_->Signal(SIGTERM);
    auto code = daemon_->Wait(60s);
    INFO("stderr:\n" << daemon_->Stderr());
    REQUIRE(code.has_value());
    CHECK(notify_->WaitFor("STOPPING=1", 1s));  // sent before the exit, queued on the socket
    daemon_.reset();
    return *code;
  }

  pid_t DaemonPid() const { return daemon_ ? daemon_->pid() : -1; }

  // `edgevirtd kubeconfig ARGS...` with the installed binary and configuration, to `name`.
  // --server: in the test's network namespace only loopback exists, and the generated
  // certificate names localhost.
  fs::path Kubeconfig(const std::string& name, std::vector<std::string> args) {
    std::vector<std::string> argv{kBinary, "kubeconfig", "--server", kServer};
    argv.insert(argv.end(), args.begin(), args.end());
    auto [code, out] = RunCommand(argv, tmp_.path());
    REQUIRE(code == 0);
    const fs::path path = tmp_ / name;
    WriteFile(path, out);
    return path;
  }

 private:
  TempDir tmp_;
  TestCgroups cgroup_;
  fs::path unit_cgroup_;
  std::unique_ptr<NotifySocket> notify_;
  std::unique_ptr<Child> daemon_;
  int starts_ = 0;
  std::vector<std::pair<fs::path, fs::perms>> restore_;
};

// The paths a .deb installs (`dpkg-deb -c`), directories included, without the root.
std::vector<std::string> DebPaths(const fs::path& deb, const fs::path& out_dir) {
  auto [code, out] = RunCommand({"/usr/bin/dpkg-deb", "-c", deb.string()}, out_dir);
  REQUIRE(code == 0);
  std::vector<std::string> paths;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find(" ./");
    if (at == std::string::npos) continue;
    std::string p = line.substr(at + 2);
    if (p.size() > 1 && p.back() == '/') p.pop_back();
    if (p != "/") paths.push_back(p);
  }
  return paths;
}

std::set<std::string> Needed(const std::string& binary, const fs::path& out_dir) {
  auto [code, out] = RunCommand({"/usr/bin/readelf", "-d", binary}, out_dir);
  REQUIRE(code == 0);
  std::set<std::string> needed;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find("(NEEDED)");
    if (at == std::string::npos) continue;
    const auto a = line.find('[', at), b = line.find(']', at);
    needed.insert(line.substr(a + 1, b - a - 1));
  }
  return needed;
}

// The package that owns the library `soname` as the dynamic loader finds it for `binary`.
std::string OwnerOfLibrary(const std::string& binary, const std::string& soname,
                           const fs::path& out_dir) {
  auto [code, ldd] = RunCommand({"/usr/bin/ldd", binary}, out_dir);
  REQUIRE(code == 0);
  std::string path;
  std::istringstream in(ldd);
  for (std::string line; std::getline(in, line);) {
    line = Trim(line);
    if (line.rfind(soname + " => ", 0) == 0) {
      path = line.substr(soname.size() + 4);
      path = path.substr(0, path.find(' '));
    } else if (line.rfind("/", 0) == 0 &&
               fs::path(line.substr(0, line.find(' '))).filename() == soname) {
      path = line.substr(0, line.find(' '));  // the loader itself
    }
  }
  INFO("ldd:\n" << ldd);
  REQUIRE_FALSE(path.empty());
  // Merged /usr: dpkg knows a library under the directory its package ships it in.
  std::vector<std::string> candidates{path, fs::canonical(path).string()};
  for (const std::string& p : std::vector<std::string>(candidates)) {
    if (p.rfind("/usr/", 0) == 0) {
      candidates.push_back(p.substr(4));
    } else {
      candidates.push_back("/usr" + p);
    }
  }
  for (const auto& p : candidates) {
    auto [scode, owner] = RunCommand({"/usr/bin/dpkg", "-S", p}, out_dir);
    if (scode == 0) {
      std::string pkg = owner.substr(0, owner.find(':'));
      return pkg;
    }
  }
  FAIL("no package owns " << path);
  return "";
}

TEST_CASE("the DEB installs, runs under its unit's command line, upgrades, removes, purges") {
  PackageHost host;
  const fs::path tmp = host.tmp().path();

  // A previous run's package goes first; a host whose /var/lib/edgevirt or /etc/edgevirt
  // belongs to no package is someone's real installation: refuse to touch it.
  if (!InstalledVersion(tmp).empty()) host.Dpkg({"--purge", kPackage});
  RunQuietly({"dpkg", "--purge", kPackage});  // conffiles of an earlier `dpkg -r`
  for (const char* dir : {"/var/lib/edgevirt", "/etc/edgevirt"}) {
    INFO(dir << " holds files that no package owns; the test would delete them");
    std::error_code ec;
    REQUIRE((!fs::exists(dir) || fs::is_empty(dir, ec)));
    if (fs::exists(dir)) host.RestoreEmptyDirAtEnd(dir);
  }
  REQUIRE(InstalledDaemons().empty());

  const fs::path deb1 = host.BuildDeb(1);
  const fs::path deb2 = host.BuildDeb(2);
  const std::vector<std::string> files = DebPaths(deb1, tmp);
  const std::set<std::string> file_set(files.begin(), files.end());
  CHECK(file_set.count(kBinary) == 1);
  CHECK(file_set.count("/etc/edgevirt/edgevirtd.yaml") == 1);
  CHECK(file_set.count("/usr/lib/tmpfiles.d/edgevirt.conf") == 1);
  CHECK(file_set.count("/var/lib/edgevirt") == 1);
  std::string unit;
  for (const auto& f : files) {
    if (fs::path(f).filename() == "edgevirtd.service") unit = f;
  }
  REQUIRE_FALSE(unit.empty());

  // Install: enabled (the symlink deb-systemd-helper makes without a running systemd), not
  // started, the configuration passes the daemon's check.
  host.Dpkg({"-i", deb1.string()});
  const std::string v1 = InstalledVersion(tmp);
  CHECK(v1.ends_with("-1"));
  CHECK(fs::is_symlink(kWantsLink));
  {
    std::error_code ec;
    CHECK(fs::read_symlink(kWantsLink, ec) == unit);
  }
  CHECK(InstalledDaemons().empty());
  CHECK_FALSE(fs::exists("/var/lib/edgevirt/state"));
  CHECK(fs::is_directory("/run/edgevirt"));  // tmpfiles.d, applied by postinst
  {
    auto [code, out] = RunCommand({kBinary, "check-config", "/etc/edgevirt/edgevirtd.yaml"}, tmp);
    CHECK(code == 0);
    CHECK(out == "/etc/edgevirt/edgevirtd.yaml: ok\n");
    // It is examples/edgevirtd.yaml, whose keys daemon_config_test compares with the parser's.
    CHECK(ReadFile("/etc/edgevirt/edgevirtd.yaml") == ReadFile(Source("examples/edgevirtd.yaml")));
  }
  // Depends names the package of every library the binary needs.
  {
    auto [code, depends] = RunCommand({"/usr/bin/dpkg-deb", "-f", deb1.string(), "Depends"}, tmp);
    REQUIRE(code == 0);
    std::set<std::string> depended;
    for (auto& d : Split(depends, ',')) depended.insert(Trim(Split(Trim(d), ' ')[0]));
    std::set<std::string> owners;
    for (const auto& soname : Needed(kBinary, tmp)) {
      const std::string owner = OwnerOfLibrary(kBinary, soname, tmp);
      INFO(soname << " comes from " << owner << "; Depends: " << depends);
      CHECK(depended.count(owner) == 1);
      owners.insert(owner);
    }
    const std::set<std::string> tools = {"libvirt-daemon-driver-qemu",
                                         "qemu-system-x86",
                                         "qemu-utils",
                                         "swtpm",
                                         "swtpm-tools",
                                         "dnsmasq-base",
                                         "nftables",
                                         "iproute2",
                                         "xorriso",
                                         "adduser"};
    for (const auto& tool : tools) {
      INFO(tool);
      CHECK(depended.count(tool) == 1);
    }
    // And nothing else: every other package in Depends provides a library the binary needs.
    for (const auto& d : depended) {
      INFO(d << " is in Depends, but no NEEDED library comes from it");
      CHECK((tools.count(d) == 1 || owners.count(d) == 1));
    }
  }

  // The installed unit's command line, as systemd would run it.
  host.StartInstalled(unit);
  Kubectl k(tmp / "kubectl");
  const fs::path admin = host.Kubeconfig("admin.kubeconfig", {});
  const std::string admin_text = ReadFile(admin);
  CHECK_THAT(admin_text, Catch::Contains("certificate-authority-data: "));
  const std::string kc = "--kubeconfig=" + admin.string();
  auto created = MustRun(k, {kc, "create", "-f", Source("examples/vm-web.yaml").string()});
  CHECK(created.out == "virtualmachine.kubevirt.io/web created\n");
  const std::string uid =
      MustRun(k, {kc, "get", "vm", "web", "-o", "jsonpath={.metadata.uid}"}).out;
  CHECK(MustRun(k, {kc, "get", "vm", "web", "-o", "jsonpath={.spec.runStrategy}"}).out == "Halted");

  const std::string ca = "/var/lib/edgevirt/pki/ca.crt";
  // No credentials: 401.
  {
    auto [code, status] =
        RunCommand({"/usr/bin/curl", "-sS", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}",
                    std::string(kServer) + "/apis/kubevirt.io/v1/virtualmachines"},
                   tmp);
    CHECK(code == 0);
    CHECK(status == "401");
  }
  // A viewer reads, cannot write (403), and scrapes /metrics.
  const fs::path viewer =
      host.Kubeconfig("viewer.kubeconfig", {"--user", "vic", "--role", "viewer"});
  const std::string vk = "--kubeconfig=" + viewer.string();
  CHECK(MustRun(k, {vk, "get", "vms", "-o", "name"}).out == "virtualmachine.kubevirt.io/web\n");
  auto del = k.Run({vk, "delete", "vm", "web"});
  CHECK(del.code != 0);
  CHECK_THAT(del.err, Catch::Contains("Error from server (Forbidden)"));
  {
    auto [code, status] = RunCommand(
        {"/usr/bin/curl", "-sS", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}", "-X",
         "DELETE", "-H", "Authorization: Bearer " + TokenOf(ReadFile(viewer)),
         std::string(kServer) + "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web"},
        tmp);
    CHECK(code == 0);
    CHECK(status == "403");
    auto [mcode, metrics] = RunCommand(
        {"/usr/bin/curl", "-sS", "--fail", "--cacert", ca, "-H",
         "Authorization: Bearer " + TokenOf(ReadFile(viewer)), std::string(kServer) + "/metrics"},
        tmp);
    CHECK(mcode == 0);
    CHECK_THAT(metrics, Catch::Contains("# TYPE edgevirt_api_request_duration_seconds histogram"));
    const PromtoolResult check = PromtoolCheckMetrics(metrics);
    INFO(check.output);
    // 0: clean; 3: lint remarks only (KubeVirt's own metric names).
    CHECK((check.exit_code == 0 || check.exit_code == 3));
  }

  // Upgrade to -2 while the daemon runs (as a VM's QEMU would: the maintainer scripts must
  // leave running processes alone; without systemd as PID 1 nothing restarts it).
  host.Dpkg({"-i", deb2.string()});
  CHECK(InstalledVersion(tmp) == v1.substr(0, v1.size() - 2) + "-2");
  CHECK(fs::is_symlink(kWantsLink));
  CHECK(InstalledDaemons() == std::vector<pid_t>{host.DaemonPid()});
  CHECK(MustRun(k, {kc, "get", "vm", "web", "-o", "jsonpath={.metadata.uid}"}).out == uid);
  CHECK(host.StopInstalled() == 0);
  CHECK(InstalledDaemons().empty());
  // The new binary on the old state: the same VM.
  host.StartInstalled(unit);
  CHECK(MustRun(k, {kc, "get", "vm", "web", "-o", "jsonpath={.metadata.uid}"}).out == uid);
  CHECK(host.StopInstalled() == 0);

  // Removal keeps the state and the configuration; purge removes everything.
  host.Dpkg({"-r", kPackage});
  CHECK_FALSE(fs::exists(kBinary));
  CHECK(fs::exists("/var/lib/edgevirt/state"));
  CHECK(fs::exists("/etc/edgevirt/edgevirtd.yaml"));
  host.Dpkg({"--purge", kPackage});
  for (const auto& f : files) {
    if (f == "/usr" || f == "/etc" || f == "/var" || f == "/var/lib" || f == "/lib" ||
        f == "/usr/bin" || f == "/usr/lib" || f.ends_with("/systemd") ||
        f.ends_with("/systemd/system") || f.ends_with("/tmpfiles.d")) {
      continue;  // directories the system has anyway
    }
    INFO(f);
    CHECK_FALSE(fs::exists(fs::symlink_status(f)));
  }
  for (const char* p :
       {"/etc/edgevirt", "/var/lib/edgevirt", "/run/edgevirt", kWantsLink,
        "/etc/systemd/system/edgevirtd.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/edgevirtd.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/edgevirtd.service",
        "/var/lib/systemd/deb-systemd-helper-masked/edgevirtd.service"}) {
    INFO(p);
    CHECK_FALSE(fs::exists(fs::symlink_status(p)));
  }
  CHECK(InstalledDaemons().empty());
  auto [scode, status] =
      RunCommand({"/usr/bin/dpkg-query", "-W", "-f=${db:Status-Status}", kPackage}, tmp);
  CHECK((scode != 0 || status == "not-installed"));
}

TEST_CASE("the RPM built from the same binary: files, %config, Requires") {
  TempDir tmp("ev-rpm");
  auto [code, out] = RunCommand({Source("packaging/build-rpm.sh").string(), "--prebuilt",
                                 "--output", (tmp / "packages").string(), EDGEVIRT_BINARY_DIR},
                                tmp.path(), 120s);
  REQUIRE(code == 0);
  const std::string rpm = Trim(out.substr(0, out.find('\n')));
  REQUIRE(fs::exists(rpm));

  auto [lcode, list] = RunCommand({"/usr/bin/rpm", "-qpl", rpm}, tmp.path());
  REQUIRE(lcode == 0);
  std::set<std::string> files;
  for (const auto& f : Split(list, '\n')) {
    // rpmbuild's build-id links of the binary (as in every AlmaLinux package).
    if (!f.starts_with("/usr/lib/.build-id")) files.insert(f);
  }
  CHECK(files == std::set<std::string>{"/etc/edgevirt", "/etc/edgevirt/edgevirtd.yaml",
                                       "/run/edgevirt", "/usr/bin/edgevirtd",
                                       "/usr/lib/systemd/system/edgevirtd.service",
                                       "/usr/lib/systemd/system-preset/50-edgevirt.preset",
                                       "/usr/lib/tmpfiles.d/edgevirt.conf", "/var/lib/edgevirt"});
  // The configuration is %config(noreplace); the state directory is 0711.
  auto [fcode, flags] =
      RunCommand({"/usr/bin/rpm", "-qp", "--qf",
                  "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILENAMES}\\n]", rpm},
                 tmp.path());
  REQUIRE(fcode == 0);
  CHECK_THAT(flags, Catch::Contains("cn -rw-r--r-- /etc/edgevirt/edgevirtd.yaml\n"));
  CHECK_THAT(flags, Catch::Contains(" drwx--x--x /var/lib/edgevirt\n"));
  CHECK_THAT(flags, Catch::Contains(" -rwxr-xr-x /usr/bin/edgevirtd\n"));

  auto [rcode, requires_text] = RunCommand({"/usr/bin/rpm", "-qpR", rpm}, tmp.path());
  REQUIRE(rcode == 0);
  std::set<std::string> reqs;
  for (auto& r : Split(requires_text, '\n')) reqs.insert(Trim(r));
  INFO("Requires:\n" << requires_text);
  for (const char* r :
       {"libvirt-daemon-driver-qemu", "qemu-kvm-core", "qemu-img", "swtpm", "swtpm-tools",
        "dnsmasq", "nftables", "iproute", "xorriso", "libvirt.so.0()(64bit)",
        "libvirt-qemu.so.0()(64bit)", "libsystemd.so.0()(64bit)", "libcurl.so.4()(64bit)",
        "libc.so.6()(64bit)"}) {
    INFO(r);
    CHECK(reqs.count(r) == 1);
  }
  // What is linked statically is no dependency.
  for (const auto& r : reqs) {
    INFO(r);
    CHECK_FALSE(r.starts_with("libstdc++"));
    CHECK_FALSE(r.starts_with("libgcc_s"));
    CHECK_FALSE(r.starts_with("liblmdb"));
    CHECK_FALSE(r.starts_with("libyaml-cpp"));
  }
}

}  // namespace
}  // namespace edgevirt::testing
