// What a running domain's live XML says beyond its disks (which hotplug.h reads): the serial
// console it was started with. No libvirt connection; Hypervisor::LiveConsole feeds it
// libvirt's XML. Private to vmm/ (the unit tests include it).
#pragma once

#include <string_view>

#include "common/result.h"
#include "vmm/domain.h"

namespace edgevirt::vmm {

// The console of a domain XML (live, from virDomainGetXMLDesc(0)) as a ConsoleSpec: the first
// <console> element (DomainXml writes it as serial port 0's twin; libvirt copies the serial's
// source and log into it), or serial port 0 when there is no <console>:
//   - type 'pty' → kPty (libvirt's live XML names the pty in <source path>; not kept);
//   - type 'unix' with <source mode='bind'> → kUnix, socket_path = the source path;
//   - no console and no serial → kNone;
// log_path from its <log file>. Errors: kInvalid (unparsable, not a <domain>, a unix console
// without a path), kUnsupported (another chardev type, or a unix socket QEMU connects to
// instead of listening on: nothing ConsoleKind can express or edgevirt can relay).
Result<ConsoleSpec> ParseLiveConsole(std::string_view domain_xml);

}  // namespace edgevirt::vmm
