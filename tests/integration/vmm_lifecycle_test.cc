// vmm::Hypervisor against the real parts: libvirt's QEMU driver embedded in this process (a
// fresh private root in a temp dir), QEMU under TCG (or KVM where usable), and the project's
// test guest (tests/fixtures/guest, built by the vmm_guest_image fixture). The guest prints
// EDGE-GUEST-BOOTED on its serial port, which libvirt copies into a log file the test reads, and
// GUEST-POWEROFF when it handles the ACPI power button.
//
// No QEMU process of the test survives it: a scope guard kills every QEMU whose command line
// names the test's root (found in /proc), even when a REQUIRE fails half way.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/catch.h"
#include "tests/support/qemu.h"
#include "vmm/vmm.h"

namespace edgevirt::vmm {
namespace {

using edgevirt::testing::QemuPidsUnder;

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr char kBooted[] = "EDGE-GUEST-BOOTED";
constexpr char kPoweroff[] = "GUEST-POWEROFF";
// Printed by the guest's shell, which /init starts after the ACPI power button watcher: once
// it is there, a button press reaches the guest's handler.
constexpr char kShell[] = "built-in shell";
constexpr auto kBootTimeout = 300s;  // ~7 s idle under TCG; shared, loaded machines are slower

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void Log(const std::string& line) {
  std::fprintf(stderr, "[vmm_lifecycle_test] %s\n", line.c_str());
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int Count(const std::string& haystack, std::string_view needle) {
  int n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

// Waits until `marker` occurs at least `n` times in the file; returns the time it took.
std::optional<Clock::duration> WaitForCount(const fs::path& file, std::string_view marker, int n,
                                            Clock::duration timeout) {
  auto start = Clock::now();
  while (Clock::now() - start < timeout) {
    if (Count(ReadFile(file), marker) >= n) return Clock::now() - start;
    std::this_thread::sleep_for(200ms);
  }
  return std::nullopt;
}

// Waits until `needle` occurs after the last occurrence of `anchor` in the file: e.g. the shell
// banner of the current boot (the one after the newest boot marker).
bool WaitForAfterLast(const fs::path& file, std::string_view anchor, std::string_view needle,
                      Clock::duration timeout) {
  auto start = Clock::now();
  while (Clock::now() - start < timeout) {
    std::string text = ReadFile(file);
    size_t last = text.rfind(anchor);
    if (last != std::string::npos && text.find(needle, last) != std::string::npos) return true;
    std::this_thread::sleep_for(200ms);
  }
  return false;
}

bool WaitNoQemu(const std::string& root, Clock::duration timeout) {
  auto start = Clock::now();
  while (!QemuPidsUnder(root).empty()) {
    if (Clock::now() - start > timeout) return false;
    std::this_thread::sleep_for(100ms);
  }
  return true;
}

// A fresh root, cleaned up with every QEMU of it (tests/support/qemu.h).
class TestRoot : public edgevirt::testing::QemuTestRoot {
 public:
  TestRoot() : QemuTestRoot("edgevirt-vmm-it") {}
};

// Collects lifecycle events; the callback only appends under a mutex (it runs on libvirt's
// event loop thread).
class EventLog {
 public:
  DomainEventCallback Callback() {
    return [this](const DomainEvent& ev) {
      std::lock_guard lock(mu_);
      events_.push_back(ev);
      cv_.notify_all();
    };
  }
  bool WaitFor(const std::string& name, LifecycleEvent event, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& ev : events_) {
        if (ev.name == name && ev.event == event) return true;
      }
      return false;
    });
  }
  void Clear() {
    std::lock_guard lock(mu_);
    events_.clear();
  }
  std::string Dump() {
    std::lock_guard lock(mu_);
    std::string out;
    for (const auto& ev : events_) {
      out += ev.name + ":" + std::string(LifecycleEventName(ev.event)) + "/" +
             std::to_string(ev.detail) + " ";
    }
    return out;
  }

 private:
  std::mutex mu_;  // guards events_
  std::condition_variable cv_;
  std::vector<DomainEvent> events_;
};

std::string NewUuid() {
  std::string uuid = ReadFile("/proc/sys/kernel/random/uuid");
  while (!uuid.empty() && (uuid.back() == '\n')) uuid.pop_back();
  return uuid;
}

fs::path GuestImage() { return fs::path(EDGEVIRT_GUEST_DIR) / "guest.qcow2"; }

// A copy of the test guest's disk with its serial port logged to <root>/<name>.log.
DomainSpec GuestSpec(const std::string& root, const std::string& name, Accelerator accel) {
  fs::path disk = fs::path(root) / (name + ".qcow2");
  std::error_code ec;
  fs::copy_file(GuestImage(), disk, fs::copy_options::overwrite_existing, ec);
  REQUIRE_FALSE(ec);
  DomainSpec spec;
  spec.name = name;
  spec.uuid = NewUuid();
  spec.accelerator = accel;
  spec.memory_bytes = 256ull << 20;
  DiskSpec d;
  d.name = "rootdisk";
  d.path = disk;
  d.format = DiskFormat::kQcow2;
  d.boot_order = 1;
  d.cache = DiskCache::kWriteback;
  spec.disks.push_back(d);
  spec.console.kind = ConsoleKind::kPty;
  spec.console.log_path = root + "/" + name + ".log";
  return spec;
}

std::unique_ptr<Hypervisor> OpenOrFail(const std::string& root, EventLog& events) {
  HypervisorOptions opts;
  opts.root = root + "/libvirt";
  opts.on_event = events.Callback();
  auto start = Clock::now();
  auto hv = Hypervisor::Open(opts);
  if (!hv) FAIL("open: " << hv.error().ToString());
  Log("opened " + (*hv)->uri() + " in " + std::to_string(Seconds(Clock::now() - start)) + " s");
  return std::move(*hv);
}

#define REQUIRE_OK(expr)                                                      \
  do {                                                                        \
    auto&& r_ = (expr);                                                       \
    if (!r_.has_value()) FAIL(#expr << " failed: " << r_.error().ToString()); \
  } while (false)

DomainState StateOf(Hypervisor& hv, const std::string& id) {
  auto st = hv.State(id);
  if (!st) FAIL("state " << id << ": " << st.error().ToString());
  return st->state;
}

TEST_CASE("vmm::Hypervisor runs the test guest through its whole lifecycle") {
  REQUIRE(fs::exists(GuestImage()));
  TestRoot root;
  EventLog events;
  // Recovery, first: a child process opens the root, starts vm2 and is killed with SIGKILL (as
  // a daemon crash would be). Then this process, like a restarted daemon, opens the same root
  // and must find vm2 running and control it. This comes before this process opens the root
  // itself: libvirt initializes the embedded driver once per process (a second Open in the
  // same process reuses the first one's in-memory driver state and did not list vm2), and the
  // fork must copy a process with one thread.
  DomainSpec spec2 = GuestSpec(root.path(), "vm2", Accelerator::kTcg);
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(ready[0]);
    HypervisorOptions opts;
    opts.root = root.path() + "/libvirt";
    auto child_hv = Hypervisor::Open(opts);
    if (!child_hv) _exit(2);
    spec2.accelerator = (*child_hv)->accelerator();
    if (!(*child_hv)->DefineAndStartPaused(spec2) || !(*child_hv)->Resume("vm2")) _exit(3);
    (void)!::write(ready[1], "k", 1);
    while (true) ::pause();
  }
  ::close(ready[1]);
  struct pollfd pfd = {ready[0], POLLIN, 0};
  int polled = ::poll(&pfd, 1, 300 * 1000);
  char byte = 0;
  bool child_ok = polled == 1 && ::read(ready[0], &byte, 1) == 1 && byte == 'k';
  ::close(ready[0]);
  ::kill(child, SIGKILL);
  int wstatus = 0;
  ::waitpid(child, &wstatus, 0);
  REQUIRE(child_ok);
  Log("child started vm2 and was killed with SIGKILL");
  REQUIRE(QemuPidsUnder(root.path()).size() == 1);  // QEMU outlived its daemon

  auto hv = OpenOrFail(root.path(), events);
  auto list = hv->List();
  REQUIRE(list);
  REQUIRE(list->size() == 1);
  CHECK((*list)[0].name == "vm2");
  CHECK((*list)[0].uuid == spec2.uuid);
  CHECK((*list)[0].status.state == DomainState::kRunning);
  auto boot = WaitForCount(spec2.console.log_path, kBooted, 1, kBootTimeout);
  REQUIRE(boot);
  Log("vm2 (recovered) booted: EDGE-GUEST-BOOTED " + std::to_string(Seconds(*boot)) +
      " s after the new open");
  // The new connection controls it: pause/resume with events, then destroy.
  REQUIRE_OK(hv->Pause("vm2"));
  CHECK(events.WaitFor("vm2", LifecycleEvent::kSuspended, 30s));
  REQUIRE_OK(hv->Resume("vm2"));
  REQUIRE_OK(hv->Destroy("vm2"));
  CHECK(events.WaitFor("vm2", LifecycleEvent::kStopped, 30s));
  CHECK(StateOf(*hv, "vm2") == DomainState::kShutOff);
  REQUIRE_OK(hv->Undefine("vm2"));
  CHECK(WaitNoQemu(root.path(), 10s));
  events.Clear();

  // Accelerator: reported, never configured. Without a usable /dev/kvm (or without vmx/svm in
  // the CPU flags, as on the build machines) it must be TCG.
  std::string cpuinfo = ReadFile("/proc/cpuinfo");
  bool virt =
      cpuinfo.find(" vmx") != std::string::npos || cpuinfo.find(" svm") != std::string::npos;
  int kvm = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0 || !virt) CHECK(hv->accelerator() == Accelerator::kTcg);
  if (kvm >= 0) ::close(kvm);
  Log(std::string("accelerator: ") + (hv->accelerator() == Accelerator::kKvm ? "kvm" : "tcg"));
  CHECK(ReadFile(root.path() + "/libvirt/etc/qemu.conf").find("cgroup_controllers = [ ]") !=
        std::string::npos);

  DomainSpec spec = GuestSpec(root.path(), "vm1", hv->accelerator());
  const fs::path log = spec.console.log_path;

  // Errors are values with the right codes.
  CHECK(hv->State("nosuchvm").error().code == Code::kNotFound);
  CHECK(hv->Undefine("nosuchvm").has_value());

  // Define + start paused: no guest code runs.
  REQUIRE_OK(hv->DefineAndStartPaused(spec));
  REQUIRE(events.WaitFor("vm1", LifecycleEvent::kStarted, 30s));
  auto status = hv->State("vm1");
  REQUIRE(status);
  CHECK(status->state == DomainState::kPaused);
  Log("after start: " + std::string(DomainStateName(status->state)) + " (" + status->reason_text +
      ")");
  CHECK(Count(ReadFile(log), kBooted) == 0);
  CHECK(hv->StartPaused("vm1").error().code == Code::kConflict);
  auto by_uuid = hv->Info(spec.uuid);
  REQUIRE(by_uuid);
  CHECK(by_uuid->name == "vm1");
  CHECK(by_uuid->persistent);

  // Resume: the guest boots.
  REQUIRE_OK(hv->Resume("vm1"));
  REQUIRE(events.WaitFor("vm1", LifecycleEvent::kResumed, 30s));
  CHECK(StateOf(*hv, "vm1") == DomainState::kRunning);
  boot = WaitForCount(log, kBooted, 1, kBootTimeout);
  REQUIRE(boot);
  Log("first boot: EDGE-GUEST-BOOTED " + std::to_string(Seconds(*boot)) + " s after resume");

  // Pause / resume.
  events.Clear();
  REQUIRE_OK(hv->Pause("vm1"));
  CHECK(StateOf(*hv, "vm1") == DomainState::kPaused);
  CHECK(events.WaitFor("vm1", LifecycleEvent::kSuspended, 30s));
  REQUIRE_OK(hv->Resume("vm1"));
  CHECK(StateOf(*hv, "vm1") == DomainState::kRunning);
  CHECK(events.WaitFor("vm1", LifecycleEvent::kResumed, 30s));

  // Reset: the guest boots again.
  REQUIRE_OK(hv->Reset("vm1"));
  boot = WaitForCount(log, kBooted, 2, kBootTimeout);
  REQUIRE(boot);
  Log("after reset: EDGE-GUEST-BOOTED " + std::to_string(Seconds(*boot)) + " s");

  // Soft reboot through ACPI: the guest powers off, QEMU restarts it.
  REQUIRE(WaitForAfterLast(log, kBooted, kShell, kBootTimeout));
  std::this_thread::sleep_for(1s);
  REQUIRE_OK(hv->Reboot("vm1"));
  boot = WaitForCount(log, kBooted, 3, kBootTimeout);
  REQUIRE(boot);
  CHECK(Count(ReadFile(log), kPoweroff) == 1);
  Log("after soft reboot: EDGE-GUEST-BOOTED " + std::to_string(Seconds(*boot)) + " s");
  CHECK(StateOf(*hv, "vm1") == DomainState::kRunning);

  // Graceful ACPI shutdown, well within the grace period.
  REQUIRE(WaitForAfterLast(log, kBooted, kShell, kBootTimeout));
  std::this_thread::sleep_for(1s);
  events.Clear();
  auto start = Clock::now();
  auto outcome = hv->Shutdown("vm1", 120s);
  REQUIRE(outcome);
  CHECK(*outcome == ShutdownOutcome::kGraceful);
  Log("ACPI shutdown took " + std::to_string(Seconds(Clock::now() - start)) + " s");
  CHECK(Count(ReadFile(log), kPoweroff) == 2);
  status = hv->State("vm1");
  REQUIRE(status);
  CHECK(status->state == DomainState::kShutOff);
  CHECK(status->reason_text == "shutdown");
  CHECK(events.WaitFor("vm1", LifecycleEvent::kShutdown, 30s));
  CHECK(events.WaitFor("vm1", LifecycleEvent::kStopped, 30s));
  CHECK(hv->Shutdown("vm1", 1s).value_or(ShutdownOutcome::kDestroyed) ==
        ShutdownOutcome::kAlreadyOff);
  CHECK(hv->Pause("vm1").error().code == Code::kConflict);
  CHECK(hv->Destroy("vm1").has_value());  // not running: nothing to do

  // A guest that ignores ACPI (still in its firmware/boot loader): destroyed after the grace.
  REQUIRE_OK(hv->StartPaused("vm1"));
  REQUIRE_OK(hv->Resume("vm1"));
  outcome = hv->Shutdown("vm1", 1s);
  REQUIRE(outcome);
  CHECK(*outcome == ShutdownOutcome::kDestroyed);
  status = hv->State("vm1");
  REQUIRE(status);
  CHECK(status->state == DomainState::kShutOff);
  CHECK(status->reason_text == "destroyed");
  CHECK(Count(ReadFile(log), kPoweroff) == 2);

  // Undefine; a persistent domain is gone from the list, and undefine is idempotent.
  REQUIRE_OK(hv->Undefine("vm1"));
  list = hv->List();
  REQUIRE(list);
  CHECK(list->empty());
  CHECK(hv->Undefine("vm1").has_value());
  INFO("events: " << events.Dump());
  CHECK(WaitNoQemu(root.path(), 10s));

  hv.reset();
  CHECK(WaitNoQemu(root.path(), 10s));
}

}  // namespace
}  // namespace edgevirt::vmm
