// vmm NICs against the real parts: libvirt's QEMU driver embedded in this process (a fresh
// private root), QEMU under TCG, and the kernel's bridge, tap and macvtap devices. The test
// first moves itself into a network namespace of its own (unshare(CLONE_NEWNET)): the libvirt
// threads and the QEMU it starts inherit it, so the bridge and veth pair the test makes and the
// taps libvirt makes never touch the host's network, and all of them vanish with
// the process. The domain is only started paused: what is checked is what libvirt does to the
// host's network devices for the XML DomainXml writes, not the guest.
#include <sched.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/exec.h"
#include "tests/support/catch.h"
#include "tests/support/qemu.h"
#include "vmm/vmm.h"

namespace edgevirt::vmm {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

#define REQUIRE_OK(expr)                                                      \
  do {                                                                        \
    auto&& r_ = (expr);                                                       \
    if (!r_.has_value()) FAIL(#expr << " failed: " << r_.error().ToString()); \
  } while (false)

void Ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  REQUIRE_OK(ExecChecked(argv));
}

// `ip -o -d link show` of this namespace: one line per device.
std::vector<std::string> Links() {
  auto r = ExecChecked({"ip", "-o", "-d", "link", "show"});
  if (!r) FAIL("ip link show: " << r.error().ToString());
  std::vector<std::string> lines;
  size_t start = 0;
  const std::string& out = r->stdout_text;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    lines.push_back(out.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// The line of device `name` ("N: name: <...>" or "N: name@parent: <...>"), or "".
std::string Link(const std::string& name) {
  for (const std::string& l : Links()) {
    size_t colon = l.find(": ");
    if (colon == std::string::npos) continue;
    std::string dev = l.substr(colon + 2, l.find_first_of(":@", colon + 2) - colon - 2);
    if (dev == name) return l;
  }
  return "";
}

bool Has(const std::string& line, const std::string& needle) {
  return line.find(needle) != std::string::npos;
}

TEST_CASE("libvirt makes the taps DomainXml asks for and opens the given macvtap") {
  if (::geteuid() != 0) FAIL("needs root (network namespace, taps, the embedded QEMU driver)");
  REQUIRE(::unshare(CLONE_NEWNET) == 0);
  Ip({"link", "set", "lo", "up"});
  Ip({"link", "add", "evt-br", "type", "bridge"});
  Ip({"link", "set", "evt-br", "up"});
  Ip({"link", "add", "evt-a", "type", "veth", "peer", "name", "evt-b"});
  Ip({"link", "set", "evt-a", "up"});
  Ip({"link", "set", "evt-b", "up"});
  REQUIRE(Has(Link("evt-br"), "mtu 1500"));

  testing::QemuTestRoot root("vmm-nic-test");
  HypervisorOptions opts;
  opts.root = root.path() + "/libvirt";
  auto hv = Hypervisor::Open(opts);
  if (!hv) FAIL("open: " << hv.error().ToString());

  DomainSpec spec;
  spec.name = "nic_start";
  spec.uuid = "3f2a9c01-7d1e-4c55-9b0a-6f1d2e3c4b5a";
  spec.accelerator = Accelerator::kTcg;
  spec.memory_bytes = 64 * kMiB;
  spec.spare_pcie_ports = 1;
  // The pod network's shape: a named tap on the bridge, an MTU below the bridge's.
  spec.nics.push_back(NicSpec{.name = "default",
                              .source = "evt-br",
                              .target_dev = "evt-tap0",
                              .mac = "02:ed:00:00:00:01",
                              .mtu = 1400});
  // A boot NIC: its option ROM is loaded (Debian's ipxe-qemu).
  spec.nics.push_back(NicSpec{.name = "boot",
                              .source = "evt-br",
                              .target_dev = "evt-tap1",
                              .mac = "52:54:00:00:00:02",
                              .model = "e1000e",
                              .boot_order = 1});
  // A macvtap net/ made (vepa on evt-a, with the guest's MAC): libvirt only opens it.
  Ip({"link", "add", "evt-mvt0", "link", "evt-a", "address", "52:54:00:00:00:03", "type", "macvtap",
      "mode", "vepa"});
  Ip({"link", "set", "evt-mvt0", "up"});
  spec.nics.push_back(NicSpec{.name = "uplink",
                              .kind = NicKind::kDirect,
                              .target_dev = "evt-mvt0",
                              .mac = "52:54:00:00:00:03"});
  // No tap name: libvirt picks vnetN.
  spec.nics.push_back(NicSpec{
      .name = "legacy", .source = "evt-br", .mac = "52:54:00:00:00:04", .model = "rtl8139"});
  REQUIRE_OK((*hv)->DefineAndStartPaused(spec));

  const std::string tap0 = Link("evt-tap0");
  INFO(tap0);
  CHECK(Has(tap0, "master evt-br"));
  CHECK(Has(tap0, "mtu 1400"));
  CHECK(Has(tap0, "tun type tap"));
  // The tap's MAC is the guest's with the first byte 0xfe (libvirt), so the bridge never
  // learns the guest's own address on the host side.
  CHECK(Has(tap0, "link/ether fe:ed:00:00:00:01"));
  const std::string tap1 = Link("evt-tap1");
  INFO(tap1);
  CHECK(Has(tap1, "master evt-br"));
  // A Linux bridge without an MTU of its own follows its smallest port: the 1400 of one NIC
  // lowered the bridge, and libvirt gave the next taps the bridge's MTU. So net/ must give the
  // bridge its MTU explicitly and the NICs the same one.
  CHECK(Has(tap1, "mtu 1400"));
  CHECK(Has(Link("evt-br"), "mtu 1400"));
  // QEMU holds the macvtap's character device, /dev/tap<ifindex>.
  auto pid = (*hv)->QemuPid(spec.name);
  if (!pid) FAIL("qemu pid: " << pid.error().ToString());
  const std::string mvt = Link("evt-mvt0");
  INFO(mvt);
  const std::string tapdev = "/dev/tap" + mvt.substr(0, mvt.find(':'));
  bool open = false;
  std::error_code ec;
  for (const auto& fd :
       std::filesystem::directory_iterator("/proc/" + std::to_string(*pid) + "/fd", ec)) {
    if (std::filesystem::read_symlink(fd.path(), ec).string() == tapdev) open = true;
  }
  CHECK(open);
  std::string vnet;
  for (const std::string& l : Links()) {
    if (Has(l, ": vnet") && Has(l, "master evt-br")) vnet = l;
  }
  INFO(vnet);
  CHECK(Has(vnet, "link/ether fe:54:00:00:00:04"));

  // Stopping the domain does not crash the process (it did with libvirt's own macvtap, type
  // 'direct', in the embedded driver), and libvirt removes what it made, and only that.
  REQUIRE_OK((*hv)->Destroy(spec.name));
  REQUIRE_OK((*hv)->Undefine(spec.name));
  CHECK(Link("evt-tap0").empty());
  CHECK(Link("evt-tap1").empty());
  for (const std::string& l : Links()) CHECK_FALSE(Has(l, ": vnet"));
  CHECK_FALSE(Link("evt-mvt0").empty());  // net/'s to delete
  CHECK_FALSE(Link("evt-br").empty());
  CHECK_FALSE(Link("evt-a").empty());
}

}  // namespace
}  // namespace edgevirt::vmm
