// Fast, hermetic checks of vmm::Hypervisor against libvirt's in-process test driver
// (test:///default: one running domain "test", no QEMU): the event loop and lifecycle events,
// error mapping, idempotent Destroy/Undefine, lookup by name and UUID, and the private
// qemu.conf. The real QEMU path is tests/integration/vmm_lifecycle_test.cc.
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "tests/support/catch.h"
#include "vmm/vmm.h"

namespace edgevirt::vmm {
namespace {

using namespace std::chrono_literals;

class Events {
 public:
  DomainEventCallback Callback() {
    return [this](const DomainEvent& ev) {
      std::lock_guard lock(mu_);
      seen_.push_back(ev);
      cv_.notify_all();
    };
  }
  bool WaitFor(const std::string& name, LifecycleEvent event) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, [&] {
      for (const auto& ev : seen_) {
        if (ev.name == name && ev.event == event && !ev.uuid.empty()) return true;
      }
      return false;
    });
  }

 private:
  std::mutex mu_;  // guards seen_
  std::condition_variable cv_;
  std::vector<DomainEvent> seen_;
};

DomainSpec MinimalSpec() {
  DomainSpec spec;
  spec.name = "default_vm1";
  spec.uuid = "6a1a24a1-4061-4607-8bf4-a3963d0c5895";
  spec.accelerator = Accelerator::kTcg;
  spec.memory_bytes = 128ull << 20;
  return spec;
}

TEST_CASE("Hypervisor on test:///default: lifecycle, events and errors") {
  Events events;
  HypervisorOptions opts;
  opts.uri = "test:///default";
  opts.on_event = events.Callback();
  auto hv = Hypervisor::Open(opts);
  if (!hv) FAIL(hv.error().ToString());
  Hypervisor& h = **hv;
  CHECK(h.uri() == "test:///default");

  auto list = h.List();
  REQUIRE(list);
  REQUIRE(list->size() == 1);
  CHECK((*list)[0].name == "test");
  CHECK((*list)[0].status.state == DomainState::kRunning);

  REQUIRE(h.Pause("test"));
  CHECK(events.WaitFor("test", LifecycleEvent::kSuspended));
  auto st = h.State((*list)[0].uuid);  // by UUID
  REQUIRE(st);
  CHECK(st->state == DomainState::kPaused);
  CHECK(st->reason_text == "user");
  REQUIRE(h.Resume("test"));
  CHECK(events.WaitFor("test", LifecycleEvent::kResumed));
  CHECK(h.Undefine("test").error().code == Code::kConflict);  // running
  REQUIRE(h.Destroy("test"));
  CHECK(events.WaitFor("test", LifecycleEvent::kStopped));
  CHECK(h.Destroy("test").has_value());  // idempotent
  st = h.State("test");
  REQUIRE(st);
  CHECK(st->state == DomainState::kShutOff);
  CHECK(st->reason_text == "destroyed");
  auto paused = h.Pause("test");
  REQUIRE_FALSE(paused);
  INFO(paused.error().message);
  CHECK(paused.error().code == Code::kConflict);

  DomainSpec spec = MinimalSpec();
  REQUIRE(h.Define(spec));
  CHECK(events.WaitFor("default_vm1", LifecycleEvent::kDefined));
  auto info = h.Info(spec.uuid);
  REQUIRE(info);
  CHECK(info->name == "default_vm1");
  CHECK(info->persistent);
  CHECK(info->status.state == DomainState::kShutOff);
  // Redefinition of the same name and UUID updates it.
  REQUIRE(h.Define(spec));
  // Another UUID under the same name is refused.
  DomainSpec clash = spec;
  clash.uuid = "00000000-0000-4000-8000-000000000001";
  CHECK(h.Define(clash).error().code == Code::kAlreadyExists);
  // An invalid spec never reaches libvirt.
  DomainSpec bad = spec;
  bad.memory_bytes = 0;
  CHECK(h.Define(bad).error().code == Code::kInvalid);

  // (Undefine itself is checked in the integration test: the test driver refuses
  // VIR_DOMAIN_UNDEFINE_NVRAM.) Undefining what does not exist succeeds.
  CHECK(h.Undefine("default_vm2").has_value());
  CHECK(h.State("default_vm2").error().code == Code::kNotFound);
  CHECK(h.Resume("00000000-0000-4000-8000-0000000000ff").error().code == Code::kNotFound);
}

// The test driver has no device hotplug (virDomainAttachDeviceFlags and DetachDeviceAlias are
// unsupported there) and no QEMU: what it checks is the part before libvirt's hotplug call. The
// hotplug itself runs against QEMU in tests/integration/vmm_hotplug_test.cc.
TEST_CASE("Disk hotplug on test:///default: live disks, refusals, no QEMU pid") {
  HypervisorOptions opts;
  opts.uri = "test:///default";
  auto hv = Hypervisor::Open(opts);
  if (!hv) FAIL(hv.error().ToString());
  Hypervisor& h = **hv;

  // The test driver's running domain "test" has one virtio disk without a user alias.
  auto disks = h.LiveDisks("test");
  REQUIRE(disks);
  REQUIRE(disks->size() == 1);
  CHECK((*disks)[0].name.empty());
  CHECK((*disks)[0].target == "vda");
  CHECK((*disks)[0].path == "/guest/diskimage1");
  CHECK((*disks)[0].bus == DiskBus::kVirtio);
  CHECK_FALSE((*disks)[0].block);
  CHECK_FALSE((*disks)[0].readonly);

  CHECK(h.DetachDisk("test", "nosuchdisk", false).error().code == Code::kNotFound);
  CHECK(h.DetachDisk("test", "nosuchdisk", true).error().code == Code::kNotFound);
  CHECK(h.DetachDisk("nosuchvm", "data", false).error().code == Code::kNotFound);

  DiskSpec sata;
  sata.name = "data";
  sata.path = "/var/lib/edgevirt/data.img";
  sata.bus = DiskBus::kSata;
  CHECK(h.AttachDisk("test", sata, false).error().code == Code::kInvalid);
  DiskSpec scsi = sata;
  scsi.bus = DiskBus::kScsi;  // "test" has no scsi controller
  auto refused = h.AttachDisk("test", scsi, false);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Code::kInvalid);
  CHECK(refused.error().message.find("hotplug_scsi_controller") != std::string::npos);
  DiskSpec bad = sata;
  bad.bus = DiskBus::kVirtio;
  bad.path = "relative.img";
  CHECK(h.AttachDisk("test", bad, false).error().code == Code::kInvalid);

  CHECK(LifecycleEventName(LifecycleEvent::kDeviceRemoved) == "device-removed");
  CHECK(LifecycleEventName(LifecycleEvent::kDeviceRemovalFailed) == "device-removal-failed");

  auto pid = h.QemuPid("test");
  REQUIRE_FALSE(pid);
  CHECK(pid.error().code == Code::kUnsupported);

  // A domain that is not running: attach, detach, live disks and the pid are all kConflict.
  DomainSpec spec = MinimalSpec();
  spec.hotplug_scsi_controller = true;
  REQUIRE(h.Define(spec));
  CHECK(h.AttachDisk("default_vm1", scsi, false).error().code == Code::kConflict);
  CHECK(h.DetachDisk("default_vm1", "data", false).error().code == Code::kConflict);
  CHECK(h.LiveDisks("default_vm1").error().code == Code::kConflict);
}

// The console a running domain has, from libvirt's live XML. The test driver starts no domain
// paused (StartPaused is refused), so only its own running domain, which has no serial port,
// is read here; the pty and unix consoles of real QEMU domains are read in vm_streams_test,
// and libvirt's XML for them is parsed in hotplug_test.cc.
TEST_CASE("LiveConsole on test:///default: none, not running, no such domain") {
  HypervisorOptions opts;
  opts.uri = "test:///default";
  auto hv = Hypervisor::Open(opts);
  if (!hv) FAIL(hv.error().ToString());
  Hypervisor& h = **hv;

  auto none = h.LiveConsole("test");
  REQUIRE(none);
  CHECK(none->kind == ConsoleKind::kNone);
  CHECK(none->log_path.empty());
  CHECK(h.LiveConsole("nosuchvm").error().code == Code::kNotFound);

  DomainSpec spec = MinimalSpec();
  spec.console = {ConsoleKind::kUnix, "/run/edgevirt/vms/u1/serial0.sock",
                  "/run/edgevirt/vms/u1/serial0.log"};
  REQUIRE(h.Define(spec));
  CHECK(h.LiveConsole("default_vm1").error().code == Code::kConflict);
}

TEST_CASE("Open refuses a relative root and a bad qemu user") {
  HypervisorOptions opts;
  opts.root = "relative/root";
  CHECK(Hypervisor::Open(opts).error().code == Code::kInvalid);
  opts.root = "/nonexistent-edgevirt-test-root";
  opts.qemu_user = "a\"b";
  CHECK(Hypervisor::Open(opts).error().code == Code::kInvalid);
}

TEST_CASE("The private qemu.conf") {
  HypervisorOptions opts;
  opts.qemu_group = "nogroup";
  std::string conf = EmbedQemuConf(opts);
  CHECK(conf.find("cgroup_controllers = [ ]\n") != std::string::npos);
  CHECK(conf.find("stdio_handler = \"file\"\n") != std::string::npos);
  CHECK(conf.find("user = \"nobody\"\n") != std::string::npos);
  CHECK(conf.find("group = \"nogroup\"\n") != std::string::npos);
  CHECK(EmbedUri("/var/lib/edgevirt/libvirt") == "qemu:///embed?root=/var/lib/edgevirt/libvirt");
}

}  // namespace
}  // namespace edgevirt::vmm
