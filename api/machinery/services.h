// core/v1 Service, served by the machinery under /api/v1 (CoreV1() in events.h adds it), with
// kube-apiserver 1.32's decoding, defaulting and validation (k8s.io/kubernetes pkg/apis/core:
// SetDefaults_Service, ValidateService, ValidateServiceUpdate), the allocation of clusterIPs
// and nodePorts of pkg/registry/core/service (ipallocator, portallocator), and the apiserver's
// printer columns (NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE, SELECTOR with -o wide).
//
// This is what `virtctl expose` POSTs and `kubectl get svc` lists. The daemon's controller
// turns Services into host port forwards (NodePort) to the addresses of the VMIs the selector
// matches; the API side only stores them.
#pragma once

#include <cstdint>
#include <string>

#include "api/resource.h"
#include "common/result.h"

namespace edgevirt::api::machinery {

struct ServiceOptions {
  // IPv4 CIDR clusterIPs are allocated from (the apiserver's --service-cluster-ip-range).
  // Prefix length 12..30; the network address, the first address after it (kube-apiserver's
  // own "kubernetes" Service address) and the broadcast address are never allocated.
  std::string service_cidr = "10.96.0.0/16";
  // "FIRST-LAST" (inclusive), nodePorts of NodePort services (--service-node-port-range).
  std::string node_port_range = "30000-32767";
};

// The parsed options.
struct ServiceRanges {
  uint32_t network = 0;  // host byte order
  int prefix = 0;
  int first_port = 0;
  int last_port = 0;
};

// kInvalid with a message naming the bad option ("service CIDR \"10.96.0.0/33\": ...") when
// an option is malformed. The daemon checks its configuration with this; ServiceResource()
// with bad options serves Services whose every create fails with 500.
Result<ServiceRanges> ParseServiceOptions(const ServiceOptions& options);

// The Service resource (services, short name "svc", namespaced, category "all", with the
// status subresource, the verbs of kube-apiserver). Admission, per write (creates and updates
// are serialized: ResourceType::serialize_writes):
//  - decode: core/v1 1.32 Go types (a mistyped value is 400 `Service in version "v1" cannot be
//    handled as a Service: json: cannot unmarshal ...`); unknown fields reported and dropped.
//  - defaults: type ClusterIP; ports[].protocol TCP; ports[].targetPort = port (when absent,
//    0 or ""); sessionAffinity None (ClientIP: timeoutSeconds 10800); internalTrafficPolicy
//    Cluster; externalTrafficPolicy Cluster for NodePort; ipFamilies [IPv4], ipFamilyPolicy
//    SingleStack (RequireDualStack for a headless Service without selector, as on a
//    single-stack cluster); status {"loadBalancer":{}}.
//  - 422 Invalid for: a name that is not a DNS-1035 label; no ports (unless headless); port
//    or nodePort outside 1..65535; a protocol other than TCP/UDP (SCTP is not forwarded);
//    missing or duplicate port names with several ports; duplicate port/protocol; a targetPort
//    neither a port number nor an IANA_SVC_NAME; a nodePort on a ClusterIP Service; selector
//    keys/values that are not label keys/values; type LoadBalancer or ExternalName, and the
//    fields that only those types use, externalIPs (edgevirt serves neither); IPv6 or
//    dual-stack; bad sessionAffinity, traffic policies; clusterIP "None" with NodePort.
//  - allocation (after validation): clusterIP/clusterIPs from `service_cidr` unless given
//    ("None": headless, nothing allocated); a given one must be inside the CIDR and free
//    (`spec.clusterIPs: Invalid value: []string{"10.0.0.1"}: failed to allocate IP 10.0.0.1:
//    ...`); nodePorts of NodePort Services from `node_port_range` unless given; a given one
//    must be in the range and not used by another Service (`spec.ports[0].nodePort: Invalid
//    value: 30080: provided port is already allocated` / `... is not in the valid range. The
//    range of valid ports is 30000-32767`). An exhausted range is 500 `Internal error
//    occurred: failed to allocate a serviceIP: range is full` (or `... a nodePort: ...`).
//  - update: clusterIP(s), ipFamilies, ipFamilyPolicy and nodePorts left out are kept from the
//    stored object (nodePorts matched by port name); a changed clusterIP is 422 `field is
//    immutable`; NodePort → ClusterIP drops the old nodePorts and externalTrafficPolicy.
// A named targetPort (IANA_SVC_NAME) is stored as is: resolving it (against the port names of
// the VMI's interfaces, as KubeVirt's pod ports would) is left to the controller.
ResourceType ServiceResource(const ServiceOptions& options = {});

// OpenAPI v3 components of Service, ServiceList and parts (io.k8s.api.core.v1.*, and
// io.k8s.apimachinery.pkg.util.intstr.IntOrString).
Json ServiceSchemas();

// PORT(S) as kubectl shows it: "80:30080/TCP,443/TCP" (makePortString); "" for no ports.
std::string ServicePortsString(const Json& ports);

}  // namespace edgevirt::api::machinery
