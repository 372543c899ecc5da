// vmm/: the libvirt/QEMU driver of edgevirt. This is its one public header; everything else in
// the folder is private: the domain XML builder (vmm/domain.h) and the libvirt connection with
// its event loop, lifecycle events and domain lifecycle (vmm/hypervisor.h). Console/VNC streams
// and the guest agent come next. See README.md.
#pragma once

#include "vmm/domain.h"
#include "vmm/hypervisor.h"
