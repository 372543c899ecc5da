// Private to vmm/: the libvirt side of console.h, used by hypervisor.cc.
#pragma once

#include <libvirt/libvirt.h>

#include <memory>
#include <string>

#include "common/result.h"
#include "vmm/console.h"

namespace edgevirt::vmm {

// Opens the console of the running `dom` (VIR_DOMAIN_CONSOLE_FORCE: a session another client
// holds is ended) on a non-blocking stream of `conn`. `what` names the domain in errors.
Result<std::unique_ptr<ConsoleStream>> OpenLibvirtConsole(virConnectPtr conn, virDomainPtr dom,
                                                          const std::string& what);
// virDomainScreenshot of screen 0 into a blocking stream; PPM encoded as PNG (a PNG is passed
// through).
Result<std::string> LibvirtScreenshot(virConnectPtr conn, virDomainPtr dom,
                                      const std::string& what);

}  // namespace edgevirt::vmm
