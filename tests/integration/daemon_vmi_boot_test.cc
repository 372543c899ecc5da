// daemon::PlanVmi + PrepareVmiFiles against the real parts: an admitted VMI whose root disk is
// the project's test guest (a hostDisk), with a NoCloud seed on a sata cdrom, a ConfigDrive
// seed on a virtio disk and an emptyDisk, is defined and booted through vmm::Hypervisor (libvirt's
// embedded QEMU driver, TCG here). The guest prints USERDATA:<first line> of the first seed
// it mounts (every one); the test reads the serial log the plan put in the VMI's directory.
//
// No QEMU process of the test survives it: a scope guard kills every QEMU whose command line
// names the test's root, and the root is registered for vmm_reap_qemu (the CTest cleanup
// fixture) in case CTest kills the test first.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "api/kubevirt/kubevirt.h"
#include "api/kubevirt/yaml_json.h"
#include "common/exec.h"
#include "daemon/vmi_domain.h"
#include "tests/support/catch.h"
#include "tests/support/qemu.h"
#include "vmm/vmm.h"

namespace edgevirt::daemon {
namespace {

using edgevirt::testing::QemuPidsUnder;

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr auto kBootTimeout = 300s;  // ~7 s idle under TCG; shared machines are slower
constexpr const char* kUid = "3f0d7c1e-9a41-4b7a-8f55-2d6f0c1b9e77";

void Log(const std::string& line) {
  std::fprintf(stderr, "[daemon_vmi_boot_test] %s\n", line.c_str());
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A fresh root (0755: QEMU runs as nobody and must traverse it), registered for
// A fresh root, cleaned up with every QEMU of it (tests/support/qemu.h).
class TestRoot : public edgevirt::testing::QemuTestRoot {
 public:
  TestRoot() : QemuTestRoot("edgevirt-vmi-it") {}
};

#define REQUIRE_OK(expr)                                                      \
  do {                                                                        \
    auto&& r_ = (expr);                                                       \
    if (!r_.has_value()) FAIL(#expr << " failed: " << r_.error().ToString()); \
  } while (false)

Json AdmittedVmi(const std::string& disks_dir) {
  std::string yaml = R"(apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: boot, namespace: default}
spec:
  domain:
    memory: {guest: 256Mi}
    devices:
      disks:
      - {name: root, disk: {bus: virtio}, bootOrder: 1}
      - {name: seed, cdrom: {bus: sata}}
      - {name: drive, disk: {bus: virtio}}
  volumes:
  - {name: root, hostDisk: {path: )" +
                     disks_dir +
                     R"(/guest.raw, type: Disk}}
  - name: seed
    cloudInitNoCloud:
      userData: |
        #cloud-config
        hello-from-edgevirt
  - {name: drive, cloudInitConfigDrive: {userData: "config drive"}}
  - {name: scratch, emptyDisk: {capacity: 16Mi}}
)";
  std::string error;
  auto doc = api::kubevirt::YamlToJson(yaml, &error);
  INFO(error);
  REQUIRE(doc.has_value());
  api::kubevirt::KubevirtOptions options;
  auto gv = api::kubevirt::KubevirtV1(options);
  api::AdmitRequest r;
  r.op = api::Operation::kCreate;
  r.object = &*doc;
  REQUIRE(gv.resources.at(1).admit(r).invalid.empty());
  (*doc)["metadata"]["uid"] = kUid;
  return *doc;
}

TEST_CASE("a planned VMI boots and its guest reads the NoCloud seed") {
  if (::geteuid() != 0) FAIL("needs root (libvirt's embedded QEMU driver runs QEMU as nobody)");
  TestRoot root;
  const std::string disks = root.path() + "/disks";
  fs::create_directories(disks);
  REQUIRE(::chmod(disks.c_str(), 0755) == 0);
  REQUIRE_OK(ExecChecked({"cp", "--sparse=always", EDGEVIRT_GUEST_DIR "/guest.raw", disks + "/"}));

  VmiHostOptions host;
  host.vms_dir = root.path() + "/vms";
  host.host_disk_dirs = {disks};
  host.firmware = FindFirmware();
  vmm::HypervisorOptions hv_opts;
  hv_opts.root = root.path() + "/libvirt";
  auto hv = vmm::Hypervisor::Open(hv_opts);
  if (!hv) FAIL("open: " << hv.error().ToString());
  host.accelerator = (*hv)->accelerator();

  auto plan = PlanVmi(AdmittedVmi(disks), host, nullptr);
  if (!plan) FAIL("plan: " << plan.error().ToString());
  REQUIRE_OK(PrepareVmiFiles(*plan));
  REQUIRE_OK((*hv)->DefineAndStartPaused(plan->domain));
  REQUIRE_OK((*hv)->Resume(plan->domain.name));
  const fs::path log = plan->domain.console.log_path;
  auto start = Clock::now();
  bool seen = false;
  while (Clock::now() - start < kBootTimeout) {
    std::string t = ReadFile(log);
    if (t.find("USERDATA:hello-from-edgevirt") != std::string::npos &&
        t.find("USERDATA:config drive") != std::string::npos) {
      seen = true;
      break;
    }
    std::this_thread::sleep_for(200ms);
  }
  std::string text = ReadFile(log);
  INFO(text);
  REQUIRE(seen);
  Log("both seeds read after " +
      std::to_string(std::chrono::duration<double>(Clock::now() - start).count()) + " s");
  // The guest mounts every seed it finds: the NoCloud cdrom (sr0) and the ConfigDrive disk.

  REQUIRE_OK((*hv)->Destroy(plan->domain.name));
  REQUIRE_OK((*hv)->Undefine(plan->domain.name));
  REQUIRE_OK(RemoveVmiFiles(host.vms_dir, kUid));
  CHECK_FALSE(fs::exists(plan->dir));
  CHECK(fs::exists(disks + "/guest.raw"));
}

}  // namespace
}  // namespace edgevirt::daemon
