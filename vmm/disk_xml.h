// One <disk> element, written the same way for a domain definition (DomainXml, every disk of the
// spec) and for a hotplug (Hypervisor::AttachDisk, one disk into a running domain), so that a
// hotplugged disk looks to the guest exactly like one that was there at boot. Private to vmm/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "vmm/domain.h"
#include "vmm/xml_writer.h"

namespace edgevirt::vmm {

// Where a disk sits in the domain: its target name and, on sata and scsi, its drive address
// (bus and target are always 0).
struct DiskPlacement {
  std::string target;  // "vda", "sdb", ...
  struct Drive {
    uint32_t controller = 0;
    uint32_t unit = 0;
  };
  std::optional<Drive> drive;
};

// The checks of one disk by itself: name, path, serial, and the device/bus/source combinations
// QEMU supports. The checks across disks (duplicate names, boot orders) are the caller's.
// kInvalid, with a message that names the disk.
Status CheckDisk(const DiskSpec& disk);

// Writes <disk>...</disk> for `disk` at `placement` (`disk` must have passed CheckDisk).
void WriteDisk(XmlWriter& w, const DiskSpec& disk, const DiskPlacement& placement);

// libvirt's name of a bus ("virtio", "sata", "scsi").
std::string_view DiskBusName(DiskBus bus);

// The target name prefix of a bus: "vd" for virtio, "sd" for sata and scsi (one sd* namespace).
std::string_view DiskTargetPrefix(DiskBus bus);

}  // namespace edgevirt::vmm
