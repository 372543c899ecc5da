// Disk hotplug, the pure part: what a domain XML says about its disks, and the <disk> element
// of a disk to attach, with its target name and scsi unit chosen from what the domain already
// uses. No libvirt connection; Hypervisor::AttachDisk/DetachDisk/LiveDisks feed it libvirt's
// XML. Private to vmm/ (the unit tests include it).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "vmm/domain.h"
#include "vmm/hypervisor.h"

namespace edgevirt::vmm {

// The disks of a domain XML (live, from virDomainGetXMLDesc(0), or inactive), in document
// order. A disk whose alias is not a user alias "ua-<name>" has an empty name. Disks on buses
// DiskBus cannot express (ide, usb, fdc, ...) are left out: edgevirt never defines them.
// kInvalid when the XML cannot be parsed or is not a <domain>.
Result<std::vector<LiveDisk>> ParseLiveDisks(std::string_view domain_xml);

// The <disk> element (as DomainXml writes it) that attaches `disk` to the domain whose live XML
// is `live_xml`. When the attach is persisted too, `config_xml` is the domain's inactive XML,
// else empty; a target or unit taken in either is not free.
//   - target: the lowest free name of the bus's sequence, vd* for virtio, sd* for scsi (every
//     sd* target counts: sata and scsi share libvirt's sd* namespace);
//   - scsi: the lowest free unit on controller 0 (bus 0, target 0), as an explicit drive
//     address, so that libvirt never derives one from the name (which could add controllers).
// Errors: kInvalid (the disk fails DomainXml's checks; sata, which QEMU cannot hotplug; scsi on
// a domain without scsi controller 0, see DomainSpec::hotplug_scsi_controller; unparsable XML),
// kConflict (a disk with alias ua-<name> is already in the live XML or in `config_xml`; no free
// target or unit).
Result<std::string> HotplugDiskXml(const DiskSpec& disk, std::string_view live_xml,
                                   std::string_view config_xml);

}  // namespace edgevirt::vmm
