// VirtualMachines through the real edgevirtd: kubectl and virtctl-shaped requests against a
// daemon that runs the test guest (tests/fixtures/guest) in QEMU through libvirt's embedded
// driver, under TCG on the CI machines. The guest prints EDGE-GUEST-BOOTED on its serial port
// (the per-VMI log the daemon keeps), USERDATA:<line> for its cloud-init seed, and
// GUEST-POWEROFF when the ACPI power button reaches it; its serial console is a root shell.
#include <signal.h>

#include <set>

#include "tests/integration/vm_test_util.h"

namespace edgevirt::testing {
namespace {

constexpr char kBooted[] = "EDGE-GUEST-BOOTED";
constexpr char kPoweroff[] = "GUEST-POWEROFF";
constexpr auto kBoot = std::chrono::seconds(300);  // ~10 s idle under TCG; CI is loaded

std::string Uid(const Json& obj) { return obj["metadata"].value("uid", ""); }

std::string PhaseOf(const Json& vmi) {
  return vmi.contains("status") ? vmi["status"].value("phase", "") : "";
}

const Json* Cond(const Json& obj, const std::string& type) {
  if (!obj.contains("status") || !obj["status"].contains("conditions")) return nullptr;
  for (const auto& c : obj["status"]["conditions"]) {
    if (c.value("type", "") == type) return &c;
  }
  return nullptr;
}

bool CondTrue(const Json& obj, const std::string& type) {
  const Json* c = Cond(obj, type);
  return c && c->value("status", "") == "True";
}

TEST_CASE("a VM boots from kubectl apply and answers virtctl's lifecycle requests") {
  VmEnv env("vm-lifecycle");
  Kubectl& k = env.kubectl;
  WriteFile(env.tmp / "vm1.json", env.VmManifest("vm1", "Always").dump(2));
  MustRun(k, {"apply", "-f", (env.tmp / "vm1.json").string()});

  // kubectl wait depends on the Ready condition and a current observedGeneration.
  MustRun(k, {"wait", "vm/vm1", "--for=condition=Ready", "--timeout=180s"},
          std::chrono::seconds(200));
  Json vm = env.Vm("vm1");
  Json vmi = env.Vmi("vm1");
  CHECK(vm["status"]["printableStatus"] == "Running");
  CHECK(vm["status"]["created"] == true);
  CHECK(vm["status"]["ready"] == true);
  CHECK(vm["status"]["observedGeneration"] == vm["metadata"]["generation"]);
  CHECK(vmi["status"]["phase"] == "Running");
  CHECK_FALSE(vmi["status"].value("nodeName", "").empty());
  CHECK(vmi["metadata"]["ownerReferences"][0]["uid"] == Uid(vm));
  CHECK(vmi["metadata"]["ownerReferences"][0]["controller"] == true);
  CHECK(CondTrue(vmi, "Ready"));
  const std::string uid1 = Uid(vmi);
  REQUIRE(env.WaitSerial(uid1, kBooted, 1, kBoot));
  CHECK(env.Qemus().size() == 1);
  auto row = RowOf(MustRun(k, {"get", "vmi"}).out, "vm1");
  REQUIRE(row);
  CHECK((*row)[2] == "Running");

  {  // the guest agent: AgentConnected, guestOSInfo, and virtctl guestosinfo/userlist/fslist
    // The busybox agent answers slowly under TCG on a loaded machine: allow the boot budget.
    REQUIRE(WaitUntil([&] { return CondTrue(env.Vmi("vm1"), "AgentConnected"); }, kBoot));
    vmi = env.Vmi("vm1");
    CHECK(vmi["status"]["guestOSInfo"]["name"] == "Edge Guest");
    CHECK(vmi["status"]["guestOSInfo"]["prettyName"] == "Edge Guest 1");
    CHECK(vmi["status"]["guestOSInfo"]["machine"] == "x86_64");
    CHECK(WaitUntil([&] { return CondTrue(env.Vm("vm1"), "AgentConnected"); },
                    std::chrono::seconds(30)));
    auto r = env.Virtctl("GET", "virtualmachineinstances", "vm1", "guestosinfo", "");
    INFO(r.body);
    REQUIRE(r.status == 200);
    Json info = ParseJson(r.body);
    CHECK(info["guestAgentVersion"] == "edge-qga-1.0");
    CHECK(info["hostname"] == "edge-guest");
    CHECK(info["os"]["id"] == "edgeguest");
    CHECK(info["timezone"] == "UTC, 0");
    // ping, osinfo, users, fsinfo, disks, network-get-interfaces
    CHECK(info["supportedCommands"].size() == 6);
    r = env.Virtctl("GET", "virtualmachineinstances", "vm1", "userlist", "");
    REQUIRE(r.status == 200);
    CHECK(ParseJson(r.body)["items"][0]["userName"] == "root");
    r = env.Virtctl("GET", "virtualmachineinstances", "vm1", "filesystemlist", "");
    REQUIRE(r.status == 200);
    CHECK(ParseJson(r.body)["items"][0]["mountPoint"] == "/");
    CHECK(ParseJson(r.body)["items"][0]["totalBytes"] == 8388608);
  }

  {  // pause and unpause
    auto r = env.Virtctl("PUT", "virtualmachineinstances", "vm1", "pause", "{}");
    INFO(r.body);
    CHECK(r.status == 200);
    REQUIRE(env.WaitPrintable("vm1", "Paused"));
    vmi = env.Vmi("vm1");
    REQUIRE(Cond(vmi, "Paused"));
    CHECK((*Cond(vmi, "Paused"))["reason"] == "PausedByUser");
    CHECK(CondTrue(env.Vm("vm1"), "Paused"));  // copied onto the VM
    r = env.Virtctl("PUT", "virtualmachineinstances", "vm1", "pause", "{}");
    CHECK(r.status == 409);
    CHECK_THAT(r.body, Catch::Contains("VMI is already paused"));
    r = env.Virtctl("PUT", "virtualmachineinstances", "vm1", "unpause", "{}");
    CHECK(r.status == 200);
    REQUIRE(env.WaitPrintable("vm1", "Running"));
    CHECK(Cond(env.Vmi("vm1"), "Paused") == nullptr);
    r = env.Virtctl("PUT", "virtualmachineinstances", "vm1", "unpause", "{}");
    CHECK(r.status == 409);
    CHECK_THAT(r.body, Catch::Contains("VMI is not paused"));
  }

  {  // soft reboot and reset restart the guest in the same VMI
    // The guest's shell runs after its power-button watcher: then the button reaches it.
    REQUIRE(env.WaitSerial(uid1, "built-in shell", 1, kBoot));
    auto r = env.Virtctl("PUT", "virtualmachineinstances", "vm1", "softreboot", "");
    INFO(r.body);
    CHECK(r.status == 200);
    REQUIRE(env.WaitSerial(uid1, kPoweroff, 1, kBoot));
    REQUIRE(env.WaitSerial(uid1, kBooted, 2, kBoot));
    r = env.Virtctl("PUT", "virtualmachineinstances", "vm1", "reset", "");
    CHECK(r.status == 200);
    REQUIRE(env.WaitSerial(uid1, kBooted, 3, kBoot));
    CHECK(Uid(env.Vmi("vm1")) == uid1);
    CHECK(env.Phase("vm1") == "Running");
    CHECK(env.Qemus().size() == 1);
  }

  {  // migrate is refused on one host
    auto r = env.Virtctl("PUT", "virtualmachines", "vm1", "migrate", "{}");
    CHECK(r.status == 409);
    CHECK(ParseJson(r.body)["kind"] == "Status");
  }

  {  // stop reaches the guest, start and restart make new VMIs
    REQUIRE(env.WaitSerial(uid1, "built-in shell", 1, kBoot));
    auto r = env.Virtctl("PUT", "virtualmachines", "vm1", "stop", "{}");
    INFO(r.body);
    CHECK(r.status == 202);
    CHECK(r.body.empty());
    CHECK(env.Vm("vm1")["spec"]["runStrategy"] == "Halted");
    REQUIRE(env.WaitSerial(uid1, kPoweroff, 1, std::chrono::seconds(60)));
    REQUIRE(env.WaitUntilGone("vm1"));
    REQUIRE(env.WaitPrintable("vm1", "Stopped"));
    CHECK(WaitUntil([&] { return env.Qemus().empty(); }, std::chrono::seconds(30)));
    CHECK_FALSE(std::filesystem::exists(env.VmiDir(uid1)));
    r = env.Virtctl("PUT", "virtualmachines", "vm1", "stop", "{}");
    CHECK(r.status == 409);

    r = env.Virtctl("PUT", "virtualmachines", "vm1", "start", "{}");
    INFO("start: " << r.status << " " << r.body);
    CHECK(r.status == 202);
    REQUIRE(env.WaitPhase("vm1", "Running"));
    const std::string uid2 = Uid(env.Vmi("vm1"));
    CHECK(uid2 != uid1);
    CHECK(env.Vm("vm1")["spec"]["runStrategy"] == "Always");
    REQUIRE(env.WaitSerial(uid2, kBooted, 1, kBoot));

    r = env.Virtctl("PUT", "virtualmachines", "vm1", "restart", "{}");
    CHECK(r.status == 202);
    REQUIRE(WaitUntil(
        [&] {
          Json v = env.Vmi("vm1");
          return !v.is_null() && Uid(v) != uid2 && PhaseOf(v) == "Running";
        },
        std::chrono::seconds(120)));
    CHECK(env.WaitPrintable("vm1", "Running"));
    CHECK(WaitUntil([&] { return env.Qemus().size() == 1; }, std::chrono::seconds(30)));
  }

  // kubectl delete returns once the VM is gone: the VMI was stopped and removed first.
  MustRun(k, {"delete", "vm", "vm1", "--timeout=120s"}, std::chrono::seconds(150));
  CHECK(env.Vm("vm1").is_null());
  CHECK(env.Vmi("vm1").is_null());
  CHECK(WaitUntil([&] { return env.Qemus().empty(); }, std::chrono::seconds(30)));
  CHECK(std::filesystem::is_empty(env.daemon.state_dir() / "vms"));
}

TEST_CASE("a guest that ignores the power button is destroyed when its grace period ends") {
  VmEnv env("vm-grace");
  env.Create(env.VmManifest("stubborn", "Always", "IGNORE-POWEROFF", 5));
  REQUIRE(env.WaitPhase("stubborn", "Running"));
  const std::string uid = Uid(env.Vmi("stubborn"));
  // cloud-init user data read inside the guest, from the NoCloud seed the daemon built.
  REQUIRE(env.WaitSerial(uid, "USERDATA:IGNORE-POWEROFF", 1, kBoot));
  REQUIRE(env.WaitSerial(uid, "built-in shell", 1, kBoot));
  const auto stop = Clock::now();
  auto r = env.Virtctl("PUT", "virtualmachines", "stubborn", "stop", "{}");
  CHECK(r.status == 202);
  REQUIRE(env.WaitUntilGone("stubborn"));
  const double seconds = std::chrono::duration<double>(Clock::now() - stop).count();
  CHECK(seconds >= 4.5);  // the grace period was honoured...
  CHECK(seconds < 30.0);  // ...and then the domain was destroyed
  CHECK(env.SerialLog(uid).find(kPoweroff) == std::string::npos);
  CHECK(env.Qemus().empty());
  // A Warning-free Normal event trail for the VMI's shutdown.
  auto events = MustRun(env.kubectl, {"get", "events", "-o", "json"}).out;
  CHECK_THAT(events, Catch::Contains("Signaled Graceful Shutdown"));
}

TEST_CASE("cloud-init user data from a Secret reaches the guest through a ConfigDrive") {
  VmEnv env("vm-secret");
  // kubectl create secret sends the Secret as protobuf.
  MustRun(env.kubectl,
          {"create", "secret", "generic", "seed", "--from-literal=userdata=FROM-A-SECRET"});
  Json vm = env.VmManifest("sealed", "Always");
  vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"].push_back(
      {{"name", "seed"}, {"disk", {{"bus", "virtio"}}}});
  vm["spec"]["template"]["spec"]["volumes"].push_back(
      {{"name", "seed"}, {"cloudInitConfigDrive", {{"secretRef", {{"name", "seed"}}}}}});
  env.Create(vm);
  REQUIRE(env.WaitPhase("sealed", "Running"));
  const std::string uid = Uid(env.Vmi("sealed"));
  REQUIRE(env.WaitSerial(uid, "USERDATA:FROM-A-SECRET", 1, kBoot));
  // The seed is a file of this VMI; it goes with it.
  MustRun(env.kubectl, {"delete", "vm", "sealed", "--timeout=120s"}, std::chrono::seconds(150));
  CHECK_FALSE(std::filesystem::exists(env.VmiDir(uid)));

  // A VM whose Secret is missing fails to start, with the reason where kubectl shows it.
  Json lost = env.VmManifest("lost", "Once");
  lost["spec"]["template"]["spec"]["domain"]["devices"]["disks"].push_back(
      {{"name", "seed"}, {"disk", {{"bus", "virtio"}}}});
  lost["spec"]["template"]["spec"]["volumes"].push_back(
      {{"name", "seed"}, {"cloudInitNoCloud", {{"secretRef", {{"name", "nope"}}}}}});
  env.Create(lost);
  REQUIRE(env.WaitPhase("lost", "Failed"));
  const Json lost_vmi = env.Vmi("lost");
  const Json* sync = Cond(lost_vmi, "Synchronized");
  REQUIRE(sync);
  CHECK_THAT((*sync)["message"].get<std::string>(), Catch::Contains("nope"));
  CHECK(env.Qemus().empty());
}

TEST_CASE("examples/vm-hostdisk.yaml boots as the README says") {
  VmEnv env("vm-example");
  std::string text =
      ReadFile(std::filesystem::path(EDGEVIRT_SOURCE_DIR) / "examples/vm-hostdisk.yaml");
  const std::string from = "/var/lib/edgevirt-disks/edge1.raw";
  REQUIRE(text.find(from) != std::string::npos);
  const std::string disk = env.Disk("edge1");
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at)) {
    text.replace(at, from.size(), disk);
    at += disk.size();
  }
  WriteFile(env.tmp / "vm-hostdisk.yaml", text);
  MustRun(env.kubectl, {"apply", "-f", (env.tmp / "vm-hostdisk.yaml").string()});
  MustRun(env.kubectl, {"wait", "vm/edge1", "--for=condition=Ready", "--timeout=180s"},
          std::chrono::seconds(200));
  const std::string uid = Uid(env.Vmi("edge1"));
  REQUIRE(env.WaitSerial(uid, "USERDATA:hello-from-edgevirt", 1, kBoot));
}

TEST_CASE("runStrategy: Manual, Halted, Once, RerunOnFailure and Always, case by case") {
  VmEnv env("vm-strategy");
  SECTION("Manual starts only on request and does not restart a guest that powered off") {
    env.Create(env.VmManifest("manual", "Manual"));
    std::this_thread::sleep_for(std::chrono::seconds(2));
    CHECK(env.Vmi("manual").is_null());
    CHECK(env.WaitPrintable("manual", "Stopped"));
    auto r = env.Virtctl("PUT", "virtualmachines", "manual", "start", "{}");
    CHECK(r.status == 202);
    CHECK(env.Vm("manual")["spec"]["runStrategy"] == "Manual");
    REQUIRE(env.WaitPhase("manual", "Running"));
    const std::string uid = Uid(env.Vmi("manual"));
    REQUIRE(env.WaitSerial(uid, "built-in shell", 1, kBoot));
    REQUIRE(env.SerialType(uid, "poweroff -f"));
    REQUIRE(env.WaitPhase("manual", "Succeeded"));
    std::this_thread::sleep_for(std::chrono::seconds(3));
    CHECK(Uid(env.Vmi("manual")) == uid);  // not restarted
    CHECK(env.WaitPrintable("manual", "Stopped"));
    CHECK(env.Qemus().empty());
  }
  SECTION("Halted: start --paused turns it into Always and starts the guest paused") {
    env.Create(env.VmManifest("halted", "Halted"));
    std::this_thread::sleep_for(std::chrono::seconds(2));
    CHECK(env.Vmi("halted").is_null());
    auto r = env.Virtctl("PUT", "virtualmachines", "halted", "start", R"({"paused":true})");
    CHECK(r.status == 202);
    REQUIRE(env.WaitPrintable("halted", "Paused"));
    Json vmi = env.Vmi("halted");
    CHECK(vmi["spec"]["startStrategy"] == "Paused");
    REQUIRE(Cond(vmi, "Paused"));
    CHECK((*Cond(vmi, "Paused"))["reason"] == "PausedStartStrategy");
    CHECK(env.Vm("halted")["spec"]["runStrategy"] == "Always");
    r = env.Virtctl("PUT", "virtualmachineinstances", "halted", "unpause", "{}");
    CHECK(r.status == 200);
    REQUIRE(env.WaitPrintable("halted", "Running"));
    REQUIRE(env.WaitSerial(Uid(vmi), kBooted, 1, kBoot));
  }
  SECTION("Once runs one VMI: a failure is not restarted") {
    env.Create(env.VmManifest("once", "Once"));
    REQUIRE(env.WaitPhase("once", "Running"));
    const std::string uid = Uid(env.Vmi("once"));
    REQUIRE(WaitUntil([&] { return env.Qemus().size() == 1; }, std::chrono::seconds(30)));
    ::kill(env.Qemus()[0], SIGKILL);
    REQUIRE(env.WaitPhase("once", "Failed"));
    std::this_thread::sleep_for(std::chrono::seconds(3));
    CHECK(Uid(env.Vmi("once")) == uid);
    CHECK(env.Qemus().empty());
    auto r = env.Virtctl("PUT", "virtualmachines", "once", "restart", "{}");
    CHECK(r.status == 409);
  }
  SECTION("RerunOnFailure restarts a failed guest, not one that powered off") {
    env.Create(env.VmManifest("rerun", "RerunOnFailure"));
    REQUIRE(env.WaitPhase("rerun", "Running"));
    const std::string uid1 = Uid(env.Vmi("rerun"));
    REQUIRE(WaitUntil([&] { return env.Qemus().size() == 1; }, std::chrono::seconds(30)));
    ::kill(env.Qemus()[0], SIGKILL);
    REQUIRE(WaitUntil(
        [&] {
          Json v = env.Vmi("rerun");
          return !v.is_null() && Uid(v) != uid1 && PhaseOf(v) == "Running";
        },
        std::chrono::seconds(120)));
    const std::string uid2 = Uid(env.Vmi("rerun"));
    REQUIRE(env.WaitSerial(uid2, "built-in shell", 1, kBoot));
    REQUIRE(env.SerialType(uid2, "poweroff -f"));
    REQUIRE(env.WaitPrintable("rerun", "Stopped"));
    std::this_thread::sleep_for(std::chrono::seconds(3));
    Json v = env.Vmi("rerun");
    CHECK((v.is_null() || Uid(v) == uid2));  // no third VMI
    CHECK(env.Qemus().empty());
  }
  SECTION("Always restarts a guest that powered off; a VM that cannot start backs off") {
    env.Create(env.VmManifest("always", "Always"));
    REQUIRE(env.WaitPhase("always", "Running"));
    const std::string uid1 = Uid(env.Vmi("always"));
    REQUIRE(env.WaitSerial(uid1, "built-in shell", 1, kBoot));
    REQUIRE(env.SerialType(uid1, "poweroff -f"));
    REQUIRE(WaitUntil(
        [&] {
          Json v = env.Vmi("always");
          return !v.is_null() && Uid(v) != uid1 && PhaseOf(v) == "Running";
        },
        std::chrono::seconds(120)));

    Json broken = env.VmManifest("broken", "Always");
    broken["spec"]["template"]["spec"]["volumes"][0]["hostDisk"]["path"] =
        (env.disks / "missing.raw").string();
    env.Create(broken);
    REQUIRE(env.WaitPrintable("broken", "CrashLoopBackOff", std::chrono::seconds(60)));
    Json vm = env.Vm("broken");
    CHECK(vm["status"]["startFailure"]["consecutiveFailCount"].get<int>() >= 1);
    auto events = MustRun(env.kubectl, {"get", "events", "-o", "json"}).out;
    CHECK_THAT(events, Catch::Contains("missing.raw"));
  }
}

TEST_CASE("kill -9 of the daemon while VMs start, run and stop: same QEMU, no duplicates") {
  VmEnv env("vm-crash");
  // Killed right after the create was acknowledged: the VMI may or may not exist yet.
  env.Create(env.VmManifest("a", "Always"));
  env.daemon.Kill();
  env.daemon.Start();
  env.kubectl.SetServer(env.daemon.url());
  REQUIRE(env.WaitPhase("a", "Running"));
  const std::string uid = Uid(env.Vmi("a"));
  REQUIRE(env.WaitSerial(uid, "built-in shell", 1, kBoot));
  REQUIRE(env.Qemus().size() == 1);
  const pid_t qemu = env.Qemus()[0];

  // While running: the same QEMU is reconnected, nothing is started twice.
  env.daemon.Kill();
  env.daemon.Start();
  env.kubectl.SetServer(env.daemon.url());
  std::this_thread::sleep_for(std::chrono::seconds(3));
  CHECK(env.Qemus() == std::vector<pid_t>{qemu});
  CHECK(Uid(env.Vmi("a")) == uid);
  CHECK(env.PrintableStatus("a") == "Running");

  // During a stop: the shutdown completes after the restart.
  auto r = env.Virtctl("PUT", "virtualmachines", "a", "stop", "{}");
  CHECK(r.status == 202);
  env.daemon.Kill();
  env.daemon.Start();
  env.kubectl.SetServer(env.daemon.url());
  REQUIRE(env.WaitUntilGone("a"));
  CHECK(env.WaitPrintable("a", "Stopped"));
  CHECK(WaitUntil([&] { return env.Qemus().empty(); }, std::chrono::seconds(30)));

  // A host restart (every QEMU gone while the daemon was down): VMs that should run start again.
  r = env.Virtctl("PUT", "virtualmachines", "a", "start", "{}");
  CHECK(r.status == 202);
  REQUIRE(env.WaitPhase("a", "Running"));
  const std::string uid2 = Uid(env.Vmi("a"));
  REQUIRE(WaitUntil([&] { return env.Qemus().size() == 1; }, std::chrono::seconds(30)));
  env.daemon.Kill();
  for (pid_t p : env.Qemus()) ::kill(p, SIGKILL);
  REQUIRE(WaitUntil([&] { return env.Qemus().empty(); }, std::chrono::seconds(30)));
  env.daemon.Start();
  env.kubectl.SetServer(env.daemon.url());
  REQUIRE(WaitUntil(
      [&] {
        Json v = env.Vmi("a");
        return !v.is_null() && Uid(v) != uid2 && PhaseOf(v) == "Running";
      },
      std::chrono::seconds(120)));
  CHECK(WaitUntil([&] { return env.Qemus().size() == 1; }, std::chrono::seconds(30)));
  // Only the live VMI's files remain.
  std::set<std::string> dirs;
  for (const auto& e : std::filesystem::directory_iterator(env.daemon.state_dir() / "vms")) {
    dirs.insert(e.path().filename().string());
  }
  CHECK(dirs == std::set<std::string>{Uid(env.Vmi("a"))});
}

}  // namespace
}  // namespace edgevirt::testing
