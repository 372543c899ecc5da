// vmm/: the libvirt/QEMU driver of edgevirt. This is its one public header; everything else in
// the folder is private: the domain XML builder (vmm/domain.h) and the libvirt connection with
// its event loop, lifecycle and device events, domain lifecycle, guest agent commands and disk
// hotplug and domain statistics (vmm/hypervisor.h, vmm/domain_stats.h), and the serial console
// stream and screenshots (vmm/console.h).
// See README.md.
#pragma once

#include "vmm/console.h"
#include "vmm/domain.h"
#include "vmm/domain_stats.h"
#include "vmm/hypervisor.h"
