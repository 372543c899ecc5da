// Admission for VirtualMachine and VirtualMachineInstance: structural decode, KubeVirt v1.0
// webhook defaulting and validation. Private to api/kubevirt; the contract is in kubevirt.h.
#pragma once

#include <optional>
#include <regex>
#include <vector>

#include "api/kubevirt/kubevirt.h"
#include "api/kubevirt/schema.h"

namespace edgevirt::api::kubevirt {

// KubevirtOptions and what admission derives from them once instead of per request.
struct AdmitOptions {
  explicit AdmitOptions(KubevirtOptions kubevirt_options);

  KubevirtOptions options;
  // `options.emulated_machines` compiled (ECMAScript); nullopt for a pattern std::regex refuses,
  // which never matches.
  std::vector<std::optional<std::regex>> machine_patterns;
};

AdmitResult AdmitVirtualMachine(const SchemaModel& model, const AdmitOptions& options,
                                const AdmitRequest& request);
AdmitResult AdmitVirtualMachineInstance(const SchemaModel& model, const AdmitOptions& options,
                                        const AdmitRequest& request);

}  // namespace edgevirt::api::kubevirt
