// Domain XML: turns a plain vmm::DomainSpec into the libvirt domain XML that defines the VM.
// Pure: no libvirt connection, no file system, no process. The daemon maps a KubeVirt
// VirtualMachineInstance onto a DomainSpec (choosing names, paths and the accelerator); this
// module validates the spec and renders it. Part of the public header vmm/vmm.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace edgevirt::vmm {

enum class Accelerator {
  kKvm,  // libvirt domain type 'kvm'
  kTcg,  // libvirt domain type 'qemu' (software emulation; no /dev/kvm needed)
};

enum class CpuMode {
  kNone,             // no CPU model element: QEMU's default model (the choice for TCG)
  kHostModel,        // libvirt 'host-model'
  kHostPassthrough,  // libvirt 'host-passthrough' (KVM only)
  kNamed,            // libvirt 'custom' with CpuSpec::model, e.g. "Skylake-Client-IBRS"
};

struct CpuSpec {
  CpuMode mode = CpuMode::kNone;
  std::string model;  // only for kNamed: [A-Za-z0-9_.-]+
  // Topology; vCPUs = sockets * cores * threads, each >= 1.
  uint32_t sockets = 1;
  uint32_t cores = 1;
  uint32_t threads = 1;
};

enum class FirmwareKind {
  kBios,  // SeaBIOS, libvirt's default loader
  kEfi,   // OVMF, as a read-only pflash loader plus a per-VM writable NVRAM file
};

struct FirmwareSpec {
  FirmwareKind kind = FirmwareKind::kBios;
  // EFI only. Requires a q35 machine; adds <smm state='on'/> (OVMF's secure-boot build
  // refuses to run without SMM, and libvirt requires it with secure='yes').
  bool secure_boot = false;
  // EFI only, absolute paths. `loader` is the OVMF code image (a secure-boot build when
  // secure_boot). `nvram` is this VM's variable store; libvirt creates it from
  // `nvram_template` (an OVMF_VARS image) when it does not exist yet. `nvram_template` may be
  // empty when the caller creates `nvram` itself.
  std::string loader;
  std::string nvram;
  std::string nvram_template;
};

enum class DiskSourceKind {
  kFile,   // a regular file (<disk type='file'>, <source file=...>)
  kBlock,  // a block device node (<disk type='block'>, <source dev=...>)
};

enum class DiskFormat { kRaw, kQcow2 };

enum class DiskDevice {
  kDisk,
  kCdrom,  // always read-only; bus sata or scsi (QEMU has no virtio CD-ROM)
  kLun,    // SCSI passthrough of a block device: bus scsi, source kBlock, format raw
};

enum class DiskBus {
  kVirtio,  // target names vda, vdb, ...
  kSata,    // target names sda, sdb, ... (shared sequence with kScsi)
  kScsi,    // on one virtio-scsi controller; target names sda, sdb, ...
};

enum class DiskCache {
  kNone,          // O_DIRECT, io='native' (KubeVirt's default when the file allows it)
  kWritethrough,  // io='threads'
  kWriteback,     // io='threads'
};

// What QEMU does when a read or write of the disk fails (libvirt error_policy).
enum class DiskErrorPolicy {
  kStop,      // pause the VM (an I/O-error pause the caller observes); KubeVirt's default
  kReport,    // report the error to the guest
  kIgnore,    // ignore it
  kEnospace,  // pause on ENOSPC only, report other errors
};

struct DiskSpec {
  // Logical name, unique among the disks, [A-Za-z0-9_-]+ (e.g. the KubeVirt volume name).
  // Becomes the libvirt user alias "ua-<name>", which identifies the disk in libvirt events
  // and later hotplug calls.
  std::string name;
  DiskSourceKind source_kind = DiskSourceKind::kFile;
  std::string path;  // absolute
  DiskFormat format = DiskFormat::kRaw;
  DiskDevice device = DiskDevice::kDisk;
  DiskBus bus = DiskBus::kVirtio;
  // 0: not bootable. Otherwise unique among all boot orders of the domain (>= 1).
  uint32_t boot_order = 0;
  bool readonly = false;  // not for a kDisk on kSata (QEMU's ide-hd cannot be read-only)
  // Optional serial shown to the guest, [A-Za-z0-9_.+- ]+ (libvirt's rule), at most 20
  // bytes (virtio-blk's limit; QEMU truncates longer ones silently).
  std::string serial;
  DiskCache cache = DiskCache::kNone;
  DiskErrorPolicy error_policy = DiskErrorPolicy::kStop;
};

enum class ConsoleKind {
  kNone,
  kPty,   // libvirt allocates a pty (virsh console, libvirt console streams)
  kUnix,  // QEMU listens on ConsoleSpec::socket_path (mode='bind')
};

struct ConsoleSpec {
  ConsoleKind kind = ConsoleKind::kNone;
  std::string socket_path;  // kUnix only, absolute
  // Optional absolute path of a file that receives everything the guest writes to its serial
  // port (appended), whether or not anyone is attached.
  std::string log_path;
};

struct TpmSpec {
  // swtpm (libvirt 'emulator' backend), TPM 2.0, tpm-crb. `persistent` keeps the TPM state
  // (libvirt's swtpm state directory for this domain's UUID) when the domain is undefined and
  // defined again, as KubeVirt's persistent vTPM does.
  bool persistent = true;
};

struct SmbiosSystem {
  std::string manufacturer;
  std::string product;
  std::string version;
  std::string sku;
  std::string family;
};

// A PCI address as KubeVirt's interfaces[].pciAddress writes it: DDDD:BB:SS.F (hex).
struct PciAddress {
  uint32_t domain = 0;    // 0..0xffff
  uint32_t bus = 0;       // 0..0xff
  uint32_t slot = 0;      // 0..0x1f
  uint32_t function = 0;  // 0..7
  bool operator==(const PciAddress&) const = default;
};

// Parses "0000:81:01.0" (KubeVirt's ^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$, and
// a slot of at most 0x1f). kInvalid naming the text otherwise.
Result<PciAddress> ParsePciAddress(std::string_view text);

// True when `name` is a name the kernel accepts for a network device (dev_valid_name): 1..15
// bytes, not "." or "..", no '/', ':' or whitespace. edgevirt also asks for printable ASCII,
// so that the name can stand in XML and in messages unchanged.
bool IsNetdevName(std::string_view name);

enum class NicKind {
  // A tap on a host bridge; libvirt creates the tap and deletes it when the domain stops
  // (<interface type='bridge'>).
  kBridge,
  // An existing macvtap device (`target_dev`) that the caller (net/) made on a host NIC, with
  // the guest's MAC, and deletes; libvirt only opens it (<interface type='ethernet'> with
  // <target managed='no'>). Not libvirt's own macvtap (<interface type='direct'>): libvirt
  // 9.0's embedded QEMU driver never starts its netlink event service, and deleting a macvtap
  // it made, when the domain stops (destroy or guest power-off), dereferences that service's
  // NULL mutex and crashes the embedding process (virNetlinkEventRemoveClient; seen in
  // edgevirt's own test, vmm_nic_start_test).
  kDirect,
};

// One guest NIC. The caller (the daemon, from net/'s decisions) chooses the bridge or macvtap,
// the tap name and the MAC address; this module validates and renders them.
struct NicSpec {
  // The KubeVirt interface name, [A-Za-z0-9_-]+, unique among the NICs; becomes the user alias
  // "ua-<name>", which must not collide with a disk's alias either.
  std::string name;
  NicKind kind = NicKind::kBridge;
  // kBridge: the host bridge's name (IsNetdevName). kDirect: empty (the macvtap's parent is
  // net/'s business; libvirt never sees it).
  std::string source;
  // kBridge: the name of the tap libvirt creates; empty: libvirt chooses one (vnetN).
  // kDirect: the existing macvtap device, required. IsNetdevName, unique among the NICs, and
  // not starting with "vnet", "macvtap" or "macvlan": libvirt replaces names with the prefixes
  // of the names it generates by its own.
  std::string target_dev;
  // The guest's MAC address, "aa:bb:cc:dd:ee:ff" (hex, either case; written lower-case),
  // unicast, unique among the NICs. Required: libvirt would otherwise invent a new one at each
  // define, and DHCP leases are keyed by it.
  std::string mac;
  // KubeVirt's models: e1000, e1000e, ne2k_pci, pcnet, rtl8139, virtio.
  std::string model = "virtio";
  // Where the NIC sits on the guest's PCI bus; none: libvirt assigns one.
  std::optional<PciAddress> pci;
  // 0: not bootable (and no option ROM, as KubeVirt does: <rom enabled='no'/>, so the firmware
  // does not try to PXE-boot from it). Otherwise unique among the disks' and NICs' orders.
  uint32_t boot_order = 0;
  // The MTU the tap gets and the guest is told (virtio-net's host_mtu); 0: the bridge's.
  // 68..65535; kBridge with model virtio only (a macvtap's MTU is set where it is made, and
  // only virtio-net can tell the guest). A Linux bridge without an MTU of its own follows its
  // smallest port, so an MTU below the bridge's lowers the whole bridge and every tap libvirt
  // adds later (checked in vmm_nic_start_test): give the bridge and its NICs the same MTU.
  uint32_t mtu = 0;
};

// Everything a domain definition needs, as plain values. Paths are host paths chosen by the
// caller; this module never creates or checks them.
struct DomainSpec {
  // libvirt domain name: 1..200 bytes of [A-Za-z0-9_.-], not starting with '.' or '-'
  // (the daemon uses "<namespace>_<name>", as KubeVirt does).
  std::string name;
  // Domain UUID, canonical lower- or upper-case 8-4-4-4-12 hex. It is also the SMBIOS system
  // UUID the guest reads: libvirt refuses a <sysinfo> UUID that differs from the domain's, so
  // the caller passes the KubeVirt firmware UUID (spec.domain.firmware.uuid) here, as KubeVirt
  // does.
  std::string uuid;
  // SMBIOS system serial number (KubeVirt's spec.domain.firmware.serial); empty: none.
  std::string firmware_serial;
  // Further SMBIOS type 1 (system) strings; each empty one is left out. KubeVirt fills them
  // from its cluster config (by default manufacturer and family "KubeVirt", product "None"),
  // and guests may look at them to know where they run.
  SmbiosSystem smbios;
  // QEMU machine type, [A-Za-z0-9_.-]+.
  std::string machine_type = "q35";
  Accelerator accelerator = Accelerator::kKvm;
  CpuSpec cpu;
  // Guest memory in bytes: > 0 and a multiple of 1 MiB (so that libvirt never rounds it).
  uint64_t memory_bytes = 0;
  FirmwareSpec firmware;
  // Target names (vda.., sda..) are assigned in this order, per bus family.
  std::vector<DiskSpec> disks;
  ConsoleSpec console;
  // Absolute path of the unix socket QEMU's VNC server listens on; empty: no VNC, no video.
  std::string vnc_socket_path;
  // Absolute path of the unix socket of the qemu-guest-agent virtio-serial channel
  // (org.qemu.guest_agent.0); empty: no channel.
  std::string guest_agent_socket_path;
  std::optional<TpmSpec> tpm;
  // Always give the domain the virtio-scsi controller (index 0), even without a scsi disk, so
  // that scsi disks can be hotplugged later (Hypervisor::AttachDisk refuses a scsi disk without
  // it). KubeVirt adds this controller to every VMI for the same reason: `virtctl addvolume`
  // (v1.0) always asks for bus scsi. Adding a scsi disk needs no PCI slot: it becomes a unit on
  // this controller, and the guest's virtio-scsi driver sees it at once.
  bool hotplug_scsi_controller = false;
  // Empty PCIe root ports to keep free for hotplugging virtio disks (q35 only, at most 32).
  // On q35 every PCIe device (virtio-blk, virtio-scsi, virtio-serial, virtio-net and e1000e
  // NICs, the USB controller) sits behind its own pcie-root-port (conventional PCI NICs share
  // one pcie-to-pci-bridge, itself in a root port), and root ports cannot be hotplugged
  // themselves: libvirt adds them only when it assigns addresses at define time, and then fills
  // every empty port the XML lists with the domain's own devices before adding ports of its
  // own (checked with libvirt 9.0; libvirt's docs say so too). So DomainXml writes pcie-root plus
  // as many root ports as the spec's devices will take *and* these spares, as KubeVirt reserves
  // ports for hotplug. 0: no explicit ports; libvirt then adds what the devices need plus (on a
  // fresh define) one free port.
  uint32_t spare_pcie_ports = 0;
  // Network interfaces, in guest order (the guest enumerates them in PCI address order, which
  // libvirt assigns in this order unless `pci` is given). Each becomes one <interface> with the
  // user alias "ua-<name>"; see NicSpec.
  std::vector<NicSpec> nics;
};

// Renders `spec` as libvirt domain XML (type 'kvm' or, for kTcg, 'qemu'). Deterministic: the
// same spec gives the same bytes. Every string is XML-escaped; strings that XML 1.0 cannot
// carry (control characters, invalid UTF-8) are rejected.
// Errors (all kInvalid, the message names the field): an invalid name/uuid/machine/path/serial,
// a non-absolute path, zero vCPUs or memory, duplicate disk or NIC names, aliases, boot orders,
// MACs or tap names, an invalid NIC (see NicSpec), and
// unsupported combinations (secure boot without EFI or on a non-q35 machine, EFI without
// loader/nvram, host-passthrough under TCG, cdrom on virtio, a read-only sata disk, lun not on
// scsi / not a block device / not raw, a console socket without kUnix, ...).
Result<std::string> DomainXml(const DomainSpec& spec);

// The libvirt target device name of the index-th disk (0-based) with `prefix` ("vd", "sd"):
// vda..vdz, vdaa..vdaz, vdba, ... (the kernel's naming scheme).
std::string DiskTargetName(std::string_view prefix, size_t index);

}  // namespace edgevirt::vmm
