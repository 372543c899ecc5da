#include "api/machinery/services.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "api/machinery/errors.h"
#include "api/machinery/go_decode.h"
#include "api/machinery/meta.h"
#include "common/json_path.h"

namespace edgevirt::api::machinery {
namespace {

// ---- decoding: the Go types of core/v1 Service ----------------------------------------------

using Type = GoType;
using Shape = GoShape;

const Shape& PortShape() {
  static const Shape k{"ServicePort",
                       {{"appProtocol", Type::kString, "string"},
                        {"name", Type::kString, "string"},
                        {"nodePort", Type::kInt32, "int32"},
                        {"port", Type::kInt32, "int32"},
                        {"protocol", Type::kString, "v1.Protocol"},
                        {"targetPort", Type::kIntOrString, "intstr.IntOrString"}}};
  return k;
}

const Shape& ClientIpConfigShape() {
  static const Shape k{"ClientIPConfig", {{"timeoutSeconds", Type::kInt32, "int32"}}};
  return k;
}

const Shape& SessionAffinityConfigShape() {
  static const Shape k{"SessionAffinityConfig",
                       {{"clientIP", Type::kStruct, "v1.ClientIPConfig", &ClientIpConfigShape()}}};
  return k;
}

const Shape& SpecShape() {
  static const Shape k{"ServiceSpec",
                       {{"allocateLoadBalancerNodePorts", Type::kBool, "bool"},
                        {"clusterIP", Type::kString, "string"},
                        {"clusterIPs", Type::kStringList, "[]string"},
                        {"externalIPs", Type::kStringList, "[]string"},
                        {"externalName", Type::kString, "string"},
                        {"externalTrafficPolicy", Type::kString, "v1.ServiceExternalTrafficPolicy"},
                        {"healthCheckNodePort", Type::kInt32, "int32"},
                        {"internalTrafficPolicy", Type::kString, "v1.ServiceInternalTrafficPolicy"},
                        {"ipFamilies", Type::kStringList, "[]v1.IPFamily"},
                        {"ipFamilyPolicy", Type::kString, "v1.IPFamilyPolicy"},
                        {"loadBalancerClass", Type::kString, "string"},
                        {"loadBalancerIP", Type::kString, "string"},
                        {"loadBalancerSourceRanges", Type::kStringList, "[]string"},
                        {"ports", Type::kStructList, "[]v1.ServicePort", &PortShape()},
                        {"publishNotReadyAddresses", Type::kBool, "bool"},
                        {"selector", Type::kStringMap, "map[string]string"},
                        {"sessionAffinity", Type::kString, "v1.ServiceAffinity"},
                        {"sessionAffinityConfig", Type::kStruct, "v1.SessionAffinityConfig",
                         &SessionAffinityConfigShape()},
                        {"trafficDistribution", Type::kString, "string"},
                        {"type", Type::kString, "v1.ServiceType"}}};
  return k;
}

const Shape& PortStatusShape() {
  static const Shape k{"PortStatus",
                       {{"error", Type::kString, "string"},
                        {"port", Type::kInt32, "int32"},
                        {"protocol", Type::kString, "v1.Protocol"}}};
  return k;
}

const Shape& IngressShape() {
  static const Shape k{"LoadBalancerIngress",
                       {{"hostname", Type::kString, "string"},
                        {"ip", Type::kString, "string"},
                        {"ipMode", Type::kString, "v1.LoadBalancerIPMode"},
                        {"ports", Type::kStructList, "[]v1.PortStatus", &PortStatusShape()}}};
  return k;
}

const Shape& LoadBalancerStatusShape() {
  static const Shape k{
      "LoadBalancerStatus",
      {{"ingress", Type::kStructList, "[]v1.LoadBalancerIngress", &IngressShape()}}};
  return k;
}

const Shape& ConditionShape() {
  static const Shape k{"Condition",
                       {{"lastTransitionTime", Type::kString, "v1.Time"},
                        {"message", Type::kString, "string"},
                        {"observedGeneration", Type::kInt64, "int64"},
                        {"reason", Type::kString, "string"},
                        {"status", Type::kString, "v1.ConditionStatus"},
                        {"type", Type::kString, "string"}}};
  return k;
}

const Shape& StatusShape() {
  static const Shape k{
      "ServiceStatus",
      {{"conditions", Type::kStructList, "[]v1.Condition", &ConditionShape()},
       {"loadBalancer", Type::kStruct, "v1.LoadBalancerStatus", &LoadBalancerStatusShape()}}};
  return k;
}

const Shape& ServiceShape() {
  static const Shape k{"Service",
                       {{"apiVersion", Type::kString, "string"},
                        {"kind", Type::kString, "string"},
                        {"metadata", Type::kOpaque, "v1.ObjectMeta"},
                        {"spec", Type::kStruct, "v1.ServiceSpec", &SpecShape()},
                        {"status", Type::kStruct, "v1.ServiceStatus", &StatusShape()}}};
  return k;
}

// ---- small accessors ----------------------------------------------------------------------

using jsonpath::At;
using jsonpath::Str;
using jsonpath::Strings;

int64_t Int(const Json& o, const char* key) {
  const Json* v = At(o, {key});
  return v && v->is_number_integer() ? v->get<int64_t>() : 0;
}

std::string PortPath(size_t i) { return "spec.ports[" + std::to_string(i) + "]"; }

// Go's %#v of a []string.
std::string GoStrings(const std::vector<std::string>& v) {
  std::string out = "[]string{";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + Quote(v[i]);
  return out + "}";
}

StatusCause Duplicate(std::string field, std::string_view value) {
  std::string msg = field + ": Duplicate value: " + std::string(value);
  return {"FieldValueDuplicate", std::move(msg), std::move(field)};
}

constexpr char kPortRangeMessage[] = "must be between 1 and 65535, inclusive";
constexpr char kNone[] = "None";

// ---- IPv4 ---------------------------------------------------------------------------------

std::optional<uint32_t> ParseIpv4(std::string_view text) {
  std::string s(text);
  in_addr a{};
  if (s.empty() || ::inet_pton(AF_INET, s.c_str(), &a) != 1) return std::nullopt;
  return ntohl(a.s_addr);
}

bool IsIp(std::string_view text) {
  std::string s(text);
  in6_addr a6{};
  return ParseIpv4(text).has_value() || ::inet_pton(AF_INET6, s.c_str(), &a6) == 1;
}

std::string FormatIpv4(uint32_t ip) {
  return std::to_string(ip >> 24) + "." + std::to_string((ip >> 16) & 255) + "." +
         std::to_string((ip >> 8) & 255) + "." + std::to_string(ip & 255);
}

std::optional<int> ParseInt(std::string_view s) {
  int v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// ---- validation (ValidateService) -------------------------------------------------------------

// validation.IsValidPortName (IANA_SVC_NAME).
std::vector<std::string> IsValidPortName(std::string_view port) {
  std::vector<std::string> errs;
  if (port.size() < 1 || port.size() > 15) errs.push_back("must be no more than 15 characters");
  bool letter = false, bad = false;
  for (char c : port) {
    if (c >= 'a' && c <= 'z') letter = true;
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) bad = true;
  }
  if (bad) errs.push_back("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
  if (port.find("--") != std::string_view::npos) {
    errs.push_back("must not contain consecutive hyphens");
  }
  if (!letter) errs.push_back("must contain at least one letter (a-z)");
  if (!port.empty() && (port.front() == '-' || port.back() == '-')) {
    errs.push_back("must not begin or end with a hyphen");
  }
  return errs;
}

// validation.IsDNS1035Label.
std::vector<std::string> IsDns1035Label(std::string_view v) {
  std::vector<std::string> errs;
  if (v.size() > 63) errs.push_back("must be no more than 63 characters");
  bool ok = !v.empty() && v.front() >= 'a' && v.front() <= 'z' &&
            ((v.back() >= 'a' && v.back() <= 'z') || (v.back() >= '0' && v.back() <= '9'));
  for (char c : v) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) ok = false;
  }
  if (!ok) {
    errs.push_back(
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
        "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
        "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')");
  }
  return errs;
}

bool ValidPort(int64_t p) { return p >= 1 && p <= 65535; }

void ValidateEnum(const Json& spec, const char* key, const std::vector<std::string>& supported,
                  std::vector<StatusCause>* errors) {
  const Json* v = At(spec, {key});
  if (v == nullptr) return;
  const std::string s = v->get<std::string>();
  if (std::find(supported.begin(), supported.end(), s) == supported.end()) {
    errors->push_back(FieldNotSupported(std::string("spec.") + key, Quote(s), supported));
  }
}

void ValidateSpec(const Json& svc, std::vector<StatusCause>* errors) {
  const Json& spec = svc["spec"];
  const std::string type = Str(spec, {"type"});
  const std::string cluster_ip = Str(spec, {"clusterIP"});
  const bool headless = cluster_ip == kNone;

  // ValidateServiceName (the machinery reported names that are not even DNS subdomains).
  if (const std::string name = Str(svc, {"metadata", "name"});
      !name.empty() && NameIsDnsSubdomain(name, false).empty()) {
    for (const auto& m : IsDns1035Label(name)) {
      errors->push_back(FieldInvalid("metadata.name", Quote(name), m));
    }
  }

  if (type == "LoadBalancer") {
    errors->push_back({"FieldValueNotSupported",
                       "spec.type: Unsupported value: \"LoadBalancer\": edgevirt does not serve "
                       "LoadBalancer services (there is no load balancer on a single host): use "
                       "\"NodePort\" or \"ClusterIP\"",
                       "spec.type"});
    return;
  }
  if (type == "ExternalName") {
    errors->push_back({"FieldValueNotSupported",
                       "spec.type: Unsupported value: \"ExternalName\": edgevirt does not serve "
                       "ExternalName services (there is no cluster DNS): use \"NodePort\" or "
                       "\"ClusterIP\"",
                       "spec.type"});
    return;
  }
  if (type != "ClusterIP" && type != "NodePort") {
    errors->push_back(FieldNotSupported("spec.type", Quote(type), {"ClusterIP", "NodePort"}));
    return;
  }
  const bool node_port = type == "NodePort";

  // Fields only LoadBalancer and ExternalName services use.
  for (const char* lb : {"loadBalancerIP", "loadBalancerClass", "loadBalancerSourceRanges",
                         "allocateLoadBalancerNodePorts", "healthCheckNodePort"}) {
    if (spec.contains(lb)) {
      errors->push_back(FieldForbidden(std::string("spec.") + lb,
                                       "may only be used when `type` is 'LoadBalancer'"));
    }
  }
  if (!Str(spec, {"externalName"}).empty()) {
    errors->push_back(
        FieldForbidden("spec.externalName", "may only be used when `type` is 'ExternalName'"));
  }
  if (!Strings(At(spec, {"externalIPs"})).empty()) {
    errors->push_back(
        FieldForbidden("spec.externalIPs",
                       "edgevirt does not route external IPs: use a NodePort service, whose "
                       "ports are forwarded on every address of the host"));
  }

  // Ports.
  const Json* ports = At(spec, {"ports"});
  const size_t n = ports ? ports->size() : 0;
  if (n == 0 && !headless) errors->push_back(FieldRequired("spec.ports"));
  if (headless && node_port) {
    errors->push_back(FieldInvalid("spec.clusterIPs[0]", Quote(kNone),
                                   "may not be set to 'None' for NodePort services"));
  }
  std::set<std::string> names;
  std::set<std::pair<int64_t, std::string>> port_keys, node_port_keys;
  for (size_t i = 0; i < n; ++i) {
    const Json& p = (*ports)[i];
    const std::string path = PortPath(i);
    const std::string name = Str(p, {"name"});
    if (n > 1 && name.empty()) errors->push_back(FieldRequired(path + ".name"));
    if (!name.empty()) {
      for (const auto& m : IsDns1123Label(name)) {
        errors->push_back(FieldInvalid(path + ".name", Quote(name), m));
      }
      if (!names.insert(name).second) errors->push_back(Duplicate(path + ".name", Quote(name)));
    }
    const int64_t port = Int(p, "port");
    if (!ValidPort(port)) {
      errors->push_back(FieldInvalid(path + ".port", std::to_string(port), kPortRangeMessage));
    }
    const std::string protocol = Str(p, {"protocol"});
    if (protocol != "TCP" && protocol != "UDP") {
      errors->push_back(FieldNotSupported(path + ".protocol", Quote(protocol), {"TCP", "UDP"}));
    }
    if (!port_keys.insert({port, protocol}).second) {
      errors->push_back(Duplicate(
          path, "{\"port\":" + std::to_string(port) + ",\"protocol\":" + Quote(protocol) + "}"));
    }
    if (const Json* target = At(p, {"targetPort"}); target != nullptr) {
      if (target->is_string()) {
        const std::string t = target->get<std::string>();
        for (const auto& m : IsValidPortName(t)) {
          errors->push_back(FieldInvalid(path + ".targetPort", Quote(t), m));
        }
      } else if (!ValidPort(target->get<int64_t>())) {
        errors->push_back(FieldInvalid(path + ".targetPort", std::to_string(target->get<int64_t>()),
                                       kPortRangeMessage));
      }
    }
    const int64_t np = Int(p, "nodePort");
    if (np != 0) {
      if (!node_port) {
        errors->push_back(
            FieldForbidden(path + ".nodePort", "may not be used when `type` is '" + type + "'"));
      } else if (!ValidPort(np)) {
        errors->push_back(FieldInvalid(path + ".nodePort", std::to_string(np), kPortRangeMessage));
      } else if (!node_port_keys.insert({np, protocol}).second) {
        errors->push_back(Duplicate(path + ".nodePort", std::to_string(np)));
      }
    }
    if (const std::string ap = Str(p, {"appProtocol"}); !ap.empty()) {
      for (const auto& m : IsQualifiedName(ap)) {
        errors->push_back(FieldInvalid(path + ".appProtocol", Quote(ap), m));
      }
    }
  }

  // Selector: label keys and values.
  if (const Json* sel = At(spec, {"selector"}); sel != nullptr) {
    for (const auto& [k, v] : sel->items()) {
      for (const auto& m : IsQualifiedName(k)) {
        errors->push_back(FieldInvalid("spec.selector", Quote(k), m));
      }
      const std::string value = v.get<std::string>();
      for (const auto& m : IsValidLabelValue(value)) {
        errors->push_back(FieldInvalid("spec.selector", Quote(value), m));
      }
    }
  }

  // Cluster IPs (the allocator checks ranges).
  const std::vector<std::string> ips = Strings(At(spec, {"clusterIPs"}));
  if (!cluster_ip.empty() && !ips.empty() && ips[0] != cluster_ip) {
    errors->push_back(FieldInvalid("spec.clusterIPs[0]", Quote(ips[0]),
                                   "must match `clusterIP` when both are specified"));
  }
  if (ips.size() > 1) {
    errors->push_back(FieldInvalid("spec.clusterIPs", GoStrings(ips),
                                   "this cluster is not configured for dual-stack services"));
  }
  if (!cluster_ip.empty() && !headless && !IsIp(cluster_ip)) {
    errors->push_back(
        FieldInvalid("spec.clusterIPs[0]", Quote(cluster_ip),
                     "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"));
  } else if (!cluster_ip.empty() && !headless && !ParseIpv4(cluster_ip)) {
    errors->push_back(FieldInvalid("spec.clusterIPs[0]", Quote(cluster_ip),
                                   "IPv6 is not configured on this cluster"));
  }

  // IP families.
  ValidateEnum(spec, "ipFamilyPolicy", {"PreferDualStack", "RequireDualStack", "SingleStack"},
               errors);
  const std::vector<std::string> families = Strings(At(spec, {"ipFamilies"}));
  std::set<std::string> seen_families;
  for (size_t i = 0; i < families.size(); ++i) {
    const std::string path = "spec.ipFamilies[" + std::to_string(i) + "]";
    if (families[i] == "IPv6") {
      errors->push_back(FieldInvalid(path, Quote(families[i]), "not configured on this cluster"));
    } else if (families[i] != "IPv4") {
      errors->push_back(FieldNotSupported(path, Quote(families[i]), {"IPv4", "IPv6"}));
    }
    if (!seen_families.insert(families[i]).second) {
      errors->push_back(Duplicate(path, Quote(families[i])));
    }
  }
  const bool selectorless_headless =
      headless && (At(spec, {"selector"}) == nullptr || spec["selector"].empty());
  if (Str(spec, {"ipFamilyPolicy"}) == "RequireDualStack" && !selectorless_headless) {
    errors->push_back(FieldInvalid("spec.ipFamilyPolicy", Quote("RequireDualStack"),
                                   "this cluster is not configured for dual-stack services"));
  }

  // Session affinity and traffic policies.
  ValidateEnum(spec, "sessionAffinity", {"ClientIP", "None"}, errors);
  if (Str(spec, {"sessionAffinity"}) == "None" && spec.contains("sessionAffinityConfig")) {
    errors->push_back(FieldInvalid("spec.sessionAffinityConfig",
                                   spec["sessionAffinityConfig"].dump(),
                                   "must not be set when session affinity is None"));
  }
  if (const Json* t = At(spec, {"sessionAffinityConfig", "clientIP", "timeoutSeconds"})) {
    const int64_t s = t->get<int64_t>();
    if (s <= 0 || s > 86400) {
      errors->push_back(FieldInvalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                                     std::to_string(s),
                                     "must be greater than 0 and less than 86400"));
    }
  }
  ValidateEnum(spec, "internalTrafficPolicy", {"Cluster", "Local"}, errors);
  ValidateEnum(spec, "externalTrafficPolicy", {"Cluster", "Local"}, errors);
  if (!node_port && !Str(spec, {"externalTrafficPolicy"}).empty()) {
    errors->push_back(FieldInvalid("spec.externalTrafficPolicy",
                                   Quote(Str(spec, {"externalTrafficPolicy"})),
                                   "may only be set for externally-accessible services"));
  }
  ValidateEnum(spec, "trafficDistribution", {"PreferClose"}, errors);
}

// ---- defaulting (SetDefaults_Service) and the update strategy ------------------------------

void Default(Json& svc) {
  Json& spec = svc["spec"];
  if (!spec.is_object()) spec = Json::object();
  if (Str(spec, {"type"}).empty()) spec["type"] = "ClusterIP";
  const std::string type = Str(spec, {"type"});
  if (Str(spec, {"sessionAffinity"}).empty()) spec["sessionAffinity"] = "None";
  if (Str(spec, {"sessionAffinity"}) == "ClientIP" && !spec.contains("sessionAffinityConfig")) {
    spec["sessionAffinityConfig"] = {{"clientIP", {{"timeoutSeconds", 10800}}}};
  }
  if (Json* ports = spec.contains("ports") ? &spec["ports"] : nullptr) {
    for (Json& p : *ports) {
      if (Str(p, {"protocol"}).empty()) p["protocol"] = "TCP";
      const Json* t = At(p, {"targetPort"});
      if (t == nullptr || (t->is_string() && t->get<std::string>().empty()) ||
          (t->is_number_integer() && t->get<int64_t>() == 0)) {
        p["targetPort"] = Int(p, "port");
      }
    }
  }
  if (type == "NodePort" && Str(spec, {"externalTrafficPolicy"}).empty()) {
    spec["externalTrafficPolicy"] = "Cluster";
  }
  if (type != "ExternalName" && !spec.contains("internalTrafficPolicy")) {
    spec["internalTrafficPolicy"] = "Cluster";
  }
  if (!spec.contains("ipFamilyPolicy") && type != "ExternalName") {
    const bool selectorless_headless =
        Str(spec, {"clusterIP"}) == kNone &&
        (At(spec, {"selector"}) == nullptr || spec["selector"].empty());
    spec["ipFamilyPolicy"] = selectorless_headless ? "RequireDualStack" : "SingleStack";
  }
  if (!spec.contains("ipFamilies") && type != "ExternalName") {
    spec["ipFamilies"] = Json::array({"IPv4"});
  }
  if (Str(spec, {"clusterIP"}).empty() && !Strings(At(spec, {"clusterIPs"})).empty()) {
    spec["clusterIP"] = spec["clusterIPs"][0];
  }
  Json& status = svc["status"];
  if (!status.is_object()) status = Json::object();
  if (!status.contains("loadBalancer")) status["loadBalancer"] = Json::object();
}

// patchAllocatedValues and dropTypeDependentFields: what an update leaves out is kept.
void KeepAllocated(Json& svc, const Json& old) {
  Json& spec = svc["spec"];
  const Json* old_spec = At(old, {"spec"});
  if (old_spec == nullptr) return;
  for (const char* key : {"clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"}) {
    const Json* v = At(*old_spec, {key});
    const bool missing = !spec.contains(key) || (spec[key].is_string() && spec[key].empty()) ||
                         (spec[key].is_array() && spec[key].empty());
    if (v != nullptr && missing) spec[key] = *v;
  }
  const std::string old_type = Str(*old_spec, {"type"});
  const std::string type = Str(spec, {"type"}).empty() ? "ClusterIP" : Str(spec, {"type"});
  const Json* old_ports = At(*old_spec, {"ports"});
  if (old_type != "NodePort" || old_ports == nullptr || !spec.contains("ports")) return;
  Json& ports = spec["ports"];
  if (type == "NodePort") {
    std::set<int64_t> used;
    for (const Json& p : ports) used.insert(Int(p, "nodePort"));
    std::map<std::string, int64_t> by_name;
    for (const Json& p : *old_ports) by_name[Str(p, {"name"})] = Int(p, "nodePort");
    for (Json& p : ports) {
      if (Int(p, "nodePort") != 0) continue;
      auto it = by_name.find(Str(p, {"name"}));
      if (it != by_name.end() && it->second != 0 && used.count(it->second) == 0) {
        p["nodePort"] = it->second;
        used.insert(it->second);
      }
    }
  } else {
    // NodePort → ClusterIP: nodePorts and the external traffic policy that were the old
    // object's go (a different nodePort stays and is refused by validation).
    std::set<int64_t> old_nps;
    for (const Json& p : *old_ports) old_nps.insert(Int(p, "nodePort"));
    for (Json& p : ports) {
      if (old_nps.count(Int(p, "nodePort")) != 0) p.erase("nodePort");
    }
    if (Str(spec, {"externalTrafficPolicy"}) == Str(*old_spec, {"externalTrafficPolicy"})) {
      spec.erase("externalTrafficPolicy");
    }
  }
}

// ---- allocation (pkg/registry/core/service/ipallocator, portallocator) ----------------------

struct Used {
  std::set<uint32_t> ips;
  std::set<int64_t> node_ports;
};

// What the other Services hold.
Result<Used> UsedByOthers(const ObjectLister& list, const Json& svc) {
  auto all = list("", "Service", "");
  if (!all) return std::move(all).error();
  const std::string ns = Str(svc, {"metadata", "namespace"});
  const std::string name = Str(svc, {"metadata", "name"});
  Used used;
  for (const Json& o : *all) {
    if (Str(o, {"metadata", "namespace"}) == ns && Str(o, {"metadata", "name"}) == name) continue;
    std::vector<std::string> ips = Strings(At(o, {"spec", "clusterIPs"}));
    ips.push_back(Str(o, {"spec", "clusterIP"}));
    for (const auto& ip : ips) {
      if (auto a = ParseIpv4(ip)) used.ips.insert(*a);
    }
    if (const Json* ports = At(o, {"spec", "ports"}); ports && ports->is_array()) {
      for (const Json& p : *ports) {
        if (int64_t np = Int(p, "nodePort"); np != 0) used.node_ports.insert(np);
      }
    }
  }
  return used;
}

uint64_t RandomBelow(uint64_t n) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng);
}

// Allocates the clusterIP and nodePorts `svc` still needs; `old` (updates) names the values
// that were already allocated to it and are not checked again.
void Allocate(const ServiceRanges& r, const ObjectLister& list, Json& svc, const Json* old,
              AdmitResult* result) {
  auto used = UsedByOthers(list, svc);
  if (!used) {
    result->internal_error = "listing services to allocate from failed: " + used.error().message;
    return;
  }
  Json& spec = svc["spec"];
  // Addresses: network+2 .. broadcast-1.
  const uint32_t size = r.prefix == 0 ? 0 : (1u << (32 - r.prefix));
  const uint32_t first = r.network + 2, last = r.network + size - 2;
  const std::string cidr = FormatIpv4(r.network) + "/" + std::to_string(r.prefix);
  const std::string old_ip = old ? Str(*old, {"spec", "clusterIP"}) : std::string();
  std::string ip = Str(spec, {"clusterIP"});
  if (ip == kNone) {
    spec["clusterIPs"] = Json::array({kNone});
  } else if (ip.empty()) {
    const uint32_t count = last - first + 1;
    const uint32_t start = static_cast<uint32_t>(RandomBelow(count));
    std::optional<uint32_t> found;
    for (uint32_t i = 0; i < count && !found; ++i) {
      const uint32_t candidate = first + (start + i) % count;
      if (used->ips.count(candidate) == 0) found = candidate;
    }
    if (!found) {
      result->internal_error = "failed to allocate a serviceIP: range is full";
      return;
    }
    ip = FormatIpv4(*found);
  } else if (ip != old_ip) {
    const uint32_t a = *ParseIpv4(ip);  // validated
    const std::string prefix = "failed to allocate IP " + ip + ": ";
    if (a < r.network + 1 || a > last) {
      result->invalid.push_back(
          FieldInvalid("spec.clusterIPs", GoStrings({ip}),
                       prefix + "the provided IP (" + ip +
                           ") is not in the valid range. The range of valid IPs is " + cidr));
    } else if (a == r.network + 1 || used->ips.count(a) != 0) {
      result->invalid.push_back(FieldInvalid("spec.clusterIPs", GoStrings({ip}),
                                             prefix + "provided IP is already allocated"));
    }
  }
  if (ip != kNone) {
    spec["clusterIP"] = ip;
    spec["clusterIPs"] = Json::array({ip});
  }

  if (Str(spec, {"type"}) != "NodePort") return;
  std::set<int64_t> old_nps;
  if (const Json* ports = old ? At(*old, {"spec", "ports"}) : nullptr; ports && ports->is_array()) {
    for (const Json& p : *ports) old_nps.insert(Int(p, "nodePort"));
  }
  std::set<int64_t> taken = used->node_ports;
  std::vector<Json*> needed;
  Json& ports = spec["ports"];
  for (size_t i = 0; i < ports.size(); ++i) {
    const int64_t np = Int(ports[i], "nodePort");
    if (np == 0) {
      needed.push_back(&ports[i]);
      continue;
    }
    if (old_nps.count(np) != 0) {
      taken.insert(np);
      continue;
    }
    const std::string path = PortPath(i) + ".nodePort";
    if (np < r.first_port || np > r.last_port) {
      result->invalid.push_back(
          FieldInvalid(path, std::to_string(np),
                       "provided port is not in the valid range. The range of valid ports is " +
                           std::to_string(r.first_port) + "-" + std::to_string(r.last_port)));
    } else if (used->node_ports.count(np) != 0) {
      result->invalid.push_back(
          FieldInvalid(path, std::to_string(np), "provided port is already allocated"));
    }
    taken.insert(np);  // TCP and UDP ports of one Service may share a nodePort
  }
  if (!result->invalid.empty()) return;
  const int64_t count = r.last_port - r.first_port + 1;
  for (Json* p : needed) {
    const int64_t start = static_cast<int64_t>(RandomBelow(static_cast<uint64_t>(count)));
    int64_t found = 0;
    for (int64_t i = 0; i < count && found == 0; ++i) {
      const int64_t candidate = r.first_port + (start + i) % count;
      if (taken.count(candidate) == 0) found = candidate;
    }
    if (found == 0) {
      result->internal_error = "failed to allocate a nodePort: range is full";
      return;
    }
    (*p)["nodePort"] = found;
    taken.insert(found);
  }
}

AdmitResult AdmitService(const Result<ServiceRanges>& ranges, const AdmitRequest& req) {
  AdmitResult r;
  if (req.object == nullptr || req.op == Operation::kDelete) return r;
  Json& svc = *req.object;
  GoDecoder decoder(&r.unknown_fields);
  decoder.Struct(svc, ServiceShape(), "", "");
  if (!decoder.error().empty()) {
    r.decode_error = decoder.error();
    return r;
  }
  if (req.field_validation == FieldValidation::kIgnore) r.unknown_fields.clear();
  if (req.status_subresource) return r;  // ValidateServiceStatusUpdate: ingress IPs only

  const Json* old = req.op == Operation::kUpdate ? req.old_object : nullptr;
  if (old != nullptr) KeepAllocated(svc, *old);
  Default(svc);
  ValidateSpec(svc, &r.invalid);
  if (old != nullptr) {
    const std::string before = Str(*old, {"spec", "clusterIP"});
    const std::string after = Str(svc, {"spec", "clusterIP"});
    if (!before.empty() && after != before) {
      r.invalid.push_back(FieldInvalid("spec.clusterIP", Quote(after), "field is immutable"));
    }
  }
  if (!r.invalid.empty()) return r;
  if (!ranges) {
    r.internal_error = ranges.error().message;
    return r;
  }
  if (req.list == nullptr) {
    r.internal_error = "services are admitted without access to the other services";
    return r;
  }
  Allocate(*ranges, *req.list, svc, old, &r);
  return r;
}

std::vector<Json> ServiceCells(const Json& svc, WallClock::time_point now) {
  const std::vector<std::string> ips = Strings(At(svc, {"spec", "clusterIPs"}));
  const std::vector<std::string> external = Strings(At(svc, {"spec", "externalIPs"}));
  std::string external_text;
  for (const auto& e : external) external_text += (external_text.empty() ? "" : ",") + e;
  const Json* ports = At(svc, {"spec", "ports"});
  std::string ports_text = ports ? ServicePortsString(*ports) : std::string();
  std::string selector;
  if (const Json* sel = At(svc, {"spec", "selector"}); sel && sel->is_object()) {
    for (const auto& [k, v] : sel->items()) {  // sorted, as labels.FormatLabels
      selector +=
          (selector.empty() ? "" : ",") + k + "=" + (v.is_string() ? v.get<std::string>() : "");
    }
  }
  return {Str(svc, {"metadata", "name"}),
          Str(svc, {"spec", "type"}),
          ips.empty() ? std::string("<none>") : ips[0],
          external_text.empty() ? std::string("<none>") : external_text,
          ports_text.empty() ? std::string("<none>") : ports_text,
          HumanAge(Str(svc, {"metadata", "creationTimestamp"}), now),
          selector.empty() ? std::string("<none>") : selector};
}

std::optional<std::string> ServiceField(const Json& svc, const std::string& field) {
  if (field == "spec.clusterIP") return Str(svc, {"spec", "clusterIP"});
  if (field == "spec.type") return Str(svc, {"spec", "type"});
  return std::nullopt;
}

Json Ref(const std::string& name) {
  return {{"allOf", Json::array({{{"$ref", "#/components/schemas/" + name}}})}};
}

Json Described(Json schema, const std::string& description) {
  schema["description"] = description;
  return schema;
}

Json StringSchema(const std::string& description) {
  return {{"type", "string"}, {"description", description}};
}

Json IntSchema(const std::string& description) {
  return {{"type", "integer"}, {"format", "int32"}, {"description", description}};
}

Json StringList(const std::string& description) {
  return {{"type", "array"},
          {"items", {{"type", "string"}, {"default", ""}}},
          {"x-kubernetes-list-type", "atomic"},
          {"description", description}};
}

}  // namespace

Result<ServiceRanges> ParseServiceOptions(const ServiceOptions& options) {
  ServiceRanges r;
  const std::string& cidr = options.service_cidr;
  const auto bad_cidr = [&](const std::string& why) {
    return MakeError(Code::kInvalid, "service CIDR " + Quote(cidr) + ": " + why);
  };
  const size_t slash = cidr.find('/');
  if (slash == std::string::npos) return bad_cidr("not an IPv4 CIDR (a.b.c.d/n)");
  auto net = ParseIpv4(std::string_view(cidr).substr(0, slash));
  auto prefix = ParseInt(std::string_view(cidr).substr(slash + 1));
  if (!net || !prefix) return bad_cidr("not an IPv4 CIDR (a.b.c.d/n)");
  if (*prefix < 12 || *prefix > 30) return bad_cidr("the prefix length must be 12..30");
  const uint32_t mask = ~((1u << (32 - *prefix)) - 1);
  if ((*net & ~mask) != 0) return bad_cidr("host bits are set");
  r.network = *net;
  r.prefix = *prefix;

  const std::string& range = options.node_port_range;
  const size_t dash = range.find('-');
  std::optional<int> a, b;
  if (dash != std::string::npos) {
    a = ParseInt(std::string_view(range).substr(0, dash));
    b = ParseInt(std::string_view(range).substr(dash + 1));
  }
  if (!a || !b || *a < 1 || *b > 65535 || *a > *b) {
    return MakeError(Code::kInvalid, "node port range " + Quote(range) +
                                         ": must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535");
  }
  r.first_port = *a;
  r.last_port = *b;
  return r;
}

std::string ServicePortsString(const Json& ports) {
  std::string out;
  if (!ports.is_array()) return out;
  for (const Json& p : ports) {
    if (!out.empty()) out += ",";
    out += std::to_string(Int(p, "port"));
    if (int64_t np = Int(p, "nodePort"); np > 0) out += ":" + std::to_string(np);
    out += "/" + Str(p, {"protocol"});
  }
  return out;
}

ResourceType ServiceResource(const ServiceOptions& options) {
  ResourceType rt;
  rt.group = "";
  rt.version = "v1";
  rt.kind = "Service";
  rt.list_kind = "ServiceList";
  rt.plural = "services";
  rt.singular = "service";
  rt.short_names = {"svc"};
  rt.categories = {"all"};
  rt.namespaced = true;
  rt.status_subresource = true;
  rt.verbs = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"};
  rt.serialize_writes = true;
  Result<ServiceRanges> ranges = ParseServiceOptions(options);
  rt.admit = [ranges](const AdmitRequest& req) { return AdmitService(ranges, req); };
  // pkg/printers/internalversion: serviceColumnDefinitions (1.32).
  rt.default_columns = false;
  rt.columns = {
      {"Name", "string", "name", "Name must be unique within a namespace.", 0},
      {"Type", "string", "",
       "type determines how the Service is exposed: ClusterIP or NodePort (edgevirt).", 0},
      {"Cluster-IP", "string", "",
       "clusterIP is the IP address of the service, allocated from the service CIDR.", 0},
      {"External-IP", "string", "", "externalIPs (not routed by edgevirt).", 0},
      {"Port(s)", "string", "", "The list of ports that are exposed by this service.", 0},
      {"Age", "string", "",
       "CreationTimestamp is a timestamp representing the server time when this object was "
       "created.",
       0},
      {"Selector", "string", "",
       "Route service traffic to VMIs with label keys and values matching this selector.", 1},
  };
  rt.timed_cells = ServiceCells;
  rt.field_value = ServiceField;
  rt.schema_name = "io.k8s.api.core.v1.Service";
  return rt;
}

Json ServiceSchemas() {
  const std::string meta = "io.k8s.apimachinery.pkg.apis.meta.v1.";
  const std::string core = "io.k8s.api.core.v1.";
  Json s = Json::object();
  s["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {
      {"type", "string"},
      {"format", "int-or-string"},
      {"description", "IntOrString holds an int32 or a string."}};
  s[core + "ServicePort"] = {
      {"type", "object"},
      {"description", "ServicePort contains information on service's port."},
      {"required", {"port"}},
      {"properties",
       {{"appProtocol", StringSchema("The application protocol for this port.")},
        {"name", StringSchema("The name of this port within the service (a DNS-1123 label); "
                              "required when there are several ports.")},
        {"nodePort",
         IntSchema("The port on the host (NodePort services), allocated from the node port "
                   "range when omitted.")},
        {"port", IntSchema("The port that will be exposed by this service.")},
        {"protocol", StringSchema("TCP (the default) or UDP.")},
        {"targetPort",
         Described(Ref("io.k8s.apimachinery.pkg.util.intstr.IntOrString"),
                   "Number or name of the port to access on the VMIs targeted by the service; "
                   "defaults to port.")}}}};
  s[core + "ClientIPConfig"] = {
      {"type", "object"},
      {"description",
       "ClientIPConfig represents the configurations of Client IP based session "
       "affinity."},
      {"properties", {{"timeoutSeconds", IntSchema("Seconds of ClientIP session stickiness.")}}}};
  s[core + "SessionAffinityConfig"] = {
      {"type", "object"},
      {"description", "SessionAffinityConfig represents the configurations of session affinity."},
      {"properties", {{"clientIP", Ref(core + "ClientIPConfig")}}}};
  s[core + "ServiceSpec"] = {
      {"type", "object"},
      {"description", "ServiceSpec describes the attributes that a user creates on a service."},
      {"properties",
       {{"allocateLoadBalancerNodePorts", {{"type", "boolean"}}},
        {"clusterIP", StringSchema("The IP address of the service; allocated when empty, "
                                   "\"None\" for a headless service.")},
        {"clusterIPs", StringList("The IP addresses of the service (one: IPv4 only).")},
        {"externalIPs", StringList("Not supported by edgevirt.")},
        {"externalName", StringSchema("Not supported by edgevirt.")},
        {"externalTrafficPolicy", StringSchema("Cluster or Local.")},
        {"healthCheckNodePort", IntSchema("Not supported by edgevirt.")},
        {"internalTrafficPolicy", StringSchema("Cluster or Local.")},
        {"ipFamilies", StringList("IPv4.")},
        {"ipFamilyPolicy", StringSchema("SingleStack or PreferDualStack.")},
        {"loadBalancerClass", StringSchema("Not supported by edgevirt.")},
        {"loadBalancerIP", StringSchema("Not supported by edgevirt.")},
        {"loadBalancerSourceRanges", StringList("Not supported by edgevirt.")},
        {"ports",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/" + core + "ServicePort"}}},
          {"x-kubernetes-list-map-keys", {"port", "protocol"}},
          {"x-kubernetes-list-type", "map"},
          {"x-kubernetes-patch-merge-key", "port"},
          {"x-kubernetes-patch-strategy", "merge"},
          {"description", "The list of ports that are exposed by this service."}}},
        {"publishNotReadyAddresses", {{"type", "boolean"}}},
        {"selector",
         {{"type", "object"},
          {"additionalProperties", {{"type", "string"}, {"default", ""}}},
          {"x-kubernetes-map-type", "atomic"},
          {"description", "Route service traffic to VMIs with labels matching this selector."}}},
        {"sessionAffinity", StringSchema("None or ClientIP.")},
        {"sessionAffinityConfig", Ref(core + "SessionAffinityConfig")},
        {"trafficDistribution", StringSchema("PreferClose.")},
        {"type", StringSchema("ClusterIP (the default) or NodePort; edgevirt does not serve "
                              "LoadBalancer and ExternalName.")}}}};
  s[core + "PortStatus"] = {{"type", "object"},
                            {"required", {"port", "protocol"}},
                            {"properties",
                             {{"error", {{"type", "string"}}},
                              {"port", {{"type", "integer"}, {"format", "int32"}}},
                              {"protocol", {{"type", "string"}}}}}};
  s[core + "LoadBalancerIngress"] = {
      {"type", "object"},
      {"properties",
       {{"hostname", {{"type", "string"}}},
        {"ip", {{"type", "string"}}},
        {"ipMode", {{"type", "string"}}},
        {"ports",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/" + core + "PortStatus"}}},
          {"x-kubernetes-list-type", "atomic"}}}}}};
  s[core + "LoadBalancerStatus"] = {
      {"type", "object"},
      {"properties",
       {{"ingress",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/" + core + "LoadBalancerIngress"}}},
          {"x-kubernetes-list-type", "atomic"}}}}}};
  s[meta + "Condition"] = {
      {"type", "object"},
      {"required", {"type", "status", "lastTransitionTime", "reason", "message"}},
      {"properties",
       {{"lastTransitionTime", Ref(meta + "Time")},
        {"message", {{"type", "string"}, {"default", ""}}},
        {"observedGeneration", {{"type", "integer"}, {"format", "int64"}}},
        {"reason", {{"type", "string"}, {"default", ""}}},
        {"status", {{"type", "string"}, {"default", ""}}},
        {"type", {{"type", "string"}, {"default", ""}}}}}};
  s[core + "ServiceStatus"] = {
      {"type", "object"},
      {"description", "ServiceStatus represents the current status of a service."},
      {"properties",
       {{"conditions",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/" + meta + "Condition"}}},
          {"x-kubernetes-list-map-keys", {"type"}},
          {"x-kubernetes-list-type", "map"},
          {"x-kubernetes-patch-merge-key", "type"},
          {"x-kubernetes-patch-strategy", "merge"}}},
        {"loadBalancer", Ref(core + "LoadBalancerStatus")}}}};
  s[core + "Service"] = {
      {"type", "object"},
      {"description",
       "Service is a named abstraction of software service (for example, mysql) consisting of "
       "local port (for example 3306) that the proxy listens on, and the selector that "
       "determines which VMIs will answer requests sent through the proxy; edgevirtd forwards "
       "the nodePorts of NodePort services on the host."},
      {"properties",
       {{"apiVersion", StringSchema("Always \"v1\".")},
        {"kind", StringSchema("Always \"Service\".")},
        {"metadata", Described(Ref(meta + "ObjectMeta"), "Standard object's metadata.")},
        {"spec", Described(Ref(core + "ServiceSpec"), "The behavior of the service.")},
        {"status", Described(Ref(core + "ServiceStatus"), "The status of the service.")}}},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "Service"}, {"version", "v1"}}})}};
  s[core + "ServiceList"] = {
      {"type", "object"},
      {"description", "ServiceList holds a list of services."},
      {"required", {"items"}},
      {"properties",
       {{"apiVersion", {{"type", "string"}}},
        {"items",
         {{"type", "array"}, {"items", {{"$ref", "#/components/schemas/" + core + "Service"}}}}},
        {"kind", {{"type", "string"}}},
        {"metadata", Ref(meta + "ListMeta")}}},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "ServiceList"}, {"version", "v1"}}})}};
  return s;
}

}  // namespace edgevirt::api::machinery
