// The pure part of disk hotplug: the XML reader, the disks of a live domain XML, and the <disk>
// element of a disk to attach (target and scsi unit chosen from what the domain uses). The
// hotplug itself, against QEMU and a guest, is tests/integration/vmm_hotplug_test.cc. Also the
// console of a live domain XML (live_xml.h).
#include "vmm/hotplug.h"

#include <string>

#include "tests/support/catch.h"
#include "vmm/live_xml.h"
#include "vmm/xml_reader.h"

namespace edgevirt::vmm {
namespace {

// A live domain XML as libvirt 9.0 writes it (trimmed): virtio disks vda and vdc, a sata cdrom
// sda, scsi disks sdb (unit 0) and sdd (unit 2), a disk with libvirt's own alias, the scsi
// controller, and a disk on a bus DiskBus cannot express.
constexpr std::string_view kLiveXml = R"(<domain type='qemu' id='1'>
  <name>default_vm1</name>
  <!-- a comment libvirt never writes, but could -->
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native'/>
      <source file='/var/lib/edgevirt/a&amp;b/root.qcow2' index='3'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
      <alias name='ua-rootdisk'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/loop7' index='2'/>
      <target dev='vdc' bus='virtio'/>
      <alias name='ua-data2'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/run/edgevirt/cloudinit.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <alias name='ua-cloudinitdisk'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/edgevirt/tools.img'/>
      <target dev='sdb' bus='scsi'/>
      <readonly/>
      <alias name='ua-tools'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/edgevirt/x.img'/>
      <target dev='sdd' bus='scsi'/>
      <alias name='scsi0-0-0-2'/>
      <address type='drive' controller='0' bus='0' target='0' unit='2'/>
    </disk>
    <disk type='file' device='floppy'>
      <source file='/var/lib/edgevirt/floppy.img'/>
      <target dev='fda' bus='fdc'/>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'>
      <alias name='scsi0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
    <controller type='sata' index='0'>
      <alias name='ide'/>
    </controller>
  </devices>
</domain>
)";

std::string Replace(std::string_view xml, std::string_view what, std::string_view with) {
  std::string s(xml);
  const size_t at = s.find(what);
  REQUIRE(at != std::string::npos);
  s.replace(at, what.size(), with);
  return s;
}

TEST_CASE("ParseXml reads what libvirt writes") {
  auto doc = ParseXml(
      "<?xml version='1.0'?>\n<!-- c -->\n<a x='1' y=\"q&apos;&quot;&lt;&gt;&amp;\">"
      "t&#233;&#x20AC;<b/><!-- inside --><b k = 'v'>in<![CDATA[<raw>]]></b><c></c ></a>\n");
  REQUIRE(doc);
  CHECK(doc->name == "a");
  CHECK(doc->AttrOr("x") == "1");
  CHECK(doc->AttrOr("y") == "q'\"<>&");
  CHECK(doc->AttrOr("z", "none") == "none");
  CHECK(doc->Attr("z") == nullptr);
  CHECK(doc->text == "t\xc3\xa9\xe2\x82\xac");
  REQUIRE(doc->Children("b").size() == 2);
  CHECK(doc->Children("b")[1]->AttrOr("k") == "v");
  CHECK(doc->Children("b")[1]->text == "in<raw>");
  CHECK(doc->Child("c") != nullptr);
  CHECK(doc->Child("d") == nullptr);
}

TEST_CASE("ParseXml refuses what is not well-formed or not supported") {
  const char* const bad[] = {
      "",
      "   ",
      "<a>",
      "<a></b>",
      "<a><b></a></b>",
      "<a x='1' x='2'/>",
      "<a x=1/>",
      "<a x='1'y='2'/>",
      "<a x='<'/>",
      "<a>&nbsp;</a>",
      "<a>&#0;</a>",
      "<a>&#xd800;</a>",
      "<a>&#x110000;</a>",
      "<a>&amp</a>",
      "<!DOCTYPE a [<!ENTITY e 'x'>]><a>&e;</a>",
      "<a/><b/>",
      "<a/>trailing",
      "<a><!-- unterminated </a>",
      "<a><![CDATA[x</a>",
  };
  for (const char* doc : bad) {
    INFO("document: " << doc);
    auto parsed = ParseXml(doc);
    CHECK_FALSE(parsed);
    if (!parsed) CHECK(parsed.error().code == Code::kInvalid);
  }
  std::string deep;
  for (int i = 0; i < 65; ++i) deep += "<a>";
  for (int i = 0; i < 65; ++i) deep += "</a>";
  CHECK_FALSE(ParseXml(deep));
  std::string ok;
  for (int i = 0; i < 64; ++i) ok += "<a>";
  for (int i = 0; i < 64; ++i) ok += "</a>";
  CHECK(ParseXml(ok));
}

TEST_CASE("ParseLiveDisks lists the disks of a live domain XML") {
  auto disks = ParseLiveDisks(kLiveXml);
  REQUIRE(disks);
  REQUIRE(disks->size() == 5);  // the floppy is left out
  const LiveDisk& root = (*disks)[0];
  CHECK(root.name == "rootdisk");
  CHECK(root.target == "vda");
  CHECK(root.path == "/var/lib/edgevirt/a&b/root.qcow2");
  CHECK(root.bus == DiskBus::kVirtio);
  CHECK_FALSE(root.block);
  CHECK_FALSE(root.readonly);
  const LiveDisk& data = (*disks)[1];
  CHECK(data.name == "data2");
  CHECK(data.block);
  CHECK(data.path == "/dev/loop7");
  CHECK((*disks)[2].bus == DiskBus::kSata);
  CHECK((*disks)[2].readonly);
  CHECK((*disks)[3].name == "tools");
  CHECK((*disks)[3].bus == DiskBus::kScsi);
  CHECK((*disks)[4].name.empty());  // libvirt's own alias, not a user alias
  CHECK((*disks)[4].target == "sdd");

  CHECK(ParseLiveDisks("<domain/>")->empty());
  CHECK(ParseLiveDisks("<domainsnapshot/>").error().code == Code::kInvalid);
  CHECK(ParseLiveDisks("<domain>").error().code == Code::kInvalid);
}

TEST_CASE("HotplugDiskXml picks the lowest free target and scsi unit") {
  SECTION("virtio: vdb is free between vda and vdc") {
    DiskSpec d{.name = "new", .path = "/var/lib/edgevirt/new.img", .serial = "NEW-1"};
    auto xml = HotplugDiskXml(d, kLiveXml, "");
    REQUIRE(xml);
    CHECK(*xml ==
          "<disk type='file' device='disk'>\n"
          "  <driver name='qemu' type='raw' cache='none' error_policy='stop' io='native' "
          "discard='unmap'/>\n"
          "  <source file='/var/lib/edgevirt/new.img'/>\n"
          "  <target dev='vdb' bus='virtio'/>\n"
          "  <serial>NEW-1</serial>\n"
          "  <alias name='ua-new'/>\n"
          "</disk>\n");
  }
  SECTION("scsi: sdc (sda is sata, sdb and sdd scsi), unit 1 (0 and 2 are taken)") {
    DiskSpec d{.name = "hp1",
               .source_kind = DiskSourceKind::kBlock,
               .path = "/dev/loop3",
               .bus = DiskBus::kScsi,
               .cache = DiskCache::kWriteback};
    auto xml = HotplugDiskXml(d, kLiveXml, "");
    REQUIRE(xml);
    CHECK(xml->find("<disk type='block' device='disk'>") == 0);
    CHECK(xml->find("<source dev='/dev/loop3'/>") != std::string::npos);
    CHECK(xml->find("<target dev='sdc' bus='scsi'/>") != std::string::npos);
    CHECK(xml->find("<address type='drive' controller='0' bus='0' target='0' unit='1'/>") !=
          std::string::npos);
  }
  SECTION("persisted: a target or unit taken in the inactive definition is not free") {
    // The definition has a disk the live domain does not (attached with persist, then
    // detached live only): vdb and unit 1 are taken there.
    const std::string config = R"(<domain type='qemu'><devices>
        <disk type='file' device='disk'><source file='/x.img'/><target dev='vdb' bus='virtio'/>
          <alias name='ua-old'/></disk>
        <disk type='file' device='disk'><source file='/y.img'/><target dev='sdc' bus='scsi'/>
          <alias name='ua-old2'/><address type='drive' controller='0' bus='0' target='0'
          unit='1'/></disk>
        <controller type='scsi' index='0' model='virtio-scsi'/></devices></domain>)";
    auto xml = HotplugDiskXml(DiskSpec{.name = "new", .path = "/n.img"}, kLiveXml, config);
    REQUIRE(xml);
    CHECK(xml->find("<target dev='vdd' bus='virtio'/>") != std::string::npos);
    xml = HotplugDiskXml(DiskSpec{.name = "new", .path = "/n.img", .bus = DiskBus::kScsi}, kLiveXml,
                         config);
    REQUIRE(xml);
    CHECK(xml->find("<target dev='sde' bus='scsi'/>") != std::string::npos);
    CHECK(xml->find("unit='3'/>") != std::string::npos);
    auto conflict = HotplugDiskXml(DiskSpec{.name = "old", .path = "/o.img"}, kLiveXml, config);
    REQUIRE_FALSE(conflict);
    CHECK(conflict.error().code == Code::kConflict);
    CHECK(conflict.error().message.find("persistent definition") != std::string::npos);
  }
  SECTION("a name already attached is a conflict") {
    auto xml = HotplugDiskXml(DiskSpec{.name = "tools", .path = "/t.img", .bus = DiskBus::kScsi},
                              kLiveXml, "");
    REQUIRE_FALSE(xml);
    CHECK(xml.error().code == Code::kConflict);
    CHECK(xml.error().message == "disk \"tools\" is already attached");
  }
  SECTION("refusals") {
    DiskSpec sata{.name = "s", .path = "/s.img", .bus = DiskBus::kSata};
    CHECK(HotplugDiskXml(sata, kLiveXml, "").error().code == Code::kInvalid);
    DiskSpec relative{.name = "r", .path = "r.img"};
    CHECK(HotplugDiskXml(relative, kLiveXml, "").error().code == Code::kInvalid);
    DiskSpec cdrom_virtio{.name = "c", .path = "/c.iso", .device = DiskDevice::kCdrom};
    CHECK(HotplugDiskXml(cdrom_virtio, kLiveXml, "").error().code == Code::kInvalid);
    DiskSpec scsi{.name = "n", .path = "/n.img", .bus = DiskBus::kScsi};
    // Only a scsi controller with index 1: nothing for unit addresses on controller 0.
    auto refused = HotplugDiskXml(
        scsi, Replace(kLiveXml, "type='scsi' index='0'", "type='scsi' index='1'"), "");
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == Code::kInvalid);
    CHECK(refused.error().message.find("hotplug_scsi_controller") != std::string::npos);
    CHECK(HotplugDiskXml(scsi, "not xml", "").error().code == Code::kInvalid);
  }
}

// A hotplugged disk must look to the guest exactly like the same disk defined at boot: the
// element HotplugDiskXml writes for the n-th disk equals the one DomainXml writes for it.
TEST_CASE("HotplugDiskXml writes the disk as DomainXml does") {
  DomainSpec spec;
  spec.name = "default_same";
  spec.uuid = "6a1a24a1-4061-4607-8bf4-a3963d0c5895";
  spec.accelerator = Accelerator::kTcg;
  spec.memory_bytes = 128 << 20;
  spec.hotplug_scsi_controller = true;
  spec.disks = {
      DiskSpec{.name = "rootdisk", .path = "/r.qcow2", .format = DiskFormat::kQcow2},
      DiskSpec{.name = "a", .path = "/a.img", .bus = DiskBus::kScsi, .serial = "A"},
      DiskSpec{.name = "b", .path = "/b.img", .readonly = true},
  };
  for (const DiskSpec& added :
       {DiskSpec{.name = "c",
       .source_kind = DiskSourceKind::kBlock,
       .path = "/dev/loop0",
       .bus = DiskBus::kScsi,
       .serial = "hp1",
       .cache = DiskCache::kWritethrough,
       .error_policy = DiskErrorPolicy::kReport},
        DiskSpec{.name = "c", .path = "/c.img", .serial = "hp2"},
        DiskSpec{
            .name = "c", .path = "/c.iso", .device = DiskDevice::kCdrom, .bus = DiskBus::kScsi},
        DiskSpec{.name = "c",
        .source_kind = DiskSourceKind::kBlock,
        .path = "/dev/sdx",
        .device = DiskDevice::kLun,
        .bus = DiskBus::kScsi}}) {
    auto before = DomainXml(spec);
    REQUIRE(before);
    DomainSpec with = spec;
    with.disks.push_back(added);
    auto after = DomainXml(with);
    REQUIRE(after);
    auto element = HotplugDiskXml(added, *before, "");
    REQUIRE(element);
    // DomainXml indents <disk> by four spaces (inside <domain><devices>).
    std::string indented;
    size_t start = 0;
    while (start < element->size()) {
      const size_t end = element->find('\n', start);
      indented += "    " + element->substr(start, end - start + 1);
      start = end + 1;
    }
    INFO("hotplug XML:\n" << *element << "domain XML:\n" << *after);
    CHECK(after->find(indented) != std::string::npos);
  }
}

// The <devices> of libvirt 9.0's live XML for DomainXml's pty console with a log (as
// `virsh dumpxml` printed it for a running domain, other devices left out).
constexpr std::string_view kPtyConsoleXml = R"(<domain type='qemu' id='3'>
  <name>default_vm1</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'>
      <source path='/dev/pts/0'/>
      <log file='/var/lib/edgevirt/vms/u1/serial0.log' append='on'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <console type='pty' tty='/dev/pts/0'>
      <source path='/dev/pts/0'/>
      <log file='/var/lib/edgevirt/vms/u1/serial0.log' append='on'/>
      <target type='serial' port='0'/>
      <alias name='serial0'/>
    </console>
  </devices>
</domain>)";

// The same for the unix console an older edgevirtd defined (QEMU binds the socket).
constexpr std::string_view kUnixConsoleXml = R"(<domain type='qemu' id='4'>
  <name>default_vm1</name>
  <devices>
    <serial type='unix'>
      <source mode='bind' path='/var/lib/edgevirt/vms/u1/serial0.sock'/>
      <log file='/var/lib/edgevirt/vms/u1/serial0.log' append='on'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <console type='unix'>
      <source mode='bind' path='/var/lib/edgevirt/vms/u1/serial0.sock'/>
      <log file='/var/lib/edgevirt/vms/u1/serial0.log' append='on'/>
      <target type='serial' port='0'/>
      <alias name='serial0'/>
    </console>
  </devices>
</domain>)";

// Every occurrence (the <serial> and its <console> twin).
std::string ReplaceAll(std::string_view xml, std::string_view what, std::string_view with) {
  std::string s(xml);
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + with.size())) {
    s.replace(at, what.size(), with);
  }
  return s;
}

TEST_CASE("ParseLiveConsole: the console a running domain was started with") {
  auto pty = ParseLiveConsole(kPtyConsoleXml);
  REQUIRE(pty);
  CHECK(pty->kind == ConsoleKind::kPty);
  CHECK(pty->socket_path.empty());
  CHECK(pty->log_path == "/var/lib/edgevirt/vms/u1/serial0.log");

  auto unix_console = ParseLiveConsole(kUnixConsoleXml);
  REQUIRE(unix_console);
  CHECK(unix_console->kind == ConsoleKind::kUnix);
  CHECK(unix_console->socket_path == "/var/lib/edgevirt/vms/u1/serial0.sock");
  CHECK(unix_console->log_path == "/var/lib/edgevirt/vms/u1/serial0.log");

  // Without a <console>, serial port 0 is the console; without either there is none.
  std::string serial_only(kUnixConsoleXml);
  serial_only.erase(serial_only.find("    <console"),
                    serial_only.find("</console>\n") + 11 - serial_only.find("    <console"));
  auto from_serial = ParseLiveConsole(serial_only);
  REQUIRE(from_serial);
  CHECK(from_serial->kind == ConsoleKind::kUnix);
  CHECK(from_serial->socket_path == "/var/lib/edgevirt/vms/u1/serial0.sock");
  auto none = ParseLiveConsole("<domain><devices><emulator>q</emulator></devices></domain>");
  REQUIRE(none);
  CHECK(none->kind == ConsoleKind::kNone);
  CHECK(none->log_path.empty());
  CHECK(ParseLiveConsole("<domain/>")->kind == ConsoleKind::kNone);
  auto no_log = ParseLiveConsole("<domain><devices><console type='pty'/></devices></domain>");
  REQUIRE(no_log);
  CHECK(no_log->kind == ConsoleKind::kPty);
  CHECK(no_log->log_path.empty());

  // What cannot be relayed, and what is not a domain XML.
  auto file = ParseLiveConsole(ReplaceAll(kPtyConsoleXml, "type='pty'", "type='file'"));
  REQUIRE_FALSE(file);
  CHECK(file.error().code == Code::kUnsupported);
  CHECK(file.error().message.find("\"file\"") != std::string::npos);
  auto connect = ParseLiveConsole(ReplaceAll(kUnixConsoleXml, "mode='bind'", "mode='connect'"));
  REQUIRE_FALSE(connect);
  CHECK(connect.error().code == Code::kUnsupported);
  auto no_path = ParseLiveConsole(
      "<domain><devices><console type='unix'><source mode='bind'/></console></devices></domain>");
  REQUIRE_FALSE(no_path);
  CHECK(no_path.error().code == Code::kInvalid);
  CHECK(ParseLiveConsole("<domainsnapshot/>").error().code == Code::kInvalid);
  CHECK(ParseLiveConsole("<domain>").error().code == Code::kInvalid);
}

}  // namespace
}  // namespace edgevirt::vmm
