#include "vmm/vmm.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "tests/support/catch.h"
#include "vmm/xml_writer.h"

namespace edgevirt::vmm {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;
const std::string kTestdata = std::string(EDGEVIRT_SOURCE_DIR) + "/vmm/testdata/";

// Compares DomainXml(spec) byte for byte with testdata/<file>; UPDATE_GOLDEN=1 rewrites it.
void CheckGolden(const std::string& file, const DomainSpec& spec) {
  auto xml = DomainXml(spec);
  if (!xml) FAIL("DomainXml: " << xml.error().ToString());
  const std::string path = kTestdata + file;
  const char* update = std::getenv("UPDATE_GOLDEN");
  if (update != nullptr && std::string(update) == "1") {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << *xml;
    REQUIRE(out.good());
    WARN("rewrote " << path);
    return;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) FAIL("missing golden file " << path << " (run with UPDATE_GOLDEN=1 to create it)");
  std::stringstream golden;
  golden << in.rdbuf();
  INFO("golden file " << path << " differs; review, then run with UPDATE_GOLDEN=1");
  CHECK(*xml == golden.str());
}

// The smallest valid spec: BIOS, q35, TCG, one vCPU, 128 MiB, one virtio disk.
DomainSpec Minimal() {
  DomainSpec s;
  s.name = "default_minimal";
  s.uuid = "6a1a24a1-4061-4607-8bf4-a3963d0c5895";
  s.accelerator = Accelerator::kTcg;
  s.memory_bytes = 128 * kMiB;
  DiskSpec root;
  root.name = "rootdisk";
  root.path = "/var/lib/edgevirt/overlays/default_minimal/rootdisk.qcow2";
  root.format = DiskFormat::kQcow2;
  root.boot_order = 1;
  s.disks.push_back(root);
  return s;
}

TEST_CASE("golden: minimal BIOS q35 TCG VM") { CheckGolden("minimal_bios_tcg.xml", Minimal()); }

TEST_CASE("golden: EFI with secure boot and a persistent vTPM on KVM") {
  DomainSpec s = Minimal();
  s.name = "prod_win11";
  s.uuid = "0b9c6f4e-3c1d-4a57-9a0e-2f3b8d7c6e5a";
  s.firmware_serial = "EV-0001";
  s.smbios = SmbiosSystem{.manufacturer = "KubeVirt", .product = "None", .family = "KubeVirt"};
  s.accelerator = Accelerator::kKvm;
  s.cpu = CpuSpec{CpuMode::kHostModel, "", 1, 2, 2};
  s.memory_bytes = 4096 * kMiB;
  s.firmware.kind = FirmwareKind::kEfi;
  s.firmware.secure_boot = true;
  s.firmware.loader = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd";
  s.firmware.nvram_template = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
  s.firmware.nvram = "/var/lib/edgevirt/nvram/prod_win11_VARS.fd";
  s.disks[0].path = "/var/lib/edgevirt/overlays/prod_win11/rootdisk.qcow2";
  s.tpm = TpmSpec{};
  CheckGolden("efi_secureboot_tpm.xml", s);
}

TEST_CASE("golden: EFI without secure boot, no nvram template, ephemeral vTPM") {
  DomainSpec s = Minimal();
  s.name = "default_efi";
  s.firmware.kind = FirmwareKind::kEfi;
  s.firmware.loader = "/usr/share/OVMF/OVMF_CODE_4M.fd";
  s.firmware.nvram = "/var/lib/edgevirt/nvram/default_efi_VARS.fd";
  s.tpm = TpmSpec{.persistent = false};
  CheckGolden("efi_tpm_ephemeral.xml", s);
}

TEST_CASE("golden: disks on virtio, sata and scsi") {
  DomainSpec s = Minimal();
  s.name = "default_disks";
  s.cpu = CpuSpec{CpuMode::kNone, "", 1, 2, 1};
  s.memory_bytes = 1024 * kMiB;
  s.disks.clear();
  DiskSpec root{.name = "rootdisk",
                .path = "/var/lib/edgevirt/overlays/default_disks/rootdisk.qcow2",
                .format = DiskFormat::kQcow2,
                .boot_order = 2};
  DiskSpec data{.name = "data",
                .path = "/var/lib/edgevirt/volumes/data.img",
                .serial = "DATA-0001",
                .cache = DiskCache::kWriteback,
                .error_policy = DiskErrorPolicy::kReport};
  DiskSpec install{.name = "installer",
                   .path = "/var/lib/edgevirt/images/debian-12.iso",
                   .device = DiskDevice::kCdrom,
                   .bus = DiskBus::kSata,
                   .boot_order = 1};
  DiskSpec tools{.name = "tools",
                 .path = "/var/lib/edgevirt/volumes/tools.img",
                 .bus = DiskBus::kScsi,
                 .readonly = true,
                 .cache = DiskCache::kWritethrough};
  DiskSpec scratch{.name = "scratch",
                   .source_kind = DiskSourceKind::kBlock,
                   .path = "/dev/vg0/scratch",
                   .bus = DiskBus::kSata,
                   .serial = "scratch 1",
                   .error_policy = DiskErrorPolicy::kEnospace};
  DiskSpec lun{.name = "shared-lun",
               .source_kind = DiskSourceKind::kBlock,
               .path = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
               .device = DiskDevice::kLun,
               .bus = DiskBus::kScsi,
               .error_policy = DiskErrorPolicy::kIgnore};
  DiskSpec drivers{.name = "drivers",
                   .path = "/var/lib/edgevirt/images/virtio-win.iso",
                   .device = DiskDevice::kCdrom,
                   .bus = DiskBus::kScsi,
                   .boot_order = 3};
  s.disks = {root, data, install, tools, scratch, lun, drivers};
  CheckGolden("disks.xml", s);
}

TEST_CASE("golden: unix console with log, VNC and guest agent sockets") {
  DomainSpec s = Minimal();
  s.name = "default_console";
  // A directory name with every XML special character: the output must escape all of them.
  const std::string dir = "/run/edgevirt/vms/a&b<c>'d\"e";
  s.console = ConsoleSpec{ConsoleKind::kUnix, dir + "/serial0.sock", dir + "/serial0.log"};
  s.vnc_socket_path = dir + "/vnc.sock";
  s.guest_agent_socket_path = dir + "/qga.sock";
  CheckGolden("console_vnc_agent.xml", s);
}

TEST_CASE("golden: pty console and a named CPU model on KVM") {
  DomainSpec s = Minimal();
  s.name = "default_pty";
  s.accelerator = Accelerator::kKvm;
  s.cpu = CpuSpec{CpuMode::kNamed, "Skylake-Client-IBRS", 2, 1, 1};
  s.console = ConsoleSpec{ConsoleKind::kPty, "", "/var/log/edgevirt/default_pty.log"};
  CheckGolden("pty_named_cpu.xml", s);
}

// Ready for hotplug as KubeVirt makes a VMI: the virtio-scsi controller without any scsi disk,
// and two PCIe root ports left free. libvirt fills the ports the XML lists with the domain's
// own devices first (here vda, the scsi controller, the agent's virtio-serial and the implicit
// USB controller), so the XML has 4 + 2 of them.
TEST_CASE("golden: hotplug-ready domain (scsi controller, spare PCIe root ports)") {
  DomainSpec s = Minimal();
  s.name = "default_hotplug";
  s.guest_agent_socket_path = "/run/edgevirt/vms/default_hotplug/qga.sock";
  s.hotplug_scsi_controller = true;
  s.spare_pcie_ports = 2;
  CheckGolden("hotplug_ready.xml", s);
}

// The default (pod) network's tap and a host bridge, a macvtap NIC, and KubeVirt's other
// models: MACs, tap names, models, a fixed PCI address, an MTU, and a NIC boot order that
// shares the sequence with the disks'.
NicSpec PodNic() {
  return NicSpec{.name = "default",
                 .source = "edgevirt0",
                 .target_dev = "ev-3f2a9c01",
                 .mac = "02:ED:00:00:00:01",
                 .mtu = 1400};
}

TEST_CASE("golden: NICs on bridges and macvtap, with models, PCI address and boot order") {
  DomainSpec s = Minimal();
  s.name = "default_nics";
  s.nics.push_back(PodNic());
  s.nics.push_back(NicSpec{.name = "lan",
                           .source = "br0",
                           .target_dev = "ev-3f2a9c02",
                           .mac = "52:54:00:12:34:56",
                           .model = "e1000e",
                           .boot_order = 2});
  s.nics.push_back(NicSpec{.name = "uplink",
                           .kind = NicKind::kDirect,
                           .target_dev = "evm-3f2a9c03",
                           .mac = "52:54:00:ab:cd:ef",
                           .pci = PciAddress{0, 0, 0x0a, 0}});
  s.nics.push_back(
      NicSpec{.name = "legacy_1", .source = "br0", .mac = "52:54:00:00:00:10", .model = "rtl8139"});
  CheckGolden("nics.xml", s);
}

// Root ports with NICs: vda, the scsi controller, the agent's virtio-serial, the USB
// controller, the virtio, e1000e and pcnet NICs (libvirt 9.0 gives pcnet and ne2k_pci a root
// port too), one pcie-to-pci-bridge for the conventional PCI NICs (e1000, rtl8139), and two
// spares: 10 ports, of which libvirt leaves exactly the last two empty (checked with define +
// dumpxml in the embedded QEMU driver).
TEST_CASE("golden: hotplug-ready domain with NICs counts their root ports") {
  DomainSpec s = Minimal();
  s.name = "default_hotplug_nics";
  s.guest_agent_socket_path = "/run/edgevirt/vms/default_hotplug_nics/qga.sock";
  s.hotplug_scsi_controller = true;
  s.spare_pcie_ports = 2;
  s.nics.push_back(PodNic());
  s.nics.push_back(
      NicSpec{.name = "b", .source = "br0", .mac = "52:54:00:00:00:02", .model = "e1000e"});
  s.nics.push_back(
      NicSpec{.name = "c", .source = "br0", .mac = "52:54:00:00:00:03", .model = "e1000"});
  s.nics.push_back(
      NicSpec{.name = "d", .source = "br0", .mac = "52:54:00:00:00:04", .model = "pcnet"});
  s.nics.push_back(
      NicSpec{.name = "e", .source = "br0", .mac = "52:54:00:00:00:05", .model = "rtl8139"});
  CheckGolden("hotplug_ready_nics.xml", s);
}

size_t Count(const std::string& xml, std::string_view needle) {
  size_t n = 0;
  for (size_t at = xml.find(needle); at != std::string::npos; at = xml.find(needle, at + 1)) ++n;
  return n;
}

TEST_CASE("NIC elements: bridge tap, macvtap, boot order or no ROM, escaped names") {
  DomainSpec s = Minimal();
  s.nics.push_back(PodNic());
  auto xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(Count(*xml, "<interface type='bridge'>") == 1);
  CHECK(Count(*xml, "<mac address='02:ed:00:00:00:01'/>") == 1);  // lower-cased
  CHECK(Count(*xml, "<source bridge='edgevirt0'/>") == 1);
  CHECK(Count(*xml, "<target dev='ev-3f2a9c01'/>") == 1);
  CHECK(Count(*xml, "<model type='virtio'/>") == 1);
  CHECK(Count(*xml, "<mtu size='1400'/>") == 1);
  CHECK(Count(*xml, "<rom enabled='no'/>") == 1);
  CHECK(Count(*xml, "<alias name='ua-default'/>") == 1);
  // NICs come after the disks (libvirt keeps device order; the guest sees disks first).
  CHECK(xml->find("<interface") > xml->find("</disk>"));
  // The kernel allows quotes and '&' in device names; they are escaped, never passed raw.
  s.nics[0].source = "br'&\"0";
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(Count(*xml, "<source bridge='br&apos;&amp;&quot;0'/>") == 1);
  CHECK(Count(*xml, "<interface type='direct'>") == 0);  // never libvirt's own macvtap
  s.nics[0].source = "edgevirt0";

  s.nics[0].boot_order = 2;
  s.nics[0].target_dev = "evm-1";
  s.nics[0].kind = NicKind::kDirect;
  s.nics[0].source.clear();
  s.nics[0].mtu = 0;
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(Count(*xml, "<interface type='ethernet'>") == 1);
  CHECK(Count(*xml, "<target dev='evm-1' managed='no'/>") == 1);
  CHECK(Count(*xml, "<source ") == 1);  // only the disk's
  CHECK(Count(*xml, "<boot order='2'/>") == 1);
  CHECK(Count(*xml, "<rom ") == 0);

  // Without spare ports no PCI controller is written, NICs or not.
  CHECK(Count(*xml, "pcie-root") == 0);
  CHECK(Count(*xml, "pcie-to-pci-bridge") == 0);
  // With them: vda, the USB controller, the NIC and one spare.
  s.spare_pcie_ports = 1;
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(Count(*xml, "model='pcie-root-port'") == 4);
  // Conventional PCI NICs add one port for libvirt's pcie-to-pci-bridge, however many.
  s.nics[0].model = "rtl8139";
  s.nics.push_back(
      NicSpec{.name = "n2", .source = "br0", .mac = "52:54:00:00:00:02", .model = "e1000"});
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(Count(*xml, "model='pcie-root-port'") == 4);
  CHECK(Count(*xml, "<controller type='pci' index='5' model='pcie-to-pci-bridge'/>") == 1);
  // ne2k_pci takes a root port of its own (libvirt 9.0).
  s.nics[1].model = "ne2k_pci";
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(Count(*xml, "model='pcie-root-port'") == 5);
}

TEST_CASE("ParsePciAddress and IsNetdevName") {
  auto a = ParsePciAddress("0000:81:1f.7");
  REQUIRE(a);
  CHECK(*a == PciAddress{0, 0x81, 0x1f, 7});
  a = ParsePciAddress("ABCD:0a:01.0");
  REQUIRE(a);
  CHECK(*a == PciAddress{0xabcd, 0x0a, 0x01, 0});
  for (const char* bad : {"", "0000:81:20.0", "0000:81:01.8", "000:081:01.0", "0000-81:01.0",
                          "0000:8g:01.0", "0000:81:01.0 ", "0000:81:01"}) {
    INFO(bad);
    auto r = ParsePciAddress(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kInvalid);
  }
  CHECK(IsNetdevName("eth0"));
  CHECK(IsNetdevName("br-lan.100"));
  CHECK(IsNetdevName(std::string(15, 'a')));
  CHECK_FALSE(IsNetdevName(std::string(16, 'a')));
  CHECK_FALSE(IsNetdevName(""));
  CHECK_FALSE(IsNetdevName("."));
  CHECK_FALSE(IsNetdevName(".."));
  CHECK_FALSE(IsNetdevName("a/b"));
  CHECK_FALSE(IsNetdevName("a:b"));
  CHECK_FALSE(IsNetdevName("a b"));
  CHECK_FALSE(IsNetdevName("a	b"));
  CHECK_FALSE(IsNetdevName("Ã©"));
}

TEST_CASE("The scsi controller is written once, with or without scsi disks") {
  DomainSpec s = Minimal();
  auto count = [](const std::string& xml, std::string_view needle) {
    size_t n = 0;
    for (size_t at = xml.find(needle); at != std::string::npos; at = xml.find(needle, at + 1)) ++n;
    return n;
  };
  const std::string_view controller = "<controller type='scsi' index='0' model='virtio-scsi'/>";
  auto xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(count(*xml, controller) == 0);
  CHECK(count(*xml, "pcie-root") == 0);  // no spare ports asked: libvirt's own topology
  s.hotplug_scsi_controller = true;
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(count(*xml, controller) == 1);
  s.disks.push_back(DiskSpec{.name = "s", .path = "/s.img", .bus = DiskBus::kScsi});
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(count(*xml, controller) == 1);
  // Root ports: vda and the scsi controller, the USB controller, and the spare one.
  s.spare_pcie_ports = 1;
  xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(count(*xml, "<controller type='pci' index='0' model='pcie-root'/>") == 1);
  CHECK(count(*xml, "model='pcie-root-port'") == 4);
}

TEST_CASE("host-passthrough on KVM") {
  DomainSpec s = Minimal();
  s.accelerator = Accelerator::kKvm;
  s.cpu.mode = CpuMode::kHostPassthrough;
  auto xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(xml->find("<domain type='kvm'>") == 0);
  CHECK(xml->find("<cpu mode='host-passthrough'>") != std::string::npos);
}

TEST_CASE("DomainXml is deterministic") {
  auto a = DomainXml(Minimal());
  auto b = DomainXml(Minimal());
  REQUIRE(a);
  REQUIRE(b);
  CHECK(*a == *b);
}

TEST_CASE("DiskTargetName follows the kernel's scheme") {
  CHECK(DiskTargetName("vd", 0) == "vda");
  CHECK(DiskTargetName("vd", 25) == "vdz");
  CHECK(DiskTargetName("vd", 26) == "vdaa");
  CHECK(DiskTargetName("sd", 51) == "sdaz");
  CHECK(DiskTargetName("sd", 52) == "sdba");
  CHECK(DiskTargetName("sd", 701) == "sdzz");
  CHECK(DiskTargetName("sd", 702) == "sdaaa");
}

TEST_CASE("SATA disks beyond six ports go to the next AHCI controller") {
  DomainSpec s = Minimal();
  s.disks.clear();
  for (int i = 0; i < 7; ++i) {
    s.disks.push_back(DiskSpec{.name = "d" + std::to_string(i),
                               .path = "/img/d" + std::to_string(i) + ".img",
                               .bus = DiskBus::kSata});
  }
  auto xml = DomainXml(s);
  REQUIRE(xml);
  CHECK(xml->find("<target dev='sdg' bus='sata'/>") != std::string::npos);
  CHECK(xml->find("<address type='drive' controller='1' bus='0' target='0' unit='0'/>") !=
        std::string::npos);
}

TEST_CASE("XmlEscape and IsXmlSafe") {
  CHECK(XmlEscape("a&b<c>d'e\"f") == "a&amp;b&lt;c&gt;d&apos;e&quot;f");
  CHECK(XmlEscape("/plain/path") == "/plain/path");
  CHECK(IsXmlSafe("/var/lib/\xc3\xa9t\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80"));  // é € 😀
  CHECK(IsXmlSafe(""));
  CHECK_FALSE(IsXmlSafe(std::string("a\0b", 3)));
  CHECK_FALSE(IsXmlSafe("a\nb"));
  CHECK_FALSE(IsXmlSafe("a\tb"));
  CHECK_FALSE(IsXmlSafe("a\x7f"));
  CHECK_FALSE(IsXmlSafe("\xc3"));              // truncated
  CHECK_FALSE(IsXmlSafe("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(IsXmlSafe("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(IsXmlSafe("\xef\xbf\xbf"));      // U+FFFF
  CHECK_FALSE(IsXmlSafe("\xc2\x85"));          // C1 control (NEL)
  CHECK_FALSE(IsXmlSafe("\xf4\x90\x80\x80"));  // above U+10FFFF
  CHECK_FALSE(IsXmlSafe("\xff"));
}

// Each case mutates a valid spec into an invalid one; DomainXml must answer kInvalid with a
// message containing `want`.
struct InvalidCase {
  const char* what;
  std::function<void(DomainSpec&)> mutate;
  const char* want;
};

DiskSpec& AddDisk(DomainSpec& s, DiskSpec d) {
  s.disks.push_back(std::move(d));
  return s.disks.back();
}

void MakeEfi(DomainSpec& s) {
  s.firmware.kind = FirmwareKind::kEfi;
  s.firmware.loader = "/usr/share/OVMF/OVMF_CODE_4M.fd";
  s.firmware.nvram = "/var/lib/edgevirt/nvram/x_VARS.fd";
}

NicSpec NicOf(std::string name, std::string source, std::string mac = "52:54:00:00:00:01") {
  return NicSpec{.name = std::move(name), .source = std::move(source), .mac = std::move(mac)};
}

TEST_CASE("validation errors") {
  const std::vector<InvalidCase> cases = {
      {"empty name", [](DomainSpec& s) { s.name = ""; }, "name: must not be empty"},
      {"name with a slash", [](DomainSpec& s) { s.name = "a/b"; }, "must consist of letters"},
      {"name with a space", [](DomainSpec& s) { s.name = "a b"; }, "must consist of letters"},
      {"name with an XML character", [](DomainSpec& s) { s.name = "a<b"; },
       "must consist of letters"},
      {"name starting with a dot", [](DomainSpec& s) { s.name = ".hidden"; }, "not start with '.'"},
      {"name starting with a dash", [](DomainSpec& s) { s.name = "-opt"; }, "not start with"},
      {"name with a newline", [](DomainSpec& s) { s.name = "a\nb"; }, "control character"},
      {"name too long", [](DomainSpec& s) { s.name = std::string(201, 'a'); }, "longer than 200"},
      {"uuid with a control character", [](DomainSpec& s) { s.uuid = std::string(36, '\x01'); },
       "uuid: contains a control character"},
      {"empty uuid", [](DomainSpec& s) { s.uuid = ""; }, "is not a UUID"},
      {"uuid without dashes",
       [](DomainSpec& s) { s.uuid = "6a1a24a1406146078bf4a3963d0c58950000"; }, "is not a UUID"},
      {"uuid with a non-hex digit",
       [](DomainSpec& s) { s.uuid = "6a1a24a1-4061-4607-8bf4-a3963d0c589g"; }, "is not a UUID"},
      {"uuid too short", [](DomainSpec& s) { s.uuid = "6a1a24a1-4061-4607-8bf4-a3963d0c589"; },
       "is not a UUID"},
      {"serial with a control character", [](DomainSpec& s) { s.firmware_serial = "a\x01"; },
       "firmware_serial: contains a control character"},
      {"SMBIOS product with a control character", [](DomainSpec& s) { s.smbios.product = "a\rb"; },
       "smbios.product: contains a control character"},
      {"empty machine type", [](DomainSpec& s) { s.machine_type = ""; }, "machine_type"},
      {"machine type with a quote", [](DomainSpec& s) { s.machine_type = "q35'"; }, "machine_type"},
      {"machine type with a control character", [](DomainSpec& s) { s.machine_type = "q35\x1b"; },
       "machine_type: contains a control character"},
      {"zero sockets", [](DomainSpec& s) { s.cpu.sockets = 0; }, "at least 1"},
      {"zero cores", [](DomainSpec& s) { s.cpu.cores = 0; }, "at least 1"},
      {"zero threads", [](DomainSpec& s) { s.cpu.threads = 0; }, "at least 1"},
      {"too many vCPUs",
       [](DomainSpec& s) {
         s.cpu = CpuSpec{CpuMode::kNone, "", 65536, 65536, 2};
       },
       "vCPUs (sockets*cores*threads) exceed 1024"},
      {"named CPU without a model", [](DomainSpec& s) { s.cpu.mode = CpuMode::kNamed; },
       "cpu.model"},
      {"named CPU model with a bad character",
       [](DomainSpec& s) {
         s.cpu = CpuSpec{CpuMode::kNamed, "Sky lake", 1, 1, 1};
       },
       "cpu.model"},
      {"named CPU model with a control character",
       [](DomainSpec& s) {
         s.cpu = CpuSpec{CpuMode::kNamed, "Sky\nlake", 1, 1, 1};
       },
       "cpu.model: contains a control character"},
      {"model without kNamed", [](DomainSpec& s) { s.cpu.model = "Skylake-Client"; },
       "only allowed with CpuMode::kNamed"},
      {"host-passthrough under TCG", [](DomainSpec& s) { s.cpu.mode = CpuMode::kHostPassthrough; },
       "host-passthrough needs KVM"},
      {"zero memory", [](DomainSpec& s) { s.memory_bytes = 0; }, "memory: must be greater than 0"},
      {"memory not a MiB multiple", [](DomainSpec& s) { s.memory_bytes = 128 * kMiB + 512; },
       "not a multiple of 1 MiB"},
      {"secure boot without EFI", [](DomainSpec& s) { s.firmware.secure_boot = true; },
       "secure boot requires EFI"},
      {"secure boot on i440fx",
       [](DomainSpec& s) {
         MakeEfi(s);
         s.firmware.secure_boot = true;
         s.machine_type = "pc-i440fx-7.2";
       },
       "secure boot requires a q35 machine"},
      {"BIOS with a loader path",
       [](DomainSpec& s) { s.firmware.loader = "/usr/share/OVMF/OVMF_CODE.fd"; },
       "only allowed with EFI"},
      {"EFI without loader",
       [](DomainSpec& s) {
         MakeEfi(s);
         s.firmware.loader = "";
       },
       "firmware.loader: must not be empty"},
      {"EFI without nvram",
       [](DomainSpec& s) {
         MakeEfi(s);
         s.firmware.nvram = "";
       },
       "firmware.nvram: must not be empty"},
      {"EFI with a relative loader",
       [](DomainSpec& s) {
         MakeEfi(s);
         s.firmware.loader = "OVMF_CODE.fd";
       },
       "firmware.loader: \"OVMF_CODE.fd\" is not an absolute path"},
      {"EFI with a relative nvram template",
       [](DomainSpec& s) {
         MakeEfi(s);
         s.firmware.nvram_template = "vars.fd";
       },
       "firmware.nvram_template"},
      {"disk without a name", [](DomainSpec& s) { s.disks[0].name = ""; },
       "disk name: \"\" must be non-empty"},
      {"disk name with a dot", [](DomainSpec& s) { s.disks[0].name = "root.disk"; },
       "disk name: \"root.disk\""},
      {"disk name with a control character", [](DomainSpec& s) { s.disks[0].name = "a\x7f"; },
       "disk name: contains a control character"},
      {"duplicate disk names",
       [](DomainSpec& s) { AddDisk(s, DiskSpec{.name = "rootdisk", .path = "/a.img"}); },
       "disk \"rootdisk\": duplicate disk name"},
      {"empty disk path", [](DomainSpec& s) { s.disks[0].path = ""; },
       "disk \"rootdisk\" path: must not be empty"},
      {"relative disk path", [](DomainSpec& s) { s.disks[0].path = "images/root.qcow2"; },
       "is not an absolute path"},
      {"disk path with ..", [](DomainSpec& s) { s.disks[0].path = "/var/lib/../../etc/shadow"; },
       "contains a '..' component"},
      {"disk path ending in ..", [](DomainSpec& s) { s.disks[0].path = "/var/.."; },
       "contains a '..' component"},
      {"disk path with a newline", [](DomainSpec& s) { s.disks[0].path = "/a\n.img"; },
       "control character"},
      {"disk path with invalid UTF-8", [](DomainSpec& s) { s.disks[0].path = "/a\xff.img"; },
       "invalid UTF-8"},
      {"cdrom on virtio",
       [](DomainSpec& s) {
         AddDisk(s, DiskSpec{.name = "cd", .path = "/a.iso", .device = DiskDevice::kCdrom});
       },
       "a cdrom cannot be on the virtio bus"},
      {"read-only sata disk",
       [](DomainSpec& s) {
         AddDisk(s,
                 DiskSpec{.name = "ro", .path = "/a.img", .bus = DiskBus::kSata, .readonly = true});
       },
       "a read-only disk cannot be on the sata bus"},
      {"lun on sata",
       [](DomainSpec& s) {
         AddDisk(s, DiskSpec{.name = "l",
                             .source_kind = DiskSourceKind::kBlock,
                             .path = "/dev/sdb",
                             .device = DiskDevice::kLun,
                             .bus = DiskBus::kSata});
       },
       "a lun must be on the scsi bus"},
      {"lun on virtio",
       [](DomainSpec& s) {
         AddDisk(s, DiskSpec{.name = "l",
                             .source_kind = DiskSourceKind::kBlock,
                             .path = "/dev/sdb",
                             .device = DiskDevice::kLun});
       },
       "a lun must be on the scsi bus"},
      {"lun on a file",
       [](DomainSpec& s) {
         AddDisk(
             s,
             DiskSpec{
                 .name = "l", .path = "/a.img", .device = DiskDevice::kLun, .bus = DiskBus::kScsi});
       },
       "a lun needs a block device source"},
      {"lun with qcow2",
       [](DomainSpec& s) {
         AddDisk(s, DiskSpec{.name = "l",
                             .source_kind = DiskSourceKind::kBlock,
                             .path = "/dev/sdb",
                             .format = DiskFormat::kQcow2,
                             .device = DiskDevice::kLun,
                             .bus = DiskBus::kScsi});
       },
       "a lun must have format raw"},
      {"disk serial with a slash", [](DomainSpec& s) { s.disks[0].serial = "a/b"; },
       "serial: \"a/b\" may only contain"},
      {"disk serial with a control character", [](DomainSpec& s) { s.disks[0].serial = "a\x02"; },
       "serial: contains a control character"},
      {"disk serial too long", [](DomainSpec& s) { s.disks[0].serial = std::string(21, 'x'); },
       "longer than 20 bytes"},
      {"duplicate boot order",
       [](DomainSpec& s) {
         AddDisk(s, DiskSpec{.name = "second", .path = "/b.img", .boot_order = 1});
       },
       "disk \"second\": boot order 1 is already used by disk \"rootdisk\""},
      {"unix console without a socket", [](DomainSpec& s) { s.console.kind = ConsoleKind::kUnix; },
       "console.socket_path: must not be empty"},
      {"unix console with a relative socket",
       [](DomainSpec& s) {
         s.console = ConsoleSpec{ConsoleKind::kUnix, "serial.sock", ""};
       },
       "console.socket_path: \"serial.sock\" is not an absolute path"},
      {"pty console with a socket",
       [](DomainSpec& s) {
         s.console = ConsoleSpec{ConsoleKind::kPty, "/run/s.sock", ""};
       },
       "only allowed with ConsoleKind::kUnix"},
      {"console log without a console", [](DomainSpec& s) { s.console.log_path = "/var/log/x"; },
       "there is no console to log"},
      {"relative console log",
       [](DomainSpec& s) {
         s.console = ConsoleSpec{ConsoleKind::kPty, "", "console.log"};
       },
       "console.log_path: \"console.log\" is not an absolute path"},
      {"relative VNC socket", [](DomainSpec& s) { s.vnc_socket_path = "vnc.sock"; },
       "vnc_socket_path: \"vnc.sock\" is not an absolute path"},
      {"relative guest agent socket", [](DomainSpec& s) { s.guest_agent_socket_path = "qga"; },
       "guest_agent_socket_path: \"qga\" is not an absolute path"},
      {"spare PCIe ports on i440fx",
       [](DomainSpec& s) {
         s.machine_type = "pc-i440fx-7.2";
         s.spare_pcie_ports = 1;
       },
       "spare_pcie_ports: PCIe root ports need a q35 machine type"},
      {"too many spare PCIe ports", [](DomainSpec& s) { s.spare_pcie_ports = 33; },
       "spare_pcie_ports: 33 exceeds 32"},
      {"NIC without a name", [](DomainSpec& s) { s.nics.push_back(NicOf("", "br0")); },
       "nic name: \"\" must be non-empty"},
      {"NIC name with a dot", [](DomainSpec& s) { s.nics.push_back(NicOf("a.b", "br0")); },
       "nic name: \"a.b\""},
      {"NIC name with a control character",
       [](DomainSpec& s) { s.nics.push_back(NicOf("a\x01", "br0")); }, "nic name: contains"},
      {"NIC with an empty source", [](DomainSpec& s) { s.nics.push_back(NicOf("n", "")); },
       "nic \"n\" source: \"\" is not a valid bridge name"},
      {"NIC source too long",
       [](DomainSpec& s) { s.nics.push_back(NicOf("n", "a-sixteen-bytes!")); },
       "is not a valid bridge name"},
      {"NIC source with a slash", [](DomainSpec& s) { s.nics.push_back(NicOf("n", "../br")); },
       "is not a valid bridge name"},
      {"macvtap without its device",
       [](DomainSpec& s) {
         NicSpec& n = s.nics.emplace_back(NicOf("n", ""));
         n.kind = NicKind::kDirect;
       },
       "nic \"n\" target_dev: a macvtap NIC (NicKind::kDirect) needs the name of its existing "
       "macvtap device"},
      {"macvtap with a source",
       [](DomainSpec& s) {
         NicSpec& n = s.nics.emplace_back(NicOf("n", "eth1"));
         n.kind = NicKind::kDirect;
         n.target_dev = "evm-1";
       },
       "nic \"n\" source: a macvtap NIC (NicKind::kDirect) names only its device"},
      {"tap name too long",
       [](DomainSpec& s) {
         s.nics.emplace_back(NicOf("n", "br0")).target_dev = "tap-0123456789ab";
       },
       "nic \"n\" target_dev: \"tap-0123456789ab\" is not a valid device name"},
      {"tap name libvirt would replace",
       [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).target_dev = "vnet7"; },
       "starts with \"vnet\", which libvirt keeps"},
      {"macvtap name libvirt would replace",
       [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).target_dev = "macvtap0"; },
       "starts with \"macvtap\""},
      {"NIC without a MAC", [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).mac = ""; },
       "nic \"n\" mac: \"\" is not a MAC address"},
      {"MAC with dashes",
       [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).mac = "52-54-00-00-00-01"; },
       "is not a MAC address"},
      {"MAC too long",
       [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).mac = "52:54:00:00:00:01:02"; },
       "is not a MAC address"},
      {"multicast MAC",
       [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).mac = "01:00:5e:00:00:01"; },
       "nic \"n\" mac: \"01:00:5e:00:00:01\" is a multicast address"},
      {"unknown model",
       [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).model = "virtio-net-pci"; },
       "nic \"n\" model: \"virtio-net-pci\" is not one of e1000, e1000e"},
      {"PCI slot out of range",
       [](DomainSpec& s) {
         s.nics.emplace_back(NicOf("n", "br0")).pci = PciAddress{0, 1, 32, 0};
       },
       "nic \"n\" pci: domain <= 0xffff, bus <= 0xff, slot <= 0x1f"},
      {"MTU too small", [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).mtu = 67; },
       "nic \"n\" mtu: 67 is not between 68 and 65535"},
      {"MTU on macvtap",
       [](DomainSpec& s) {
         NicSpec& n = s.nics.emplace_back(NicOf("n", ""));
         n.kind = NicKind::kDirect;
         n.target_dev = "evm-1";
         n.mtu = 1500;
       },
       "only a tap libvirt makes (NicKind::kBridge) gets an MTU here"},
      {"MTU on an e1000",
       [](DomainSpec& s) {
         NicSpec& n = s.nics.emplace_back(NicOf("n", "br0"));
         n.model = "e1000";
         n.mtu = 1500;
       },
       "only a virtio NIC can tell the guest its MTU"},
      {"duplicate NIC names",
       [](DomainSpec& s) {
         s.nics.push_back(NicOf("n", "br0"));
         s.nics.push_back(NicOf("n", "br1", "52:54:00:00:00:02"));
       },
       "nic \"n\": duplicate NIC name"},
      {"NIC named like a disk", [](DomainSpec& s) { s.nics.push_back(NicOf("rootdisk", "br0")); },
       "nic \"rootdisk\": a disk has the same name (both would get the alias \"ua-rootdisk\")"},
      {"duplicate MACs, in different case",
       [](DomainSpec& s) {
         s.nics.push_back(NicOf("a", "br0", "52:54:00:AB:00:01"));
         s.nics.push_back(NicOf("b", "br0", "52:54:00:ab:00:01"));
       },
       "nic \"b\": MAC address \"52:54:00:ab:00:01\" is used by another NIC"},
      {"duplicate tap names",
       [](DomainSpec& s) {
         s.nics.emplace_back(NicOf("a", "br0")).target_dev = "ev-1";
         s.nics.emplace_back(NicOf("b", "br0", "52:54:00:00:00:02")).target_dev = "ev-1";
       },
       "nic \"b\": target_dev \"ev-1\" is used by another NIC"},
      {"duplicate PCI addresses",
       [](DomainSpec& s) {
         s.nics.emplace_back(NicOf("a", "br0")).pci = PciAddress{0, 1, 0, 0};
         s.nics.emplace_back(NicOf("b", "br0", "52:54:00:00:00:02")).pci = PciAddress{0, 1, 0, 0};
       },
       "nic \"b\": PCI address 0000:01:00.0 is used by another NIC"},
      {"NIC boot order used by a disk",
       [](DomainSpec& s) { s.nics.emplace_back(NicOf("n", "br0")).boot_order = 1; },
       "nic \"n\": boot order 1 is already used by disk \"rootdisk\""},
      {"two NICs with one boot order",
       [](DomainSpec& s) {
         s.nics.emplace_back(NicOf("a", "br0")).boot_order = 3;
         s.nics.emplace_back(NicOf("b", "br0", "52:54:00:00:00:02")).boot_order = 3;
       },
       "nic \"b\": boot order 3 is already used by nic \"a\""},
  };
  for (const InvalidCase& c : cases) {
    DYNAMIC_SECTION(c.what) {
      DomainSpec s = Minimal();
      c.mutate(s);
      auto xml = DomainXml(s);
      REQUIRE_FALSE(xml);
      CHECK(xml.error().code == Code::kInvalid);
      INFO("message: " << xml.error().message);
      CHECK(xml.error().message.find(c.want) != std::string::npos);
    }
  }
}

}  // namespace
}  // namespace edgevirt::vmm
