// Live disk hotplug through vmm::Hypervisor against the real parts: libvirt's QEMU driver
// embedded in this process (a fresh root), QEMU under TCG, and the project's test guest
// (tests/fixtures/guest), whose tiny guest agent answers guest-get-disks from /sys/block the
// way qemu-ga does. One guest boot is shared by every step:
//   - QemuPid names the QEMU of the domain;
//   - a raw file on bus scsi (the domain has the hotplug scsi controller): the guest lists it
//     with its serial, a second attach of the name is kConflict, a detach ends in the
//     kDeviceRemoved event and the guest no longer lists it;
//   - a loop device (a real block device) on bus virtio, then a file on virtio: each takes one of
//     the domain's two spare PCIe root ports, a third virtio disk finds none (kConflict); the
//     detach needs the guest to release the slot, and ends in kDeviceRemoved;
//   - LiveDisks reflects each step; DetachDisk of an unknown name is kNotFound.
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/catch.h"
#include "tests/support/loop_device.h"
#include "tests/support/qemu.h"
#include "vmm/vmm.h"

namespace edgevirt::vmm {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr auto kBootTimeout = 300s;  // ~7 s idle under TCG; shared, loaded machines are slower
// A hotplugged disk shows up in the guest within seconds (virtio: once the guest's PCIe
// hotplug driver has handled the slot); a loaded TCG machine gets a generous margin.
constexpr auto kGuestTimeout = 120s;
constexpr char kDomain[] = "hpvm";

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void Log(const std::string& line) { std::fprintf(stderr, "[vmm_hotplug_test] %s\n", line.c_str()); }

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

#define REQUIRE_OK(expr)                                                      \
  do {                                                                        \
    auto&& r_ = (expr);                                                       \
    if (!r_.has_value()) FAIL(#expr << " failed: " << r_.error().ToString()); \
  } while (false)

// Collects events; the callback only appends under a mutex (it runs on libvirt's event loop).
class EventLog {
 public:
  DomainEventCallback Callback() {
    return [this](const DomainEvent& ev) {
      std::lock_guard lock(mu_);
      events_.push_back(ev);
      cv_.notify_all();
    };
  }
  bool WaitForDevice(LifecycleEvent event, const std::string& device, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& ev : events_) {
        if (ev.name == kDomain && ev.event == event && ev.device == device) return true;
      }
      return false;
    });
  }
  bool Seen(LifecycleEvent event, const std::string& device) {
    return WaitForDevice(event, device, 0s);
  }
  std::string Dump() {
    std::lock_guard lock(mu_);
    std::string out;
    for (const auto& ev : events_) {
      out += ev.name + ":" + std::string(LifecycleEventName(ev.event)) + "/" +
             std::to_string(ev.detail) + (ev.device.empty() ? "" : "/" + ev.device) + " ";
    }
    return out;
  }

 private:
  std::mutex mu_;  // guards events_
  std::condition_variable cv_;
  std::vector<DomainEvent> events_;
};

// One entry of the guest agent's guest-get-disks answer (partitions left out).
struct GuestDisk {
  std::string name;  // "/dev/vdb"
  std::string bus_type;
  std::string serial;
};

std::optional<std::vector<GuestDisk>> GuestDisks(Hypervisor& hv) {
  auto reply = hv.AgentCommand(kDomain, R"({"execute":"guest-get-disks"})", 30s);
  if (!reply) {
    Log("guest-get-disks: " + reply.error().ToString());
    return std::nullopt;
  }
  Json j = Json::parse(*reply, nullptr, false);
  if (j.is_discarded() || !j.contains("return") || !j["return"].is_array()) {
    Log("guest-get-disks: unexpected reply " + *reply);
    return std::nullopt;
  }
  std::vector<GuestDisk> out;
  for (const Json& d : j["return"]) {
    if (d.value("partition", true)) continue;
    GuestDisk g;
    g.name = d.value("name", "");
    if (d.contains("address")) {
      g.bus_type = d["address"].value("bus-type", "");
      g.serial = d["address"].value("serial", "");
    }
    out.push_back(std::move(g));
  }
  return out;
}

// The guest's disk whose serial is `serial` (virtio) or ends in "_<serial>" (scsi: udev's
// ID_SERIAL, e.g. "0QEMU_QEMU_HARDDISK_hp1").
std::optional<GuestDisk> FindBySerial(const std::vector<GuestDisk>& disks,
                                      const std::string& serial) {
  for (const GuestDisk& d : disks) {
    if (d.serial == serial || d.serial.ends_with("_" + serial)) return d;
  }
  return std::nullopt;
}

// Polls guest-get-disks until the disk with `serial` is present (or absent); returns the last
// listing it saw that satisfied that, or nullopt on timeout.
std::optional<std::vector<GuestDisk>> WaitGuest(Hypervisor& hv, const std::string& serial,
                                                bool present, Clock::duration timeout) {
  const auto start = Clock::now();
  while (Clock::now() - start < timeout) {
    auto disks = GuestDisks(hv);
    if (disks && FindBySerial(*disks, serial).has_value() == present) return disks;
    std::this_thread::sleep_for(500ms);
  }
  return std::nullopt;
}

std::optional<LiveDisk> FindLive(Hypervisor& hv, const std::string& name) {
  auto disks = hv.LiveDisks(kDomain);
  if (!disks) FAIL("LiveDisks: " << disks.error().ToString());
  for (const LiveDisk& d : *disks) {
    if (d.name == name) return d;
  }
  return std::nullopt;
}

bool WaitNotLive(Hypervisor& hv, const std::string& name, Clock::duration timeout) {
  const auto start = Clock::now();
  while (Clock::now() - start < timeout) {
    if (!FindLive(hv, name)) return true;
    std::this_thread::sleep_for(200ms);
  }
  return false;
}

std::string NewUuid() {
  std::string uuid = ReadFile("/proc/sys/kernel/random/uuid");
  while (!uuid.empty() && uuid.back() == '\n') uuid.pop_back();
  return uuid;
}

fs::path GuestImage() { return fs::path(EDGEVIRT_GUEST_DIR) / "guest.qcow2"; }

// The test guest with its agent channel, the hotplug scsi controller and two spare root ports.
DomainSpec GuestSpec(const std::string& root, Accelerator accel) {
  const fs::path disk = fs::path(root) / "root.qcow2";
  std::error_code ec;
  fs::copy_file(GuestImage(), disk, fs::copy_options::overwrite_existing, ec);
  REQUIRE_FALSE(ec);
  DomainSpec spec;
  spec.name = kDomain;
  spec.uuid = NewUuid();
  spec.accelerator = accel;
  spec.memory_bytes = 256ull << 20;
  spec.disks.push_back(DiskSpec{.name = "rootdisk",
                                .path = disk,
                                .format = DiskFormat::kQcow2,
                                .boot_order = 1,
                                .cache = DiskCache::kWriteback});
  spec.console.kind = ConsoleKind::kPty;
  spec.console.log_path = root + "/console.log";
  spec.guest_agent_socket_path = root + "/qga.sock";
  spec.hotplug_scsi_controller = true;
  spec.spare_pcie_ports = 2;
  return spec;
}

// A sparse raw file of 16 MiB, owned by the test (libvirt gives it to QEMU's user).
std::string RawFile(const std::string& root, const std::string& name) {
  const std::string path = root + "/" + name + ".img";
  { std::ofstream out(path, std::ios::binary | std::ios::trunc); }
  fs::resize_file(path, 16ull << 20);
  return path;
}

TEST_CASE("vmm::Hypervisor hotplugs scsi and virtio disks into the running test guest") {
  REQUIRE(fs::exists(GuestImage()));
  const auto test_start = Clock::now();
  edgevirt::testing::QemuTestRoot root("edgevirt-vmm-hp");
  EventLog events;
  HypervisorOptions opts;
  opts.root = root.path() + "/libvirt";
  opts.on_event = events.Callback();
  auto opened = Hypervisor::Open(opts);
  if (!opened) FAIL("open: " << opened.error().ToString());
  Hypervisor& hv = **opened;

  DomainSpec spec = GuestSpec(root.path(), hv.accelerator());
  REQUIRE_OK(hv.DefineAndStartPaused(spec));

  // The QEMU pid, while still paused (the daemon places it in its cgroup before resuming).
  auto pid = hv.QemuPid(kDomain);
  if (!pid) FAIL("QemuPid: " << pid.error().ToString());
  std::string cmdline = ReadFile("/proc/" + std::to_string(*pid) + "/cmdline");
  for (char& c : cmdline) c = c == '\0' ? ' ' : c;
  CHECK(cmdline.find("qemu-system") != std::string::npos);
  CHECK(cmdline.find("guest=" + std::string(kDomain)) != std::string::npos);
  CHECK(edgevirt::testing::QemuPidsUnder(root.path()) == std::vector<pid_t>{*pid});
  Log("QEMU pid " + std::to_string(*pid));

  REQUIRE_OK(hv.Resume(kDomain));
  const auto boot_start = Clock::now();
  std::optional<std::vector<GuestDisk>> initial;
  while (Clock::now() - boot_start < kBootTimeout) {
    auto connected = hv.AgentConnected(kDomain);
    if (connected && *connected && (initial = GuestDisks(hv))) break;
    std::this_thread::sleep_for(500ms);
  }
  if (!initial) FAIL("no guest agent answer; console:\n" << ReadFile(spec.console.log_path));
  Log("guest agent answered " + std::to_string(Seconds(Clock::now() - boot_start)) +
      " s after resume");
  REQUIRE(initial->size() == 1);
  CHECK((*initial)[0].name == "/dev/vda");
  CHECK((*initial)[0].bus_type == "virtio");
  auto live = hv.LiveDisks(kDomain);
  REQUIRE(live);
  REQUIRE(live->size() == 1);
  CHECK((*live)[0].name == "rootdisk");
  CHECK((*live)[0].target == "vda");

  // scsi: a raw file, persisted in the definition too.
  DiskSpec hp1{.name = "hp1",
               .path = RawFile(root.path(), "hp1"),
               .bus = DiskBus::kScsi,
               .serial = "hp1",
               .cache = DiskCache::kWriteback};
  auto step = Clock::now();
  REQUIRE_OK(hv.AttachDisk(kDomain, hp1, true));
  auto hp1_live = FindLive(hv, "hp1");
  REQUIRE(hp1_live);
  CHECK(hp1_live->target == "sda");
  CHECK(hp1_live->bus == DiskBus::kScsi);
  CHECK(hp1_live->path == hp1.path);
  CHECK_FALSE(hp1_live->block);
  auto seen = WaitGuest(hv, "hp1", true, kGuestTimeout);
  if (!seen) FAIL("the guest never listed hp1; console:\n" << ReadFile(spec.console.log_path));
  auto hp1_guest = FindBySerial(*seen, "hp1");
  Log("scsi hp1 in the guest after " + std::to_string(Seconds(Clock::now() - step)) + " s as " +
      hp1_guest->name + " (serial " + hp1_guest->serial + ")");
  CHECK(hp1_guest->bus_type == "scsi");
  CHECK(hp1_guest->name.starts_with("/dev/sd"));
  if (auto raw = hv.AgentCommand(kDomain, R"({"execute":"guest-get-disks"})", 30s)) {
    Log("guest-get-disks: " + *raw);
  }

  auto again = hv.AttachDisk(kDomain, hp1, false);
  REQUIRE_FALSE(again);
  CHECK(again.error().code == Code::kConflict);
  auto unknown = hv.DetachDisk(kDomain, "nosuchdisk", false);
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().code == Code::kNotFound);

  step = Clock::now();
  REQUIRE_OK(hv.DetachDisk(kDomain, "hp1", true));
  if (!events.WaitForDevice(LifecycleEvent::kDeviceRemoved, "ua-hp1", kGuestTimeout)) {
    FAIL("no device-removed event for ua-hp1; events: " << events.Dump());
  }
  Log("scsi hp1 removed (event) after " + std::to_string(Seconds(Clock::now() - step)) + " s");
  CHECK_FALSE(FindLive(hv, "hp1"));
  CHECK(WaitGuest(hv, "hp1", false, kGuestTimeout));

  // virtio: a real block device (a loop device), not persisted.
  edgevirt::testing::LoopDevice loop(root.path() + "/hp2.img", 16ull << 20);
  DiskSpec hp2{
      .name = "hp2", .source_kind = DiskSourceKind::kBlock, .path = loop.path(), .serial = "hp2"};
  step = Clock::now();
  REQUIRE_OK(hv.AttachDisk(kDomain, hp2, false));
  auto hp2_live = FindLive(hv, "hp2");
  REQUIRE(hp2_live);
  CHECK(hp2_live->target == "vdb");
  CHECK(hp2_live->bus == DiskBus::kVirtio);
  CHECK(hp2_live->block);
  CHECK(hp2_live->path == loop.path());
  seen = WaitGuest(hv, "hp2", true, kGuestTimeout);
  if (!seen) FAIL("the guest never listed hp2; console:\n" << ReadFile(spec.console.log_path));
  auto hp2_guest = FindBySerial(*seen, "hp2");
  Log("virtio hp2 (" + loop.path() + ") in the guest after " +
      std::to_string(Seconds(Clock::now() - step)) + " s as " + hp2_guest->name);
  CHECK(hp2_guest->bus_type == "virtio");
  CHECK(hp2_guest->serial == "hp2");

  // The second spare root port takes another virtio disk; then there is none left.
  DiskSpec hp3{.name = "hp3", .path = RawFile(root.path(), "hp3"), .serial = "hp3"};
  REQUIRE_OK(hv.AttachDisk(kDomain, hp3, false));
  CHECK(FindLive(hv, "hp3").value_or(LiveDisk{}).target == "vdc");
  CHECK(WaitGuest(hv, "hp3", true, kGuestTimeout));
  DiskSpec hp4{.name = "hp4", .path = RawFile(root.path(), "hp4"), .serial = "hp4"};
  auto no_port = hv.AttachDisk(kDomain, hp4, false);
  REQUIRE_FALSE(no_port);
  INFO("third virtio disk: " << no_port.error().ToString());
  CHECK(no_port.error().code == Code::kConflict);
  CHECK_FALSE(FindLive(hv, "hp4"));

  // A virtio disk leaves only when the guest releases its slot: the request returns first,
  // asking again meanwhile is fine, and the event tells when it is gone.
  step = Clock::now();
  REQUIRE_OK(hv.DetachDisk(kDomain, "hp2", false));
  auto twice = hv.DetachDisk(kDomain, "hp2", false);
  Log("second detach of hp2 while pending: " +
      (twice ? std::string("ok") : twice.error().ToString()));
  if (!twice) {
    INFO("second detach: " << twice.error().ToString());
    CHECK((twice.error().code == Code::kNotFound &&
           events.Seen(LifecycleEvent::kDeviceRemoved, "ua-hp2")));
  }
  if (!events.WaitForDevice(LifecycleEvent::kDeviceRemoved, "ua-hp2", kGuestTimeout)) {
    FAIL("no device-removed event for ua-hp2; events: " << events.Dump());
  }
  Log("virtio hp2 removed (event) after " + std::to_string(Seconds(Clock::now() - step)) + " s");
  CHECK(WaitNotLive(hv, "hp2", 10s));
  CHECK(WaitGuest(hv, "hp2", false, kGuestTimeout));
  REQUIRE_OK(hv.DetachDisk(kDomain, "hp3", false));
  CHECK(events.WaitForDevice(LifecycleEvent::kDeviceRemoved, "ua-hp3", kGuestTimeout));
  CHECK(WaitNotLive(hv, "hp3", 10s));
  CHECK_FALSE(events.Seen(LifecycleEvent::kDeviceRemovalFailed, "ua-hp2"));

  live = hv.LiveDisks(kDomain);
  REQUIRE(live);
  CHECK(live->size() == 1);
  INFO("events: " << events.Dump());
  REQUIRE_OK(hv.Destroy(kDomain));
  CHECK(hv.QemuPid(kDomain).error().code == Code::kConflict);
  CHECK(hv.AttachDisk(kDomain, hp4, false).error().code == Code::kConflict);
  REQUIRE_OK(hv.Undefine(kDomain));
  CHECK(hv.QemuPid(kDomain).error().code == Code::kNotFound);
  Log("total " + std::to_string(Seconds(Clock::now() - test_start)) + " s");
}

}  // namespace
}  // namespace edgevirt::vmm
