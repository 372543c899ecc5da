// One <interface> element (a guest NIC), kept apart from the domain like <disk> (disk_xml.h)
// so that a later NIC hotplug writes the same element DomainXml does. Private to vmm/.
#pragma once

#include <string_view>

#include "common/result.h"
#include "vmm/domain.h"
#include "vmm/xml_writer.h"

namespace edgevirt::vmm {

// The checks of one NIC by itself: name, source, mode, tap name, MAC, model, PCI address, MTU.
// The checks across NICs and disks (duplicate names, aliases, MACs, taps, PCI addresses, boot
// orders) are the caller's. kInvalid, with a message that names the NIC.
Status CheckNic(const NicSpec& nic);

// Writes <interface>...</interface> for `nic` (which must have passed CheckNic).
void WriteNic(XmlWriter& w, const NicSpec& nic);

// Where libvirt 9.0 puts a NIC of `model` on a q35 machine: true for a pcie-root-port of its
// own (virtio, e1000e, and also ne2k_pci and pcnet, which libvirt does not class as
// conventional PCI), false for its pcie-to-pci-bridge (e1000, rtl8139; one bridge, itself in a
// root port, takes all of them). Checked with virsh define + dumpxml in the embedded driver.
bool NicTakesRootPort(std::string_view model);

// The MAC address in the form DomainXml writes (lower-case); `mac` must have passed CheckNic.
std::string CanonicalMac(std::string_view mac);

}  // namespace edgevirt::vmm
