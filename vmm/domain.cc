// DomainXml: validation of a DomainSpec, then rendering. Element choices follow libvirt's
// domain format (formatdomain) and what KubeVirt's converter generates for the same VMI, so
// that a guest sees the same machine here as on a KubeVirt cluster.
#include "vmm/domain.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "vmm/check.h"
#include "vmm/disk_xml.h"
#include "vmm/nic_xml.h"
#include "vmm/xml_writer.h"

namespace edgevirt::vmm {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;
constexpr size_t kMaxNameLength = 200;
constexpr uint64_t kMaxVcpus = 1024;
// The q35 AHCI controller (and every extra one libvirt adds) has six ports.
constexpr uint32_t kSataPortsPerController = 6;
constexpr std::string_view kGuestAgentChannel = "org.qemu.guest_agent.0";
// KubeVirt's default is 16 root ports in all; 32 spares is well past any hotplug use.
constexpr uint32_t kMaxSparePciePorts = 32;

Status CheckName(const std::string& name) {
  if (name.empty()) return Invalid("name: must not be empty");
  if (name.size() > kMaxNameLength) {
    return Invalid("name: longer than " + std::to_string(kMaxNameLength) + " bytes");
  }
  if (!AllOf(name, "_.-") || name.front() == '.' || name.front() == '-') {
    if (!IsXmlSafe(name)) return Invalid("name: contains a control character or invalid UTF-8");
    return Invalid("name: " + Quote(name) +
                   " must consist of letters, digits, '_', '.' and '-' and not start with '.' "
                   "or '-'");
  }
  return Ok();
}

Status CheckUuid(const std::string& uuid) {
  static constexpr size_t kDashes[] = {8, 13, 18, 23};
  bool ok = uuid.size() == 36;
  for (size_t i = 0; ok && i < uuid.size(); ++i) {
    const char c = uuid[i];
    if (std::find(std::begin(kDashes), std::end(kDashes), i) != std::end(kDashes)) {
      ok = c == '-';
    } else {
      ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    }
  }
  if (ok) return Ok();
  if (!IsXmlSafe(uuid)) return Invalid("uuid: contains a control character or invalid UTF-8");
  return Invalid("uuid: " + Quote(uuid) + " is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
}

// An optional path: empty means absent.
Status CheckOptionalPath(std::string_view field, const std::string& path) {
  return path.empty() ? Ok() : CheckPath(field, path);
}

bool IsQ35(std::string_view machine) {
  return machine.starts_with("q35") || machine.starts_with("pc-q35");
}

Status CheckCpu(const DomainSpec& spec) {
  const CpuSpec& cpu = spec.cpu;
  if (cpu.sockets == 0 || cpu.cores == 0 || cpu.threads == 0) {
    return Invalid("cpu: sockets, cores and threads must each be at least 1");
  }
  const uint64_t vcpus = uint64_t{cpu.sockets} * cpu.cores * cpu.threads;
  if (vcpus > kMaxVcpus) {
    return Invalid("cpu: " + std::to_string(vcpus) + " vCPUs (sockets*cores*threads) exceed " +
                   std::to_string(kMaxVcpus));
  }
  if (cpu.mode == CpuMode::kNamed) {
    if (!AllOf(cpu.model, "_.-")) {
      if (!IsXmlSafe(cpu.model)) {
        return Invalid("cpu.model: contains a control character or invalid UTF-8");
      }
      return Invalid("cpu.model: " + Quote(cpu.model) +
                     " must be a non-empty CPU model name of letters, digits, '_', '.' and '-'");
    }
  } else if (!cpu.model.empty()) {
    return Invalid("cpu.model: a model name is only allowed with CpuMode::kNamed");
  }
  if (cpu.mode == CpuMode::kHostPassthrough && spec.accelerator == Accelerator::kTcg) {
    return Invalid("cpu: host-passthrough needs KVM; it is not available with the TCG accelerator");
  }
  return Ok();
}

Status CheckFirmware(const DomainSpec& spec) {
  const FirmwareSpec& fw = spec.firmware;
  if (fw.kind == FirmwareKind::kBios) {
    if (fw.secure_boot) return Invalid("firmware: secure boot requires EFI firmware");
    if (!fw.loader.empty() || !fw.nvram.empty() || !fw.nvram_template.empty()) {
      return Invalid("firmware: loader, nvram and nvram_template are only allowed with EFI");
    }
    return Ok();
  }
  if (fw.secure_boot && !IsQ35(spec.machine_type)) {
    return Invalid("firmware: secure boot requires a q35 machine type, not " +
                   Quote(spec.machine_type));
  }
  RETURN_IF_ERROR(CheckPath("firmware.loader", fw.loader));
  RETURN_IF_ERROR(CheckPath("firmware.nvram", fw.nvram));
  RETURN_IF_ERROR(CheckOptionalPath("firmware.nvram_template", fw.nvram_template));
  return Ok();
}

Status CheckDisks(const std::vector<DiskSpec>& disks) {
  std::set<std::string> names;
  for (const DiskSpec& d : disks) {
    RETURN_IF_ERROR(CheckDisk(d));
    if (!names.insert(d.name).second) {
      return Invalid("disk " + Quote(d.name) + ": duplicate disk name");
    }
  }
  return Ok();
}

std::string PciText(const PciAddress& a) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04x:%02x:%02x.%x", a.domain, a.bus, a.slot, a.function);
  return buf;
}

Status CheckNics(const DomainSpec& spec) {
  std::set<std::string> names, macs, targets, pcis;
  std::set<std::string> disk_names;
  for (const DiskSpec& d : spec.disks) disk_names.insert(d.name);
  for (const NicSpec& n : spec.nics) {
    RETURN_IF_ERROR(CheckNic(n));
    const std::string field = "nic " + Quote(n.name);
    if (!names.insert(n.name).second) return Invalid(field + ": duplicate NIC name");
    // Disks and NICs share libvirt's alias namespace (ua-<name>); libvirt refuses duplicates.
    if (disk_names.count(n.name)) {
      return Invalid(field + ": a disk has the same name (both would get the alias " +
                     Quote("ua-" + n.name) + ")");
    }
    if (!macs.insert(CanonicalMac(n.mac)).second) {
      return Invalid(field + ": MAC address " + Quote(n.mac) + " is used by another NIC");
    }
    if (!n.target_dev.empty() && !targets.insert(n.target_dev).second) {
      return Invalid(field + ": target_dev " + Quote(n.target_dev) + " is used by another NIC");
    }
    if (n.pci && !pcis.insert(PciText(*n.pci)).second) {
      return Invalid(field + ": PCI address " + PciText(*n.pci) + " is used by another NIC");
    }
  }
  return Ok();
}

// Boot orders are per device and unique across the domain's disks and NICs.
Status CheckBootOrders(const DomainSpec& spec) {
  std::map<uint32_t, std::string> used;
  auto take = [&](uint32_t order, std::string device) -> Status {
    if (order == 0) return Ok();
    auto [it, inserted] = used.emplace(order, device);
    if (!inserted) {
      return Invalid(device + ": boot order " + std::to_string(order) + " is already used by " +
                     it->second);
    }
    return Ok();
  };
  for (const DiskSpec& d : spec.disks) RETURN_IF_ERROR(take(d.boot_order, "disk " + Quote(d.name)));
  for (const NicSpec& n : spec.nics) RETURN_IF_ERROR(take(n.boot_order, "nic " + Quote(n.name)));
  return Ok();
}

Status CheckConsole(const ConsoleSpec& console) {
  if (console.kind == ConsoleKind::kUnix) {
    RETURN_IF_ERROR(CheckPath("console.socket_path", console.socket_path));
  } else if (!console.socket_path.empty()) {
    return Invalid("console.socket_path: only allowed with ConsoleKind::kUnix");
  }
  if (console.kind == ConsoleKind::kNone && !console.log_path.empty()) {
    return Invalid("console.log_path: there is no console to log (ConsoleKind::kNone)");
  }
  return CheckOptionalPath("console.log_path", console.log_path);
}

// The SMBIOS system strings of `s`, with libvirt's entry names.
std::vector<std::pair<std::string_view, const std::string&>> SmbiosEntries(const SmbiosSystem& s) {
  return {{"manufacturer", s.manufacturer},
          {"product", s.product},
          {"version", s.version},
          {"sku", s.sku},
          {"family", s.family}};
}

Status Validate(const DomainSpec& spec) {
  RETURN_IF_ERROR(CheckName(spec.name));
  RETURN_IF_ERROR(CheckUuid(spec.uuid));
  if (!IsXmlSafe(spec.firmware_serial)) {
    return Invalid("firmware_serial: contains a control character or invalid UTF-8");
  }
  for (const auto& [field, value] : SmbiosEntries(spec.smbios)) {
    if (!IsXmlSafe(value)) {
      return Invalid("smbios." + std::string(field) +
                     ": contains a control character or invalid UTF-8");
    }
  }
  if (!AllOf(spec.machine_type, "_.-")) {
    if (!IsXmlSafe(spec.machine_type)) {
      return Invalid("machine_type: contains a control character or invalid UTF-8");
    }
    return Invalid("machine_type: " + Quote(spec.machine_type) +
                   " must be a non-empty machine type of letters, digits, '_', '.' and '-'");
  }
  RETURN_IF_ERROR(CheckCpu(spec));
  if (spec.memory_bytes == 0) return Invalid("memory: must be greater than 0");
  if (spec.memory_bytes % kMiB != 0) {
    return Invalid("memory: " + std::to_string(spec.memory_bytes) +
                   " bytes is not a multiple of 1 MiB");
  }
  RETURN_IF_ERROR(CheckFirmware(spec));
  RETURN_IF_ERROR(CheckDisks(spec.disks));
  RETURN_IF_ERROR(CheckNics(spec));
  RETURN_IF_ERROR(CheckBootOrders(spec));
  if (spec.spare_pcie_ports > 0 && !IsQ35(spec.machine_type)) {
    return Invalid("spare_pcie_ports: PCIe root ports need a q35 machine type, not " +
                   Quote(spec.machine_type));
  }
  if (spec.spare_pcie_ports > kMaxSparePciePorts) {
    return Invalid("spare_pcie_ports: " + std::to_string(spec.spare_pcie_ports) + " exceeds " +
                   std::to_string(kMaxSparePciePorts));
  }
  RETURN_IF_ERROR(CheckConsole(spec.console));
  RETURN_IF_ERROR(CheckOptionalPath("vnc_socket_path", spec.vnc_socket_path));
  RETURN_IF_ERROR(CheckOptionalPath("guest_agent_socket_path", spec.guest_agent_socket_path));
  return Ok();
}

void WriteSysinfo(XmlWriter& w, const DomainSpec& spec) {
  // Like KubeVirt: the firmware UUID and serial reach the guest as SMBIOS type 1 fields,
  // enabled by <smbios mode='sysinfo'/> in <os>.
  w.Start("sysinfo", {{"type", "smbios"}});
  w.Start("system");
  w.Text("entry", spec.uuid, {{"name", "uuid"}});
  const SmbiosSystem& s = spec.smbios;
  // libvirt's own order of the type 1 fields.
  const std::pair<std::string_view, const std::string&> entries[] = {
      {"manufacturer", s.manufacturer}, {"product", s.product}, {"version", s.version},
      {"serial", spec.firmware_serial}, {"sku", s.sku},         {"family", s.family}};
  for (const auto& [name, value] : entries) {
    if (!value.empty()) w.Text("entry", value, {{"name", name}});
  }
  w.End();
  w.End();
}

void WriteOs(XmlWriter& w, const DomainSpec& spec) {
  w.Start("os");
  w.Text("type", "hvm", {{"arch", "x86_64"}, {"machine", spec.machine_type}});
  const FirmwareSpec& fw = spec.firmware;
  if (fw.kind == FirmwareKind::kEfi) {
    w.Text("loader", fw.loader,
           {{"readonly", "yes"}, {"secure", fw.secure_boot ? "yes" : "no"}, {"type", "pflash"}});
    if (fw.nvram_template.empty()) {
      w.Text("nvram", fw.nvram);
    } else {
      w.Text("nvram", fw.nvram, {{"template", fw.nvram_template}});
    }
  }
  // Boot order is per device (<boot order=N/>); libvirt refuses <boot dev=...> alongside it.
  w.Empty("smbios", {{"mode", "sysinfo"}});
  w.End();
}

void WriteFeatures(XmlWriter& w, const DomainSpec& spec) {
  w.Start("features");
  w.Empty("acpi");  // ACPI power button: graceful shutdown
  w.Empty("apic");
  if (spec.firmware.secure_boot) {
    // OVMF's secure-boot build relies on SMM to protect its variable store; libvirt refuses
    // secure='yes' without it.
    w.Empty("smm", {{"state", "on"}});
  }
  w.End();
}

void WriteCpu(XmlWriter& w, const CpuSpec& cpu) {
  const std::string sockets = std::to_string(cpu.sockets);
  const std::string cores = std::to_string(cpu.cores);
  const std::string threads = std::to_string(cpu.threads);
  switch (cpu.mode) {
    case CpuMode::kNone:
      w.Start("cpu");
      break;
    case CpuMode::kHostModel:
      w.Start("cpu", {{"mode", "host-model"}});
      break;
    case CpuMode::kHostPassthrough:
      w.Start("cpu", {{"mode", "host-passthrough"}});
      break;
    case CpuMode::kNamed:
      w.Start("cpu", {{"mode", "custom"}, {"match", "exact"}});
      // forbid: fail to start rather than silently run a different CPU model.
      w.Text("model", cpu.model, {{"fallback", "forbid"}});
      break;
  }
  w.Empty("topology", {{"sockets", sockets}, {"cores", cores}, {"threads", threads}});
  w.End();
}

bool HasScsiController(const DomainSpec& spec) {
  return spec.hotplug_scsi_controller ||
         std::any_of(spec.disks.begin(), spec.disks.end(),
                     [](const DiskSpec& d) { return d.bus == DiskBus::kScsi; });
}

void WriteDisks(XmlWriter& w, const DomainSpec& spec) {
  // Target names: one vd* sequence for virtio, one sd* sequence shared by sata and scsi (their
  // names live in one namespace in libvirt). Drive addresses are explicit so that sata and
  // scsi disks fill their own controllers densely instead of following the shared sd* index
  // (libvirt derives an address from the name, which would skip units and, past unit 6, add
  // SCSI controllers of a default model).
  size_t vd = 0;
  size_t sd = 0;
  uint32_t sata_unit = 0;
  uint32_t scsi_unit = 0;
  for (const DiskSpec& d : spec.disks) {
    DiskPlacement placement;
    placement.target =
        DiskTargetName(DiskTargetPrefix(d.bus), d.bus == DiskBus::kVirtio ? vd++ : sd++);
    if (d.bus == DiskBus::kSata) {
      const uint32_t n = sata_unit++;
      placement.drive =
          DiskPlacement::Drive{n / kSataPortsPerController, n % kSataPortsPerController};
    } else if (d.bus == DiskBus::kScsi) {
      placement.drive = DiskPlacement::Drive{0, scsi_unit++};
    }
    WriteDisk(w, d, placement);
  }
  if (HasScsiController(spec)) {
    w.Empty("controller", {{"type", "scsi"}, {"index", "0"}, {"model", "virtio-scsi"}});
  }
}

bool NeedsPciBridge(const DomainSpec& spec) {
  return std::any_of(spec.nics.begin(), spec.nics.end(),
                     [](const NicSpec& n) { return !NicTakesRootPort(n.model); });
}

// The pcie-root-ports libvirt fills with the spec's own devices when it assigns PCI addresses.
// On q35 each PCIe device gets a root port of its own, and libvirt puts devices into the empty
// ports the XML lists before it adds any (libvirt 9.0, checked with virsh define + dumpxml).
uint32_t RootPortsTakenByDevices(const DomainSpec& spec) {
  uint32_t n = 0;
  for (const DiskSpec& d : spec.disks) {
    if (d.bus == DiskBus::kVirtio) ++n;  // virtio-blk-pci
  }
  if (HasScsiController(spec)) ++n;  // virtio-scsi-pci
  for (const NicSpec& nic : spec.nics) {
    if (NicTakesRootPort(nic.model)) ++n;  // virtio-net-pci, e1000e, ne2k_pci, pcnet
  }
  // libvirt puts the conventional PCI NICs (e1000, rtl8139) behind one pcie-to-pci-bridge,
  // which takes a root port itself.
  if (NeedsPciBridge(spec)) ++n;
  if (!spec.guest_agent_socket_path.empty()) ++n;  // virtio-serial-pci carrying the channel
  ++n;  // the USB controller libvirt adds by default (qemu-xhci)
  // Not on a root port: the AHCI controller of the sata disks (built into the root complex at
  // 00:1f.2), the VGA device (libvirt puts the primary video on pcie-root itself), tpm-crb and
  // the isa-serial console (not PCI). A NIC with an explicit PCI address is counted although it
  // may sit elsewhere: counting one too many only leaves one more spare.
  return n;
}

void WritePciControllers(XmlWriter& w, const DomainSpec& spec) {
  if (spec.spare_pcie_ports == 0) return;
  // pcie-root must be listed (with index 0) once any pci controller is: libvirt gives an
  // unindexed controller the lowest free index, and refuses a root port at index 0.
  w.Empty("controller", {{"type", "pci"}, {"index", "0"}, {"model", "pcie-root"}});
  const uint32_t ports = RootPortsTakenByDevices(spec) + spec.spare_pcie_ports;
  for (uint32_t i = 1; i <= ports; ++i) {
    w.Empty("controller",
            {{"type", "pci"}, {"index", std::to_string(i)}, {"model", "pcie-root-port"}});
  }
  // The bridge for conventional PCI NICs is written too: when libvirt has to add a controller
  // itself, it also adds one more empty root port (libvirt 9.0, checked with define + dumpxml),
  // and the domain would get one spare more than asked.
  if (NeedsPciBridge(spec)) {
    w.Empty(
        "controller",
        {{"type", "pci"}, {"index", std::to_string(ports + 1)}, {"model", "pcie-to-pci-bridge"}});
  }
}

void WriteConsole(XmlWriter& w, const ConsoleSpec& console) {
  if (console.kind == ConsoleKind::kNone) return;
  const bool unix_socket = console.kind == ConsoleKind::kUnix;
  const std::string_view type = unix_socket ? "unix" : "pty";
  w.Start("serial", {{"type", type}});
  if (unix_socket) w.Empty("source", {{"mode", "bind"}, {"path", console.socket_path}});
  if (!console.log_path.empty()) {
    w.Empty("log", {{"file", console.log_path}, {"append", "on"}});
  }
  w.Start("target", {{"type", "isa-serial"}, {"port", "0"}});
  w.Empty("model", {{"name", "isa-serial"}});
  w.End();
  w.End();
  // The console is the same character device as serial port 0 (libvirt's rule for a
  // console with a serial target: same type and source).
  w.Start("console", {{"type", type}});
  if (unix_socket) w.Empty("source", {{"mode", "bind"}, {"path", console.socket_path}});
  w.Empty("target", {{"type", "serial"}, {"port", "0"}});
  w.End();
}

void WriteGuestAgent(XmlWriter& w, const std::string& socket_path) {
  if (socket_path.empty()) return;
  w.Start("channel", {{"type", "unix"}});
  w.Empty("source", {{"mode", "bind"}, {"path", socket_path}});
  w.Empty("target", {{"type", "virtio"}, {"name", kGuestAgentChannel}});
  w.End();
}

void WriteVnc(XmlWriter& w, const std::string& socket_path) {
  if (socket_path.empty()) return;
  w.Start("graphics", {{"type", "vnc"}});
  w.Empty("listen", {{"type", "socket"}, {"socket", socket_path}});
  w.End();
  w.Start("video");
  w.Empty("model", {{"type", "vga"}, {"vram", "16384"}, {"heads", "1"}, {"primary", "yes"}});
  w.End();
}

void WriteTpm(XmlWriter& w, const std::optional<TpmSpec>& tpm) {
  if (!tpm) return;
  w.Start("tpm", {{"model", "tpm-crb"}});
  if (tpm->persistent) {
    w.Empty("backend", {{"type", "emulator"}, {"version", "2.0"}, {"persistent_state", "yes"}});
  } else {
    w.Empty("backend", {{"type", "emulator"}, {"version", "2.0"}});
  }
  w.End();
}

}  // namespace

std::string DiskTargetName(std::string_view prefix, size_t index) {
  std::string suffix;
  size_t n = index + 1;  // bijective base 26: a..z, aa..az, ba, ...
  while (n > 0) {
    --n;
    suffix.insert(suffix.begin(), static_cast<char>('a' + n % 26));
    n /= 26;
  }
  return std::string(prefix) + suffix;
}

Result<std::string> DomainXml(const DomainSpec& spec) {
  RETURN_IF_ERROR(Validate(spec));
  const uint64_t vcpus = uint64_t{spec.cpu.sockets} * spec.cpu.cores * spec.cpu.threads;

  XmlWriter w;
  w.Start("domain", {{"type", spec.accelerator == Accelerator::kKvm ? "kvm" : "qemu"}});
  w.Text("name", spec.name);
  w.Text("uuid", spec.uuid);
  w.Text("memory", std::to_string(spec.memory_bytes / 1024), {{"unit", "KiB"}});
  w.Text("vcpu", std::to_string(vcpus), {{"placement", "static"}});
  WriteSysinfo(w, spec);
  WriteOs(w, spec);
  WriteFeatures(w, spec);
  WriteCpu(w, spec.cpu);
  w.Empty("clock", {{"offset", "utc"}});
  w.Text("on_poweroff", "destroy");
  w.Text("on_reboot", "restart");
  w.Text("on_crash", "destroy");
  w.Start("devices");
  WriteDisks(w, spec);
  WritePciControllers(w, spec);
  for (const NicSpec& nic : spec.nics) WriteNic(w, nic);
  WriteConsole(w, spec.console);
  WriteGuestAgent(w, spec.guest_agent_socket_path);
  WriteVnc(w, spec.vnc_socket_path);
  WriteTpm(w, spec.tpm);
  // No balloon: edgevirt does not resize guest memory, and without this element libvirt would
  // add a virtio balloon device implicitly.
  w.Empty("memballoon", {{"model", "none"}});
  w.End();
  w.End();
  return w.Finish();
}

}  // namespace edgevirt::vmm
