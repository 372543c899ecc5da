// core/v1 PersistentVolumeClaim, served by the machinery under /api/v1 (CoreV1() in events.h
// adds it), with kube-apiserver 1.32's decoding, defaulting and validation (k8s.io/kubernetes
// pkg/apis/core: SetDefaults_PersistentVolumeClaim[Spec], ValidatePersistentVolumeClaim,
// ValidatePersistentVolumeClaimUpdate and ...StatusUpdate), the DefaultStorageClass admission
// plugin, and the apiserver's printer columns (NAME STATUS VOLUME CAPACITY ACCESS MODES
// STORAGECLASS VOLUMEATTRIBUTESCLASS AGE, VOLUMEMODE with -o wide).
#pragma once

#include <string>
#include <vector>

#include "api/resource.h"

namespace edgevirt::api::machinery {

struct PersistentVolumeClaimOptions {
  // The class a new claim without spec.storageClassName (and without the beta annotation
  // volume.beta.kubernetes.io/storage-class) gets, as the DefaultStorageClass admission plugin
  // sets it. Empty: there is no default class and such claims keep no class.
  std::string default_storage_class;
};

// The PersistentVolumeClaim resource (persistentvolumeclaims, short name "pvc", namespaced,
// with the status subresource, the verbs of kube-apiserver). Admission, per write:
//  - decode: every field of core/v1 1.32 with its Go type (a mistyped value is 400
//    `PersistentVolumeClaim in version "v1" cannot be handled as a PersistentVolumeClaim: json:
//    cannot unmarshal ...`, a bad quantity 400 `... quantities must match the regular expression
//    ...`); unknown fields at any depth are reported (Strict → 400, Warn → warnings) and dropped;
//    quantities are rewritten in canonical form ("1.5Gi" → "1536Mi"); nulls are dropped.
//  - defaults: spec.volumeMode "Filesystem", status.phase "Pending", spec.dataSource and
//    spec.dataSourceRef mirrored into each other; on create a missing class becomes
//    `default_storage_class`. spec.volumeAttributesClassName and the status fields of the
//    VolumeAttributesClass feature (beta, off by default in 1.32) are dropped.
//  - 422 Invalid (`PersistentVolumeClaim "x" is invalid: ...`): no access mode, an unsupported
//    one, ReadWriteOncePod with another mode, no spec.resources[storage] or one <= 0, a bad
//    storageClassName, volumeMode other than Filesystem/Block, bad selector or data source; on
//    update any spec change other than setting volumeName or storageClassName once (`spec:
//    Forbidden: spec is immutable after creation except resources.requests and
//    volumeAttributesClassName for bound claims`), a smaller request, and — edgevirt's own
//    rule — a larger request of a Bound claim (`spec.resources.requests.storage: Forbidden:
//    edgevirt cannot expand claims`).
//  - delete: refused with 409 Conflict while a kubevirt.io VirtualMachine
//    (spec.template.spec.volumes[].persistentVolumeClaim.claimName or
//    .ephemeral.persistentVolumeClaim.claimName) or VirtualMachineInstance (spec.volumes[]...)
//    of the same namespace names the claim: `persistentvolumeclaims "data" is in use by
//    VirtualMachine default/vm1`.
ResourceType PersistentVolumeClaimResource(const PersistentVolumeClaimOptions& options = {});

// OpenAPI v3 components of PersistentVolumeClaim, its list and parts (io.k8s.api.core.v1.*,
// plus io.k8s.apimachinery.pkg.api.resource.Quantity and the meta LabelSelector).
Json PersistentVolumeClaimSchemas();

// The claim's class as kubectl shows it: the beta annotation volume.beta.kubernetes.io/
// storage-class, else spec.storageClassName, else "" (GetPersistentVolumeClaimClass).
std::string ClaimClass(const Json& claim);

// Access modes as kubectl abbreviates them, in its order and without duplicates:
// ["ReadOnlyMany","ReadWriteOnce"] → "RWO,ROX" (GetAccessModesAsString).
std::string AccessModesString(const Json& modes);

// Who uses claim `name` in namespace `ns`: "VirtualMachine ns/vm1", "VirtualMachineInstance
// ns/vm1", ... from the kubevirt.io objects `list` returns (kinds that are not served are
// skipped). An error when listing fails.
Result<std::vector<std::string>> ClaimUsers(const ObjectLister& list, const std::string& ns,
                                            const std::string& name);

}  // namespace edgevirt::api::machinery
