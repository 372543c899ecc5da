// Private to vmm/: one virDomainStatsRecord turned into a DomainStats (for hypervisor.cc and
// the unit test, which builds records with virTypedParamsAdd*).
#pragma once

#include <libvirt/libvirt.h>

#include <string_view>

#include "vmm/domain_stats.h"

namespace edgevirt::vmm {

// The stats keys this parser reads (VIR_DOMAIN_STATS_*): state, cpu-total, balloon, vcpu,
// interface, block.
unsigned DomainStatsTypes();

// Reads every key of `params` it knows (unknown keys and keys of an unexpected type are
// skipped: libvirt adds keys between versions). `name` and `uuid` are the record's domain's.
DomainStats ParseDomainStats(std::string name, std::string uuid, const virTypedParameter* params,
                             int nparams);

// Fills NetStats::alias and BlockStats::alias from the domain's live XML: <interface> by its
// <target dev>, <disk> by its <target dev>, each with an <alias name="ua-...">. XML that does
// not parse leaves the aliases empty.
void AddAliases(DomainStats& stats, std::string_view live_xml);

}  // namespace edgevirt::vmm
