// vmm/: the libvirt/QEMU driver of edgevirt. This is its one public header; everything else in
// the folder is private. So far it has the domain XML builder (vmm/domain.h); the libvirt
// connection, lifecycle, events and console/VNC streams come next. See README.md.
#pragma once

#include "vmm/domain.h"
