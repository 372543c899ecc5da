// vmm_domain_stats_test: virConnectGetAllDomainStats records parsed into DomainStats. The
// records are built with libvirt's own virTypedParamsAdd* (the keys and types QEMU's driver
// sends, per virConnectGetAllDomainStats(3)); the live-XML aliases from a domain XML like the
// one DomainXml writes; and AllDomainStats against libvirt's test driver, which reports only
// the state group. The full path on a real QEMU guest is checked by
// tests/integration/vm_network_test.cc (the /metrics scrape).
#include <libvirt/libvirt.h>

#include <string>

#include "tests/support/catch.h"
#include "vmm/domain_stats_libvirt.h"
#include "vmm/vmm.h"

namespace edgevirt::vmm {
namespace {

struct Params {
  virTypedParameterPtr p = nullptr;
  int n = 0;
  int max = 0;
  // libvirt's per-thread error state must exist before any virTypedParams* call.
  Params() { REQUIRE(virInitialize() == 0); }
  ~Params() { virTypedParamsFree(p, n); }
  void U(const char* k, unsigned long long v) {
    REQUIRE(virTypedParamsAddULLong(&p, &n, &max, k, v) == 0);
  }
  void I(const char* k, int v) { REQUIRE(virTypedParamsAddInt(&p, &n, &max, k, v) == 0); }
  void Ui(const char* k, unsigned v) { REQUIRE(virTypedParamsAddUInt(&p, &n, &max, k, v) == 0); }
  void S(const char* k, const char* v) {
    REQUIRE(virTypedParamsAddString(&p, &n, &max, k, v) == 0);
  }
};

TEST_CASE("ParseDomainStats reads every group by index") {
  Params in;
  in.I("state.state", VIR_DOMAIN_RUNNING);
  in.I("state.reason", 1);
  in.U("cpu.time", 3'000'000'000ULL);
  in.U("cpu.user", 2'000'000'000ULL);
  in.U("cpu.system", 500'000'000ULL);
  in.U("balloon.current", 262144);
  in.U("balloon.maximum", 524288);
  in.U("balloon.rss", 131072);
  in.U("balloon.available", 250000);
  in.U("balloon.usable", 200000);
  in.U("balloon.major_fault", 7);
  in.Ui("vcpu.current", 2);
  in.Ui("vcpu.maximum", 4);
  // Deliberately out of order: vcpu 1 before vcpu 0.
  in.I("vcpu.1.state", VIR_VCPU_BLOCKED);
  in.U("vcpu.1.time", 5'000'000'000ULL);
  in.I("vcpu.0.state", VIR_VCPU_RUNNING);
  in.U("vcpu.0.time", 1'500'000'000ULL);
  in.U("vcpu.0.wait", 42);
  in.Ui("net.count", 2);
  in.S("net.0.name", "tap-a1");
  in.U("net.0.rx.bytes", 1000);
  in.U("net.0.rx.pkts", 10);
  in.U("net.0.rx.errs", 0);
  in.U("net.0.rx.drop", 1);
  in.U("net.0.tx.bytes", 2000);
  in.U("net.0.tx.pkts", 20);
  in.U("net.0.tx.errs", 2);
  in.U("net.0.tx.drop", 3);
  in.S("net.1.name", "macvtap0");
  in.U("net.1.rx.bytes", 77);
  in.Ui("block.count", 1);
  in.S("block.0.name", "vda");
  in.S("block.0.path", "/var/lib/x/disk.qcow2");
  in.U("block.0.rd.reqs", 100);
  in.U("block.0.rd.bytes", 409600);
  in.U("block.0.rd.times", 9'000'000);
  in.U("block.0.wr.reqs", 5);
  in.U("block.0.wr.bytes", 20480);
  in.U("block.0.wr.times", 1'000'000);
  in.U("block.0.fl.reqs", 3);
  in.U("block.0.fl.times", 300);
  in.S("unknown.key", "ignored");
  in.S("cpu.time.extra", "ignored");
  in.S("vcpu.x.time", "ignored");

  DomainStats s = ParseDomainStats("default_vm1", "0c2b", in.p, in.n);
  CHECK(s.name == "default_vm1");
  CHECK(s.state == VIR_DOMAIN_RUNNING);
  CHECK(s.reason == 1);
  CHECK(s.cpu_time_ns == 3'000'000'000ULL);
  CHECK(s.cpu_user_ns == 2'000'000'000ULL);
  CHECK(s.cpu_system_ns == 500'000'000ULL);
  CHECK(s.balloon_current_kib == 262144u);
  CHECK(s.balloon_maximum_kib == 524288u);
  CHECK(s.balloon_rss_kib == 131072u);
  CHECK(s.balloon_available_kib == 250000u);
  CHECK(s.balloon_usable_kib == 200000u);
  CHECK(s.balloon_major_fault == 7u);
  CHECK_FALSE(s.balloon_unused_kib.has_value());  // not reported: stays unknown, not 0
  CHECK(s.vcpu_current == 2u);
  CHECK(s.vcpu_maximum == 4u);
  REQUIRE(s.vcpus.size() == 2);
  CHECK(s.vcpus[0].id == 0);
  CHECK(s.vcpus[0].state == VcpuState::kRunning);
  CHECK(s.vcpus[0].time_ns == 1'500'000'000ULL);
  CHECK(s.vcpus[0].wait_ns == 42u);
  CHECK(s.vcpus[1].id == 1);
  CHECK(s.vcpus[1].state == VcpuState::kBlocked);
  CHECK(s.vcpus[1].time_ns == 5'000'000'000ULL);
  CHECK_FALSE(s.vcpus[1].wait_ns.has_value());
  REQUIRE(s.nets.size() == 2);
  CHECK(s.nets[0].device == "tap-a1");
  CHECK(s.nets[0].rx_bytes == 1000u);
  CHECK(s.nets[0].rx_pkts == 10u);
  CHECK(s.nets[0].rx_errs == 0u);
  CHECK(s.nets[0].rx_drop == 1u);
  CHECK(s.nets[0].tx_bytes == 2000u);
  CHECK(s.nets[0].tx_pkts == 20u);
  CHECK(s.nets[0].tx_errs == 2u);
  CHECK(s.nets[0].tx_drop == 3u);
  CHECK(s.nets[1].device == "macvtap0");
  CHECK(s.nets[1].rx_bytes == 77u);
  CHECK_FALSE(s.nets[1].tx_bytes.has_value());
  REQUIRE(s.blocks.size() == 1);
  CHECK(s.blocks[0].target == "vda");
  CHECK(s.blocks[0].path == "/var/lib/x/disk.qcow2");
  CHECK(s.blocks[0].rd_reqs == 100u);
  CHECK(s.blocks[0].rd_bytes == 409600u);
  CHECK(s.blocks[0].rd_times_ns == 9'000'000u);
  CHECK(s.blocks[0].wr_reqs == 5u);
  CHECK(s.blocks[0].wr_bytes == 20480u);
  CHECK(s.blocks[0].wr_times_ns == 1'000'000u);
  CHECK(s.blocks[0].fl_reqs == 3u);
  CHECK(s.blocks[0].fl_times_ns == 300u);

  AddAliases(s, R"(<domain type='qemu'><name>default_vm1</name><devices>
      <disk type='file' device='disk'><target dev='vda' bus='virtio'/><alias name='ua-rootdisk'/></disk>
      <interface type='ethernet'><target dev='tap-a1'/><alias name='ua-default'/></interface>
      <interface type='direct'><target dev='macvtap0'/><alias name='net1'/></interface>
    </devices></domain>)");
  CHECK(s.blocks[0].alias == "rootdisk");
  CHECK(s.nets[0].alias == "default");
  CHECK(s.nets[1].alias.empty());  // libvirt's own alias, not a KubeVirt name

  AddAliases(s, "<not-xml");  // leaves what is there
  CHECK(s.nets[0].alias == "default");
}

TEST_CASE("AllDomainStats on libvirt's test driver") {
  HypervisorOptions opts;
  opts.uri = "test:///default";
  auto hv = Hypervisor::Open(opts);
  REQUIRE(hv);
  auto stats = (*hv)->AllDomainStats();
  REQUIRE(stats);
  REQUIRE(stats->size() == 1);  // the driver's one running domain "test"
  CHECK((*stats)[0].name == "test");
  CHECK((*stats)[0].uuid.size() == 36);
  CHECK((*stats)[0].state == VIR_DOMAIN_RUNNING);
  REQUIRE((*hv)->Pause("test"));
  stats = (*hv)->AllDomainStats();
  REQUIRE(stats);
  REQUIRE(stats->size() == 1);
  CHECK((*stats)[0].state == VIR_DOMAIN_PAUSED);
  REQUIRE((*hv)->Destroy("test"));
  stats = (*hv)->AllDomainStats();
  REQUIRE(stats);
  CHECK(stats->empty());  // only active domains
}

}  // namespace
}  // namespace edgevirt::vmm
