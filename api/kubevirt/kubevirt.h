// The KubeVirt kubevirt.io/v1 kinds edgevirt serves: VirtualMachine and VirtualMachineInstance.
// This module knows their schema (KubeVirt v1.0.1's field structure with edgevirt's own
// descriptions), decodes request bodies against it, defaults and validates them the way KubeVirt
// v1.0's mutating and validating webhooks do, rejects the KubeVirt fields edgevirt does not
// implement, and renders their printer columns. It is a pure library: it never touches the store,
// a driver or the file system (schema and descriptions are compiled in). See README.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "api/resource.h"

namespace edgevirt::api::kubevirt {

// Site policy for admission. Every field has the KubeVirt v1.0 default-cluster value unless the
// comment says otherwise.
struct KubevirtOptions {
  // Binding of the interface added when a VMI has neither interfaces nor networks (KubeVirt's
  // `network.defaultNetworkInterface`): "bridge" (KubeVirt's default) or "masquerade" (what most
  // distributions configure).
  std::string default_network_interface = "bridge";
  // KubeVirt's `cpuRequest`. Written into spec.domain.resources.requests.cpu only when it
  // differs from KubeVirt's built-in 100m, exactly as KubeVirt does; otherwise the controller
  // applies 100m when it sizes the VM's cgroup.
  std::string cpu_request = "100m";
  // The host architecture: defaulted into spec.architecture; any other value is rejected.
  std::string architecture = "amd64";
  // Default for spec.domain.machine.type.
  std::string machine_type = "q35";
  // Patterns (searched, unanchored, as KubeVirt does) that spec.domain.machine.type must match.
  std::vector<std::string> emulated_machines = {"q35*", "pc-q35*"};
  // Default spec.domain.cpu.model; empty means KubeVirt's "host-model".
  std::string cpu_model;
  // Written into spec.evictionStrategy when it is unset; empty leaves it unset (KubeVirt v1.0's
  // default cluster configuration has none). edgevirt accepts only "None".
  std::string default_eviction_strategy;
  // When non-empty, a hostDisk path must lie under one of these absolute directories. When empty,
  // path policy is the controller's (it owns the host file system).
  std::vector<std::string> host_disk_dirs;
  // false: every hostDisk volume is refused (the daemon allows none when its vms.hostDiskDirs
  // is empty), as KubeVirt refuses them without its HostDisk feature gate.
  bool host_disk_enabled = true;
  // The host's node labels. spec.nodeSelector must be a subset of them: with one host, a VM
  // that selects another node could never run, so it is rejected at admission.
  std::map<std::string, std::string> node_labels = {{"kubernetes.io/arch", "amd64"},
                                                    {"kubernetes.io/os", "linux"}};
  // status.runtimeUser written on VMI creation (KubeVirt's non-root default is 107).
  int64_t runtime_user = 107;
  // Source of random UUIDs for spec.domain.firmware.uuid on VMIs created without one. Null means
  // an RFC 4122 version 4 generator (getrandom). Tests inject a fixed one.
  std::function<std::string()> random_uuid;
};

// The kubevirt.io/v1 group-version: the VirtualMachine resource (virtualmachines, vm/vms,
// status subresource) and the VirtualMachineInstance resource (virtualmachineinstances,
// vmi/vmis, no status subresource), their admit hooks, printer columns and the OpenAPI v3
// component schemas (io.kubevirt.v1.*, io.k8s.apimachinery.pkg.apis.meta.v1.*, ...).
//
// admit() contract, per AdmitRequest:
//  - kCreate/kUpdate on the main resource: structural decode of the whole object (unknown fields
//    reported and removed; type/required/enum errors and unsupported KubeVirt fields returned as
//    `invalid` with empty `denied_by`); then, if that passed, KubeVirt's mutating webhook
//    defaults are applied to *object and KubeVirt's validating webhook rules run (`invalid` with
//    `denied_by` set to the KubeVirt webhook name).
//  - VirtualMachine with status_subresource: only `status` is decoded (shape only).
//  - VirtualMachineInstance update: a changed spec is denied as in KubeVirt; a changed status is
//    restored to the stored one (KubeVirt ignores status writes from users). The controller must
//    write VMI status directly through the store, not through admit.
//  - kDelete: always allowed.
api::ApiGroupVersion KubevirtV1(const KubevirtOptions& options);

// KubeVirt's legacy firmware UUID for a VM (used by its VM controller when the template has no
// spec.domain.firmware.uuid): the RFC 4122 version 5 (SHA-1) UUID of `vm_name` in namespace
// 6a1a24a1-4061-4607-8bf4-a3963d0c5895, lower-case hex with dashes.
std::string LegacyFirmwareUuid(std::string_view vm_name);

// Names of KubeVirt's validating webhooks, used as AdmitResult::denied_by.
inline constexpr std::string_view kVmValidator = "virtualmachine-validator.kubevirt.io";
inline constexpr std::string_view kVmiCreateValidator =
    "virtualmachineinstances-create-validator.kubevirt.io";
inline constexpr std::string_view kVmiUpdateValidator =
    "virtualmachineinstances-update-validator.kubevirt.io";

}  // namespace edgevirt::api::kubevirt
