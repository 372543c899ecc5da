// The per-VM cgroup and eBPF device filter through the real daemon, with a real QEMU guest, real
// loop devices as block-backed PersistentVolumeClaims, the pinned BPF map read back from
// bpffs and the LMDB records read back from the store:
//  - a process in the VM's cgroup cannot open a block device until it is hot-plugged, and
//    cannot after removevolume; the guest sees the disk come and go;
//  - SIGKILL of the daemon at every step of add and remove (fault points): after a restart the
//    kernel's rules equal the LMDB records, no grant exists without a record, none is stale;
//  - create/hotplug/delete cycles return cgroups, pins and records to the baseline.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <set>

#include "cgroup/device_filter.h"
#include "common/exec.h"
#include "store/store.h"
#include "tests/integration/vm_test_util.h"
#include "tests/support/loop_device.h"

namespace edgevirt::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// The filter rule of a device node (access left 0: compared by device only).
cgroup::DeviceRule RuleOf(const LoopDevice& loop) {
  struct stat st {};
  REQUIRE(::stat(loop.path().c_str(), &st) == 0);
  return {cgroup::DeviceType::kBlock, major(st.st_rdev), minor(st.st_rdev), 0};
}

// Opens `dev` read-only from a child process placed in `cgroup`: 0 on success, else errno.
int OpenInCgroup(const fs::path& cgroup, const std::string& dev) {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipefd[0]);
    int result = 0;
    int procs = ::open((cgroup / "cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    if (procs < 0 || ::write(procs, "0", 1) != 1) {
      result = 1000 + errno;
    } else {
      int fd = ::open(dev.c_str(), O_RDONLY | O_CLOEXEC);
      result = fd >= 0 ? 0 : errno;
    }
    (void)!::write(pipefd[1], &result, sizeof result);
    ::_exit(0);
  }
  ::close(pipefd[1]);
  int result = -1;
  REQUIRE(::read(pipefd[0], &result, sizeof result) == sizeof result);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(result < 1000);  // the move into the cgroup worked
  return result;
}

bool HasRule(const std::vector<cgroup::DeviceRule>& rules, const cgroup::DeviceRule& want) {
  return std::any_of(rules.begin(), rules.end(), [&](const cgroup::DeviceRule& r) {
    return r.type == want.type && r.major == want.major && r.minor == want.minor;
  });
}

std::vector<cgroup::DeviceRule> Sorted(std::vector<cgroup::DeviceRule> v) {
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
    return std::tie(a.type, a.major, a.minor, a.access) <
           std::tie(b.type, b.major, b.minor, b.access);
  });
  return v;
}

std::string StorageConfig(const std::vector<std::string>& devices, const fs::path& files_dir) {
  std::string list;
  for (const auto& d : devices) list += (list.empty() ? "" : ", ") + d;
  return "storage:\n"
         "  classes:\n"
         "    - name: local\n"
         "      default: true\n"
         "      type: files\n"
         "      dir: " +
         files_dir.string() +
         "\n"
         "    - name: rawfiles\n"
         "      type: files\n"
         "      format: raw\n"
         "      dir: " +
         files_dir.string() +
         "\n"
         "    - name: loops\n"
         "      type: block\n"
         "      devices: [" +
         list + "]\n";
}

Json BlockClaim(const std::string& name) {
  return {{"apiVersion", "v1"},
          {"kind", "PersistentVolumeClaim"},
          {"metadata", {{"name", name}, {"namespace", "default"}}},
          {"spec",
           {{"accessModes", {"ReadWriteOnce"}},
            {"volumeMode", "Block"},
            {"storageClassName", "loops"},
            {"resources", {{"requests", {{"storage", "16Mi"}}}}}}}};
}

// virtctl v1.0 `addvolume VM --volume-name=V --persist` (VM endpoint) or without --persist
// (VMI endpoint): bus scsi, serial = the volume name.
std::string AddVolumeBody(const std::string& volume) {
  return Json{{"name", volume},
              {"disk", {{"name", volume}, {"disk", {{"bus", "scsi"}}}, {"serial", volume}}},
              {"volumeSource",
               {{"persistentVolumeClaim", {{"claimName", volume}, {"hotpluggable", true}}}}}}
      .dump();
}

std::string VolumePhase(const Json& vmi, const std::string& volume) {
  if (!vmi.is_object() || !vmi.contains("status")) return "";
  const Json& st = vmi["status"];
  if (!st.contains("volumeStatus")) return "";
  for (const auto& v : st["volumeStatus"]) {
    if (v.value("name", "") == volume) return v.value("phase", "<none>");
  }
  return "";
}

// The block devices the guest lists (/sys/block), through its serial console.
std::string GuestBlockDevices(VmEnv& e, const std::string& uid, int n) {
  const std::string tag = "BLK" + std::to_string(n);
  REQUIRE(e.SerialType(uid, "echo " + tag + "=$(ls /sys/block | tr '\\n' ,)=" + tag));
  std::string found;
  WaitUntil(
      [&] {
        std::string log = e.SerialLog(uid);
        // The answer, not the echoed command line (which still shows "$(ls").
        for (size_t p = log.find(tag + "="); p != std::string::npos;
             p = log.find(tag + "=", p + 1)) {
          size_t end = log.find("=" + tag, p + tag.size() + 1);
          if (end == std::string::npos) continue;
          std::string body = log.substr(p + tag.size() + 1, end - p - tag.size() - 1);
          if (body.find("$(") != std::string::npos) continue;
          found = body;
          return true;
        }
        return false;
      },
      120s);
  return found;
}

// Everything a test needs: loop devices made before the daemon (its config lists them), the
// daemon with a `loops` block class, a booted guest VM.
struct HotplugFixture {
  HotplugFixture()
      : tmp("vm-devices-loops"),
        loop_a((tmp / "a.img").string(), 16 << 20),
        loop_b((tmp / "b.img").string(), 16 << 20),
        // Only loop_a is in the class: the claim binds to it; loop_b is a device no VM is
        // ever granted.
        e("vm-devices-test", StorageConfig({loop_a.path()}, VolumesDir(tmp))) {}

  static fs::path VolumesDir(const TempDir& t) {
    // QEMU runs unprivileged (nobody:kvm) and must traverse to the claims' files.
    REQUIRE(::chmod(t.path().c_str(), 0711) == 0);
    fs::create_directories(t / "volumes");
    return t / "volumes";
  }

  void CreateClaim(const std::string& name) {
    auto r = Http(e.daemon.url(), "POST", "/api/v1/namespaces/default/persistentvolumeclaims",
                  BlockClaim(name).dump());
    INFO(r.body);
    REQUIRE(r.status == 201);
    REQUIRE(WaitUntil(
        [&] {
          auto g = Http(e.daemon.url(), "GET",
                        "/api/v1/namespaces/default/persistentvolumeclaims/" + name);
          return g.status == 200 &&
                 ParseJson(g.body)["status"].value("phase", "") == std::string("Bound");
        },
        30s));
  }

  // Boots VM `name` and waits for its guest's shell (the agent connects once init ran).
  std::string BootVm(const std::string& name) {
    e.Create(e.VmManifest(name, "Always"));
    REQUIRE(e.WaitPhase(name, "Running"));
    Json vmi = e.Vmi(name);
    const std::string uid = vmi["metadata"]["uid"];
    REQUIRE(e.WaitSerial(uid, "built-in shell", 1, 300s));
    return uid;
  }

  fs::path VmCgroup(const std::string& uid) { return e.daemon.cgroups().root / "vms" / uid; }
  fs::path Pins(const std::string& uid) { return e.daemon.cgroups().bpf_root / uid; }

  std::vector<cgroup::DeviceRule> KernelRules(const std::string& uid) {
    auto f = cgroup::DeviceFilter::Open(VmCgroup(uid), Pins(uid));
    INFO((f ? "" : f.error().message));
    REQUIRE(f.has_value());
    auto rules = (*f)->List();
    REQUIRE(rules.has_value());
    return *rules;
  }

  // With the daemon stopped: base ∪ the grant records in LMDB, merged per device.
  std::vector<cgroup::DeviceRule> RecordedRules(const std::string& uid, size_t* grants = nullptr) {
    store::Options o;
    o.dir = e.daemon.state_dir() / "state";
    auto st = store::Store::Open(o);
    INFO((st ? "" : st.error().message));
    REQUIRE(st.has_value());
    auto kvs = (*st)->ListRaw("devices", uid + "/grant/");
    REQUIRE(kvs.has_value());
    if (grants) *grants = kvs->size();
    std::map<std::tuple<uint32_t, uint32_t, uint32_t>, uint32_t> acc;
    for (const auto& r : cgroup::BaseRules()) {
      acc[{static_cast<uint32_t>(r.type), r.major, r.minor}] |= r.access;
    }
    for (const auto& [key, value] : *kvs) {
      Json j = ParseJson(value);
      auto rule = cgroup::ParseRuleKey(j["rule"].get<std::string>(), j["access"].get<uint32_t>());
      REQUIRE(rule.has_value());
      acc[{static_cast<uint32_t>(rule->type), rule->major, rule->minor}] |= rule->access;
    }
    (*st)->Close();
    std::vector<cgroup::DeviceRule> out;
    for (const auto& [k, a] : acc) {
      out.push_back(
          {static_cast<cgroup::DeviceType>(std::get<0>(k)), std::get<1>(k), std::get<2>(k), a});
    }
    return out;
  }

  HttpResult Virtctl(const std::string& plural, const std::string& name, const std::string& sub,
                     const std::string& body) {
    return e.Virtctl("PUT", plural, name, sub, body);
  }

  TempDir tmp;
  LoopDevice loop_a;
  LoopDevice loop_b;
  VmEnv e;
};

TEST_CASE(
    "hotplug of a loop-device claim: the filter grants it, the guest sees it, "
    "removevolume takes both back") {
  HotplugFixture f;
  f.CreateClaim("data");
  const std::string uid = f.BootVm("vm1");
  const auto dev = RuleOf(f.loop_a);

  // QEMU runs in the VMI's own cgroup, under a pinned filter without the claim's device.
  auto qemus = f.e.Qemus();
  REQUIRE(qemus.size() == 1);
  const std::string procs = ReadFile(f.VmCgroup(uid) / "cgroup.procs");
  CHECK(procs.find(std::to_string(qemus[0])) != std::string::npos);
  CHECK(fs::exists(f.Pins(uid) / "map"));
  CHECK(fs::exists(f.Pins(uid) / "link"));
  CHECK_FALSE(HasRule(f.KernelRules(uid), dev));
  CHECK(OpenInCgroup(f.VmCgroup(uid), f.loop_a.path()) == EPERM);
  CHECK(OpenInCgroup(f.VmCgroup(uid), "/dev/null") == 0);
  // Controllers this host does not offer on cgroup2 are reported on the VMI, not skipped
  // silently (the CI machines' hybrid hierarchy has no cpu or memory controller there).
  const std::string offered = ReadFile(f.e.daemon.cgroups().root / "vms" / "cgroup.controllers");
  const bool limits_unavailable =
      offered.find("memory") == std::string::npos || offered.find("cpu") == std::string::npos;
  auto events = Http(f.e.daemon.url(), "GET", "/api/v1/namespaces/default/events");
  REQUIRE(events.status == 200);
  bool reported = false;
  const Json event_list = ParseJson(events.body);
  for (const auto& ev : event_list["items"]) {
    if (ev.value("reason", "") == "CgroupControllersUnavailable" &&
        ev["involvedObject"].value("uid", "") == uid) {
      reported = true;
    }
  }
  CHECK(reported == limits_unavailable);
  const std::string before = GuestBlockDevices(f.e, uid, 1);
  CHECK(before.find("sd") == std::string::npos);

  // virtctl addvolume --persist: the VM's volume request → VMI spec → attached.
  auto add = f.Virtctl("virtualmachines", "vm1", "addvolume", AddVolumeBody("data"));
  INFO(add.body);
  REQUIRE(add.status == 202);
  REQUIRE(WaitUntil([&] { return VolumePhase(f.e.Vmi("vm1"), "data") == "Ready"; }, 60s));
  Json vm = f.e.Vm("vm1");
  CHECK_FALSE(vm["status"].contains("volumeRequests"));
  bool persisted = false;
  for (const auto& v : vm["spec"]["template"]["spec"]["volumes"]) {
    persisted |= v.value("name", "") == "data";
  }
  CHECK(persisted);
  auto rules = f.KernelRules(uid);
  REQUIRE(HasRule(rules, dev));
  CHECK(OpenInCgroup(f.VmCgroup(uid), f.loop_a.path()) == 0);
  CHECK(OpenInCgroup(f.VmCgroup(uid), f.loop_b.path()) == EPERM);  // the other claim's device
  std::string with;
  REQUIRE(WaitUntil(
      [&] {
        static int n = 10;
        with = GuestBlockDevices(f.e, uid, n++);
        return with.find("sd") != std::string::npos;
      },
      90s));

  // A second add of the same volume is refused, as KubeVirt does.
  auto again = f.Virtctl("virtualmachineinstances", "vm1", "addvolume", AddVolumeBody("data"));
  CHECK(again.status == 409);

  // removevolume: detached, the rule gone from the map, EPERM again.
  auto rm = f.Virtctl("virtualmachines", "vm1", "removevolume", R"({"name":"data"})");
  INFO(rm.body);
  REQUIRE(rm.status == 202);
  REQUIRE(WaitUntil([&] { return VolumePhase(f.e.Vmi("vm1"), "data").empty(); }, 90s));
  REQUIRE(WaitUntil([&] { return !HasRule(f.KernelRules(uid), dev); }, 30s));
  CHECK(OpenInCgroup(f.VmCgroup(uid), f.loop_a.path()) == EPERM);
  std::string after;
  REQUIRE(WaitUntil(
      [&] {
        static int n = 100;
        after = GuestBlockDevices(f.e, uid, n++);
        return after.find("sd") == std::string::npos;
      },
      90s));

  // Deleting the VM releases its cgroup, pins and records.
  auto del = Http(f.e.daemon.url(), "DELETE",
                  "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1");
  REQUIRE((del.status == 200 || del.status == 202));
  REQUIRE(f.e.WaitUntilGone("vm1"));
  REQUIRE(WaitUntil([&] { return !fs::exists(f.VmCgroup(uid)) && !fs::exists(f.Pins(uid)); }, 30s));
  f.e.daemon.Stop();
  size_t grants = 99;
  (void)f.RecordedRules(uid, &grants);
  CHECK(grants == 0);
}

TEST_CASE("an ephemeral volume boots the guest from a claim through a discarded overlay") {
  HotplugFixture f;
  // A raw file claim holding the test guest's disk.
  Json claim = {{"apiVersion", "v1"},
                {"kind", "PersistentVolumeClaim"},
                {"metadata", {{"name", "golden"}, {"namespace", "default"}}},
                {"spec",
                 {{"accessModes", {"ReadOnlyMany"}},
                  {"storageClassName", "rawfiles"},
                  {"resources", {{"requests", {{"storage", "64Mi"}}}}}}}};
  auto r = Http(f.e.daemon.url(), "POST", "/api/v1/namespaces/default/persistentvolumeclaims",
                claim.dump());
  INFO(r.body);
  REQUIRE(r.status == 201);
  const std::string claim_uid = ParseJson(r.body)["metadata"]["uid"];
  // Bound: the provisioner made <dir>/<namespace>/<claim uid>.img (raw class).
  const fs::path image = f.tmp / "volumes" / "default" / (claim_uid + ".img");
  REQUIRE(WaitUntil(
      [&] {
        auto g = Http(f.e.daemon.url(), "GET",
                      "/api/v1/namespaces/default/persistentvolumeclaims/golden");
        return g.status == 200 &&
               ParseJson(g.body)["status"].value("phase", "") == std::string("Bound");
      },
      30s));
  REQUIRE(fs::exists(image));
  fs::copy_file(GuestDir() / "guest.raw", image, fs::copy_options::overwrite_existing);
  const std::string before = ReadFile(image);

  Json vm = f.e.VmManifest("eph", "Always");
  vm["spec"]["template"]["spec"]["volumes"][0] = {
      {"name", "root"}, {"ephemeral", {{"persistentVolumeClaim", {{"claimName", "golden"}}}}}};
  f.e.Create(vm);
  REQUIRE(f.e.WaitPhase("eph", "Running"));
  const std::string uid = f.e.Vmi("eph")["metadata"]["uid"];
  REQUIRE(f.e.WaitSerial(uid, "EDGE-GUEST-BOOTED", 1, 300s));
  const fs::path overlay = f.e.VmiDir(uid) / "ephemeral-root.qcow2";
  auto info = Exec({"qemu-img", "info", "-U", "--output", "json", overlay.string()});
  REQUIRE(info.has_value());
  INFO(info->stdout_text << info->stderr_text);
  Json j = ParseJson(info->stdout_text);
  CHECK(j["backing-filename"] == image.string());
  CHECK(j["backing-filename-format"] == "raw");
  // The guest writes through to the overlay only.
  REQUIRE(f.e.SerialType(uid,
                         "dd if=/dev/zero of=/dev/vda bs=4096 count=16 seek=1000 && "
                         "sync && echo WROTE\"\"-DONE"));
  // The marker as printed, not as echoed (the quotes split it; the echo may be wrapped too).
  const bool wrote = f.e.WaitSerial(uid, "WROTE-DONE", 1, 60s);
  if (!wrote) {
    std::cerr << "serial log, raw:\n" << nlohmann::json(f.e.SerialLog(uid)).dump() << "\n";
  }
  REQUIRE(wrote);
  CHECK(ReadFile(image) == before);
  auto del = Http(f.e.daemon.url(), "DELETE",
                  "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/eph");
  REQUIRE((del.status == 200 || del.status == 202));
  REQUIRE(WaitUntil([&] { return f.e.Vm("eph").is_null(); }, 120s));
  CHECK_FALSE(fs::exists(overlay));
  CHECK(fs::exists(image));
  CHECK(ReadFile(image) == before);
}

// Needs the fault points (-DEDGEVIRT_FAULT_INJECTION=ON: ./dev.sh test and CI).
#ifdef EDGEVIRT_FAULT_INJECTION
TEST_CASE("SIGKILL at every step of add and remove: kernel rules equal the LMDB records") {
  HotplugFixture f;
  f.CreateClaim("data");
  const std::string uid = f.BootVm("vm1");
  const auto dev = RuleOf(f.loop_a);
  const std::vector<std::pair<std::string, bool>> points = {
      {"grant.after-intent", true},    {"grant.after-kernel", true},
      {"hotplug.after-attach", true},  {"revoke.after-intent", false},
      {"hotplug.after-detach", false}, {"revoke.after-kernel", false}};
  for (const auto& [point, add] : points) {
    INFO("fault point " << point);
    f.e.daemon.Stop();
    f.e.daemon.SetEnv("EDGEVIRT_FAULT_POINT", point);
    f.e.daemon.Start();
    auto r = f.Virtctl("virtualmachineinstances", "vm1", add ? "addvolume" : "removevolume",
                       add ? AddVolumeBody("data") : R"({"name":"data"})");
    INFO(r.body);
    REQUIRE(r.status == 202);
    // The daemon dies at the point (the request was acknowledged before).
    REQUIRE(f.e.daemon.WaitExit(60s));
    // No grant without a record: every rule in the kernel is base ∪ records.
    const auto recorded = f.RecordedRules(uid);
    for (const auto& k : f.KernelRules(uid)) {
      INFO("kernel rule " << cgroup::RuleKey(k));
      CHECK(HasRule(recorded, k));
    }
    // Restart without the fault: it converges.
    f.e.daemon.SetEnv("EDGEVIRT_FAULT_POINT", std::nullopt);
    f.e.daemon.Start();
    if (add) {
      const bool ready =
          WaitUntil([&] { return VolumePhase(f.e.Vmi("vm1"), "data") == "Ready"; }, 90s);
      INFO("events: " << Http(f.e.daemon.url(), "GET", "/api/v1/namespaces/default/events").body);
      INFO("VMI: " << f.e.Vmi("vm1").dump());
      REQUIRE(ready);
      REQUIRE(WaitUntil([&] { return HasRule(f.KernelRules(uid), dev); }, 30s));
      CHECK(OpenInCgroup(f.VmCgroup(uid), f.loop_a.path()) == 0);
    } else {
      REQUIRE(WaitUntil([&] { return VolumePhase(f.e.Vmi("vm1"), "data").empty(); }, 90s));
      REQUIRE(WaitUntil([&] { return !HasRule(f.KernelRules(uid), dev); }, 30s));
      CHECK(OpenInCgroup(f.VmCgroup(uid), f.loop_a.path()) == EPERM);
    }
    // Settled: the kernel equals the records exactly.
    REQUIRE(f.e.daemon.Stop() == 0);
    CHECK(Sorted(f.KernelRules(uid)) == Sorted(f.RecordedRules(uid)));
    f.e.daemon.Start();
    // Re-arm: the next point starts from the opposite state.
    if (point == "hotplug.after-attach") {
      // The add points are done; the volume is attached for the remove points.
      REQUIRE(VolumePhase(f.e.Vmi("vm1"), "data") == "Ready");
    } else if (add) {
      auto rm = f.Virtctl("virtualmachineinstances", "vm1", "removevolume", R"({"name":"data"})");
      REQUIRE(rm.status == 202);
      REQUIRE(WaitUntil([&] { return VolumePhase(f.e.Vmi("vm1"), "data").empty(); }, 90s));
    } else if (point != "revoke.after-kernel") {
      auto ad = f.Virtctl("virtualmachineinstances", "vm1", "addvolume", AddVolumeBody("data"));
      REQUIRE(ad.status == 202);
      const bool ready =
          WaitUntil([&] { return VolumePhase(f.e.Vmi("vm1"), "data") == "Ready"; }, 90s);
      INFO("events: " << Http(f.e.daemon.url(), "GET", "/api/v1/namespaces/default/events").body);
      INFO("VMI: " << f.e.Vmi("vm1").dump());
      REQUIRE(ready);
    }
  }
  CHECK(f.e.Qemus().size() == 1);  // the same guest throughout
}
#endif  // EDGEVIRT_FAULT_INJECTION

TEST_CASE("create, hot-plug, delete cycles leave no cgroup, pin or record behind") {
  HotplugFixture f;
  f.CreateClaim("data");
  const int cycles = 5;
  std::set<std::string> uids;
  for (int i = 0; i < cycles; ++i) {
    INFO("cycle " << i);
    Json vm = f.e.VmManifest("cyc", "Always");
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"].push_back(
        {{"name", "data"}, {"disk", {{"bus", "scsi"}}}});
    vm["spec"]["template"]["spec"]["volumes"].push_back(
        {{"name", "data"},
         {"persistentVolumeClaim", {{"claimName", "data"}, {"hotpluggable", true}}}});
    f.e.Create(vm);
    REQUIRE(f.e.WaitPhase("cyc", "Running"));
    const std::string uid = f.e.Vmi("cyc")["metadata"]["uid"];
    uids.insert(uid);
    REQUIRE(WaitUntil([&] { return VolumePhase(f.e.Vmi("cyc"), "data") == "Ready"; }, 60s));
    CHECK(HasRule(f.KernelRules(uid), RuleOf(f.loop_a)));
    auto del = Http(f.e.daemon.url(), "DELETE",
                    "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/cyc");
    REQUIRE((del.status == 200 || del.status == 202));
    REQUIRE(WaitUntil([&] { return f.e.Vm("cyc").is_null(); }, 120s));
  }
  REQUIRE(WaitUntil([&] { return f.e.Qemus().empty(); }, 30s));
  // Baseline: no VM cgroup, no pin directory, no device record.
  std::vector<std::string> left;
  for (const auto& d : fs::directory_iterator(f.e.daemon.cgroups().root / "vms")) {
    if (d.is_directory()) left.push_back(d.path().string());
  }
  for (const auto& d : fs::directory_iterator(f.e.daemon.cgroups().bpf_root)) {
    left.push_back(d.path().string());
  }
  INFO("left behind: " << left.size());
  CHECK(left.empty());
  REQUIRE(f.e.daemon.Stop() == 0);
  store::Options o;
  o.dir = f.e.daemon.state_dir() / "state";
  auto st = store::Store::Open(o);
  REQUIRE(st.has_value());
  auto kvs = (*st)->ListRaw("devices", "");
  REQUIRE(kvs.has_value());
  CHECK(kvs->empty());
}

}  // namespace
}  // namespace edgevirt::testing
