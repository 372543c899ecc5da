// Admission for VirtualMachine and VirtualMachineInstance: structural decode, KubeVirt v1.0
// webhook defaulting and validation. Private to api/kubevirt; the contract is in kubevirt.h.
#pragma once

#include "api/kubevirt/kubevirt.h"
#include "api/kubevirt/schema.h"

namespace edgevirt::api::kubevirt {

AdmitResult AdmitVirtualMachine(const SchemaModel& model, const KubevirtOptions& options,
                                const AdmitRequest& request);
AdmitResult AdmitVirtualMachineInstance(const SchemaModel& model, const KubevirtOptions& options,
                                        const AdmitRequest& request);

}  // namespace edgevirt::api::kubevirt
