// From a stored, admitted KubeVirt VirtualMachineInstance to what the hypervisor needs: a
// vmm::DomainSpec plus the per-VMI files (cloud-init ISOs, emptyDisk images, created host
// disks) that must exist before the domain starts. Three steps, kept apart so that the mapping
// is a pure, testable function:
//   PlanVmi          pure: JSON (+ Secret lookups) -> VmiPlan; no file system, no process
//   PrepareVmiFiles  creates the per-VMI directory and every task's file; idempotent
//   RemoveVmiFiles   deletes the per-VMI directory; not-found is success
// The mapping follows KubeVirt v1.0's virt-launcher converter (pkg/virt-launcher/virtwrap/
// converter) and cloud-init package (pkg/cloud-init); differences are documented in
// daemon/README.md ("VMI mapping").
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "vmm/domain.h"

namespace edgevirt::daemon {

using Json = nlohmann::json;

// OVMF images; each empty when not installed.
struct FirmwarePaths {
  std::string ovmf_code;         // OVMF code without secure boot
  std::string ovmf_vars;         // its variable store template
  std::string ovmf_code_secure;  // secure-boot (SMM) build of the code
  std::string ovmf_vars_secure;  // variable store with Microsoft's keys enrolled
};

// Looks for OVMF in the distributions' places: Debian 12 /usr/share/OVMF/OVMF_*_4M*.fd,
// AlmaLinux 9 /usr/share/edk2/ovmf/OVMF_*.fd. Missing images stay empty (EFI VMIs then fail
// to plan with kUnavailable naming the missing image). Never fails; reads only file metadata.
FirmwarePaths FindFirmware();

// Site facts the mapping needs. Plain values: the daemon fills them from its config and probes.
struct VmiHostOptions {
  // <stateDir>/vms; each VMI's files live in <vms_dir>/<metadata.uid>/. Absolute.
  std::string vms_dir;
  vmm::Accelerator accelerator = vmm::Accelerator::kTcg;
  // hostDisk paths must resolve (after symlinks) under one of these absolute directories.
  // Empty: every hostDisk volume is refused.
  std::vector<std::string> host_disk_dirs;
  FirmwarePaths firmware;
  // The group QEMU runs as (vmm's private qemu.conf: "kvm", else "nogroup"). The per-VMI
  // directory is group-owned by it so that QEMU (user nobody) can reach its files. Empty: the
  // group is left as created (tests that do not run as root).
  std::string qemu_group = "kvm";
  // Whether vms_dir's file system supports O_DIRECT (tmpfs does not). KubeVirt's default cache
  // mode is "none" where O_DIRECT works and "writethrough" elsewhere; an explicit
  // `cache: none` on a file system without it is refused, as KubeVirt does.
  bool direct_io = true;
};

enum class VolumeTaskKind {
  kCloudInitNoCloud,      // ISO 9660 (Joliet, Rock Ridge), label "cidata"
  kCloudInitConfigDrive,  // ISO 9660 (Joliet, Rock Ridge), label "config-2"
  kEmptyDisk,             // sparse qcow2 of capacity_bytes (qemu-img create)
  kHostDiskCreate,        // sparse raw file of capacity_bytes, 0640, only if missing
  kEphemeralOverlay,      // qcow2 overlay over a read-only backing (ephemeral volumes)
};

// One file PrepareVmiFiles makes.
struct VolumeTask {
  VolumeTaskKind kind = VolumeTaskKind::kEmptyDisk;
  std::string volume;  // the KubeVirt volume name
  std::string path;    // absolute
  // Cloud-init only: the files of the seed. network_data empty: no network file.
  std::string user_data;
  std::string network_data;
  std::string meta_data;        // NoCloud meta-data / ConfigDrive meta_data.json (JSON text)
  uint64_t capacity_bytes = 0;  // kEmptyDisk, kHostDiskCreate
  // kEphemeralOverlay: the backing image (a claim's file or block device) and its format.
  std::string backing;
  vmm::DiskFormat backing_format = vmm::DiskFormat::kRaw;
};

// Access a VMI's QEMU needs to a host block device (a block-backed claim), which the VM's
// device filter must grant. `write` false: read only (an ephemeral volume's backing, a
// read-only disk).
struct DeviceGrant {
  std::string volume;  // the KubeVirt volume name: the owner of the grant
  std::string path;    // the device node
  bool write = true;
  bool operator==(const DeviceGrant&) const = default;
};

// A provisioned PersistentVolumeClaim as the mapping needs it.
struct ClaimSource {
  std::string path;    // the image file or the block device
  bool block = false;  // a block device node (else a regular file)
  bool qcow2 = false;  // file format qcow2 (else raw)
  uint64_t capacity_bytes = 0;
  std::vector<std::string> access_modes;  // the claim's spec.accessModes
};

// Returns the provisioned volume of the Bound claim ns/name. Errors: kNotFound (no such
// claim), kUnavailable (not Bound yet; the message says why).
using ClaimLookup =
    std::function<Result<ClaimSource>(const std::string& ns, const std::string& name)>;

// A containerDisk volume's image, pulled and validated by the image cache (image/image.h).
struct ContainerDiskSource {
  std::string path;  // the cache's read-only disk file
  vmm::DiskFormat format = vmm::DiskFormat::kQcow2;
};
// Volume name -> its image. The controller fills it once every image is ready.
using ContainerDisks = std::map<std::string, ContainerDiskSource>;

// One disk to hot-plug into a running domain.
struct HotplugDisk {
  vmm::DiskSpec disk;
  std::vector<DeviceGrant> grants;
  ClaimSource claim;
};

struct VmiPlan {
  std::string uid;  // metadata.uid (canonical UUID)
  std::string dir;  // <vms_dir>/<uid>
  std::string qemu_group;
  vmm::DomainSpec domain;
  std::vector<VolumeTask> tasks;
  // Block devices the boot disks use (granted before the domain starts).
  std::vector<DeviceGrant> grants;
  // Hotpluggable volumes (persistentVolumeClaim/dataVolume with hotpluggable: true): not part
  // of the boot domain; the controller attaches them once it runs, as KubeVirt does.
  std::vector<std::string> hotplug_volumes;
};

// Returns the core/v1 Secret `name` in namespace `ns` as stored JSON (`data` values base64),
// or an error (kNotFound when it does not exist).
using SecretLookup = std::function<Result<Json>(const std::string& ns, const std::string& name)>;

// One VMI interface (spec.domain.devices.interfaces[] and the spec.networks[] entry of the same
// name) as the controller must provide it before the domain can be planned.
struct NetworkRequest {
  std::string interface_name;  // interfaces[].name == networks[].name
  bool pod = false;            // networks[].pod: the default network (edgevirt's NAT bridge)
  // networks[].multus.networkName when !pod: the name of a host network of the daemon's
  // config (network.hostNetworks). "ns/name" and "name" both name host network "name": host
  // networks are global on an edgevirt host, so the namespace part (a DNS label, as in
  // Multus) is accepted and ignored, and a manifest that names a NetworkAttachmentDefinition
  // in another namespace on a cluster runs unchanged here.
  std::string host_network;
  bool masquerade = false;  // binding masquerade (pod network only); else bridge
  // interfaces[].ports of a pod-network interface, in order: protocol ("TCP" or "UDP";
  // KubeVirt's default TCP), port. Empty for host networks (ports mean nothing there).
  std::vector<std::pair<std::string, uint16_t>> ports;
  // interfaces[].macAddress as aa:bb:cc:dd:ee:ff (lower case; KubeVirt also accepts '-' and
  // the dotted form, which are rewritten); empty: the controller chooses one.
  std::string mac;
  bool operator==(const NetworkRequest&) const = default;
};

// The interfaces of an admitted VMI, in interface order (the default "pod" interface that
// admission adds for autoattachPodInterface included). Interfaces with `state: absent` are
// left out, as KubeVirt's converter does. Pure.
// Errors, naming the interface:
//  - kInvalid: no network of the interface's name, no binding or two, masquerade on a
//    non-pod network, a network with neither pod nor multus, an empty or malformed
//    multus.networkName, a malformed macAddress or port, two interfaces of one name.
//  - kUnsupported: a binding edgevirt does not serve (slirp, sriov, macvtap, passt, binding
//    plugins), multus.default: true (a Multus network replacing the pod network).
Result<std::vector<NetworkRequest>> NetworkRequests(const Json& vmi);

// What the controller decided for one interface: where the NIC is plugged in, under which tap
// name and MAC address (from net/'s IPAM).
struct NicAttachment {
  std::string interface_name;
  vmm::NicKind kind = vmm::NicKind::kBridge;
  // kBridge: the bridge. kDirect: the host NIC the macvtap sits on, and its mode
  // (bridge|vepa|private|passthrough); for net/, which makes the macvtap: the domain XML names
  // only the device (see vmm::NicKind::kDirect).
  std::string source;
  std::string direct_mode = "bridge";
  // kBridge: the tap libvirt creates (empty: libvirt's vnetN). kDirect: the existing macvtap,
  // required.
  std::string tap;
  // The guest MAC. Must equal the interface's macAddress when it has one (either case); empty:
  // the interface's macAddress (then required).
  std::string mac;
  uint32_t mtu = 0;  // 0: the bridge's; see vmm::NicSpec::mtu
};

// Maps an admitted VMI (full object: metadata.uid/namespace/name, defaulted spec) to a plan.
// Pure apart from calling `secrets` (for secretRef / networkDataSecretRef) and reading the
// file system for hostDisk paths (realpath of the existing part, type of an existing file).
// Errors:
//  - kInvalid: the object lacks what admission guarantees (uid, firmware uuid, memory.guest),
//    a disk without a volume, bus usb, a lun on a file, a hostDisk path that is relative, not
//    clean, outside host_disk_dirs (also through a symlink), a `Disk` that does not exist or
//    is not a regular file, cloud-init data that is not valid base64 or has neither user nor
//    network data, `cache: none` without O_DIRECT, anything vmm::DomainXml refuses.
//  - kNotFound: a referenced Secret (or key) is missing, with the volume named.
//  - containerDisk volumes boot from a qcow2 overlay (a kEphemeralOverlay task) over their
//    image in `container_disks`; a volume missing there is kUnavailable.
//  - kUnsupported: dataVolume or any other volume source edgevirt does not serve, with the
//    volume named.
//  - persistentVolumeClaim / ephemeral volumes: `claims` errors, wrapped with the volume name
//    (kNotFound, kUnavailable when not Bound); a block claim on a disk adds a DeviceGrant.
//  - kUnavailable: an EFI VMI on a host without the needed OVMF image.
//  - NICs: with `nics` given, one vmm::NicSpec per NetworkRequests(vmi) entry, in interface
//    order, with the interface's model (default virtio), pciAddress and bootOrder and the
//    attachment's source, tap, MAC and MTU. NetworkRequests' errors; kInvalid when an interface
//    has no attachment or two, an attachment names no interface, or its MAC differs from the
//    interface's macAddress. Without `nics` (std::nullopt) the domain gets no NIC at all and
//    the interfaces are not looked at: for callers that do not wire networking (yet).
// The returned DomainSpec has been rendered once through vmm::DomainXml (so a plan that is
// returned is one libvirt will be given).
Result<VmiPlan> PlanVmi(const Json& vmi, const VmiHostOptions& host, const SecretLookup& secrets,
                        const ClaimLookup& claims = {}, const ContainerDisks& container_disks = {},
                        const std::optional<std::vector<NicAttachment>>& nics = std::nullopt);

// Maps one hotpluggable volume of a running VMI (its disk and its persistentVolumeClaim) to
// the disk to attach. Errors as PlanVmi's; kNotFound when the VMI has no such disk+volume.
Result<HotplugDisk> PlanHotplugDisk(const Json& vmi, const std::string& volume,
                                    const VmiHostOptions& host, const ClaimLookup& claims);

// Creates plan.dir (mode 0750, group qemu_group) with the subdirectory vnc/ (0770, group
// qemu_group; QEMU binds the VNC socket itself) and every task's file. Each file is written
// under a temporary name and renamed into place, so a file that exists is complete; existing
// files are kept (idempotent, and a guest's writes to its emptyDisk survive a re-plan). Cloud-
// init ISOs are built with xorriso from a staging directory (data never on a command line);
// emptyDisks with `qemu-img create -f qcow2`. Files made here are 0600 root (libvirt's DAC
// driver hands them to QEMU's user when the domain starts), created host disks 0640.
Status PrepareVmiFiles(const VmiPlan& plan);

// Removes <vms_dir>/<uid> and everything in it. Missing: success. `uid` must be a canonical
// UUID (8-4-4-4-12 hex), else kInvalid (so no path can be built from it). Host disks live
// outside and are never touched.
Status RemoveVmiFiles(const std::string& vms_dir, const std::string& uid);

// True if `text` is a canonical 8-4-4-4-12 hex UUID.
bool IsCanonicalUuid(std::string_view text);

}  // namespace edgevirt::daemon
