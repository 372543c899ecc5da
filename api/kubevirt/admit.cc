// Defaulting and validation follow KubeVirt v1.0 (kv@v1.0.x):
//   pkg/virt-api/webhooks/mutating-webhook/mutators/{vm,vmi}-mutator.go, pkg/virt-api/webhooks/
//   defaults.go, amd64.go, staging/src/kubevirt.io/api/core/v1/defaults.go, pkg/util/util.go,
//   pkg/virt-config (SetVMISpecDefaultNetworkInterface), and pkg/virt-api/webhooks/validating-
//   webhook/admitters/{vms-admitter,vmi-create-admitter,vmi-update-admitter}.go.
// Messages are KubeVirt's text; README.md lists where edgevirt deliberately differs.
#include "api/kubevirt/admit.h"

#include <algorithm>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "api/kubevirt/quantity.h"
#include "api/kubevirt/uuid.h"

namespace edgevirt::api::kubevirt {
namespace {

constexpr int kArrayLenMax = 256;
constexpr size_t kMaxStrLen = 256;
constexpr size_t kCloudInitUserMaxLen = 2048;
constexpr size_t kCloudInitNetworkMaxLen = 2048;
constexpr std::string_view kMasqueradeReservedMac = "02:00:00:00:00:00";

using Causes = std::vector<StatusCause>;

// JSON text of a value; invalid UTF-8 from YAML bodies becomes U+FFFD instead of throwing.
std::string Dump(const Json& v) { return v.dump(-1, ' ', false, Json::error_handler_t::replace); }

// ---- small JSON helpers ----------------------------------------------------------------------

const Json* Get(const Json* obj, std::string_view key) {
  if (obj == nullptr || !obj->is_object()) return nullptr;
  auto it = obj->find(key);
  if (it == obj->end() || it->is_null()) return nullptr;
  return &*it;
}
const Json* Get(const Json& obj, std::string_view key) { return Get(&obj, key); }

template <typename... Keys>
const Json* Path(const Json* obj, std::string_view first, Keys... rest) {
  const Json* v = Get(obj, first);
  if constexpr (sizeof...(rest) == 0) {
    return v;
  } else {
    return Path(v, rest...);
  }
}

std::string Str(const Json* v) {
  return v != nullptr && v->is_string() ? v->get<std::string>() : "";
}
bool Bool(const Json* v, bool fallback) {
  return v != nullptr && v->is_boolean() ? v->get<bool>() : fallback;
}
std::optional<int64_t> Int(const Json* v) {
  if (v == nullptr || !v->is_number()) return std::nullopt;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    return u > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(u);
  }
  if (v->is_number_float()) return static_cast<int64_t>(v->get<double>());
  return v->get<int64_t>();
}
size_t Size(const Json* v) { return v != nullptr && v->is_array() ? v->size() : 0; }
const Json& Empty() {
  static const Json kEmpty = Json::array();
  return kEmpty;
}
const Json& Arr(const Json* v) { return v != nullptr && v->is_array() ? *v : Empty(); }

std::optional<Quantity> Qty(const Json* v) {
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return Quantity::Parse(v->get<std::string>());
  if (v->is_number()) return Quantity::Parse(v->dump());
  return std::nullopt;
}
Quantity ZeroQty() { return *Quantity::Parse("0"); }
Quantity QtyOrZero(const Json* v) { return Qty(v).value_or(ZeroQty()); }

Json& Obj(Json& parent, const std::string& key) {
  Json& v = parent[key];
  if (!v.is_object()) v = Json::object();
  return v;
}

std::string Idx(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

void Add(Causes* c, std::string reason, std::string message, std::string field) {
  c->push_back({std::move(reason), std::move(message), std::move(field)});
}

// ---- Kubernetes name rules (k8s.io/apimachinery/pkg/util/validation) -------------------------

// The patterns below are matched by hand: std::regex costs microseconds per match on a path
// that runs for every disk, volume and interface of every write. Each matcher accepts exactly
// what the regex in its comment accepts (checked against std::regex on every byte and on random
// strings when they were written).

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsAlnum(char c) { return IsLowerAlnum(c) || (c >= 'A' && c <= 'Z'); }
bool IsHex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$
bool MatchesDns1123Label(std::string_view v) {
  if (v.empty() || v.front() == '-' || v.back() == '-') return false;
  return std::all_of(v.begin(), v.end(), [](char c) { return IsLowerAlnum(c) || c == '-'; });
}

// ^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$: labels joined by dots.
bool MatchesDns1123Subdomain(std::string_view v) {
  for (;;) {
    size_t dot = v.find('.');
    if (!MatchesDns1123Label(v.substr(0, dot))) return false;
    if (dot == std::string_view::npos) return true;
    v.remove_prefix(dot + 1);
  }
}

// ^[A-Za-z0-9_.+-]+$
bool MatchesSerial(std::string_view v) {
  return !v.empty() && std::all_of(v.begin(), v.end(), [](char c) {
    return IsAlnum(c) || c == '_' || c == '.' || c == '+' || c == '-';
  });
}

std::vector<std::string> IsDns1123Label(const std::string& v) {
  std::vector<std::string> errs;
  if (v.size() > 63) errs.push_back("must be no more than 63 characters");
  if (!MatchesDns1123Label(v)) {
    errs.push_back(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
        "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
        "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')");
  }
  return errs;
}

std::vector<std::string> IsDns1123Subdomain(const std::string& v) {
  std::vector<std::string> errs;
  if (v.size() > 253) errs.push_back("must be no more than 253 characters");
  if (!MatchesDns1123Subdomain(v)) {
    errs.push_back(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
        "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
        "regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
  }
  return errs;
}

bool IsValidPortName(const std::string& v) {
  if (v.empty() || v.size() > 15) return false;
  // ^[-a-z0-9]+$ and [a-z] somewhere.
  if (!std::all_of(v.begin(), v.end(), [](char c) { return IsLowerAlnum(c) || c == '-'; })) {
    return false;
  }
  if (std::none_of(v.begin(), v.end(), [](char c) { return c >= 'a' && c <= 'z'; })) return false;
  if (v.find("--") != std::string::npos) return false;
  return v.front() != '-' && v.back() != '-';
}

std::string Join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

// Go's net.ParseMAC: the number of bytes, or 0 when malformed.
size_t ParseMacLen(const std::string& s) {
  auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  if (s.size() < 14) return 0;
  if (s[2] == ':' || s[2] == '-') {
    if ((s.size() + 1) % 3 != 0) return 0;
    size_t n = (s.size() + 1) / 3;
    if (n != 6 && n != 8 && n != 20) return 0;
    for (size_t i = 0, x = 0; i < n; ++i, x += 3) {
      if (!hex(s[x]) || !hex(s[x + 1])) return 0;
      if (i + 1 < n && s[x + 2] != s[2]) return 0;
    }
    return n;
  }
  if (s[4] == '.') {
    if ((s.size() + 1) % 5 != 0) return 0;
    size_t n = 2 * (s.size() + 1) / 5;
    if (n != 6 && n != 8 && n != 20) return 0;
    for (size_t i = 0, x = 0; i < n; i += 2, x += 5) {
      for (int k = 0; k < 4; ++k) {
        if (!hex(s[x + k])) return 0;
      }
      if (i + 2 < n && s[x + 4] != '.') return 0;
    }
    return n;
  }
  return 0;
}

bool IsPciAddress(const std::string& s) {
  // ^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7]{1})$
  if (s.size() != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
    if (!IsHex(s[i])) return false;
  }
  return s[11] >= '0' && s[11] <= '7';
}

// Go's base64.StdEncoding.DecodeString: decoded length, or nullopt when malformed.
std::optional<size_t> Base64DecodedLen(const std::string& s) {
  size_t pad = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool alpha = std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/';
    if (c == '=') {
      ++pad;
      continue;
    }
    if (!alpha || pad > 0) return std::nullopt;
  }
  if (s.size() % 4 != 0 || pad > 2) return std::nullopt;
  return s.size() / 4 * 3 - pad;
}

// filepath.Join("/", path) compared with path minus trailing slashes (validatePath).
bool IsCleanAbsolutePath(const std::string& path) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part == "..") {
      if (!out.empty()) out.pop_back();
    } else if (!part.empty() && part != ".") {
      out.push_back(part);
    }
    start = end + 1;
  }
  std::string cleaned = "/" + Join(out, "/");
  std::string provided = path;
  while (!provided.empty() && provided.back() == '/') provided.pop_back();
  return cleaned == provided;
}

// ---- defaulting ------------------------------------------------------------------------------

std::string RandomUuid(const KubevirtOptions& opt) {
  return opt.random_uuid ? opt.random_uuid() : RandomUuidV4();
}

// defaults.go setDefaultMachineType / VM mutator setDefaultMachineType.
void DefaultMachineType(Json& spec, const KubevirtOptions& opt) {
  Json& machine = Obj(Obj(spec, "domain"), "machine");
  if (Str(Get(machine, "type")).empty()) machine["type"] = opt.machine_type;
}

void DefaultArchitecture(Json& spec, const KubevirtOptions& opt) {
  if (Str(Get(spec, "architecture")).empty()) spec["architecture"] = opt.architecture;
}

// The full VMI spec defaulting of KubeVirt's VMI mutator (SetDefaultVirtualMachineInstance).
void DefaultVmiSpec(Json& spec, const KubevirtOptions& opt) {
  DefaultArchitecture(spec, opt);
  DefaultMachineType(spec, opt);
  Json& domain = Obj(spec, "domain");
  Json& resources = Obj(domain, "resources");  // Go always serialises this struct

  // setDefaultResourceRequests
  const Json* limits = Get(resources, "limits");
  auto requests_of = [&]() -> Json& { return Obj(resources, "requests"); };
  if (!QtyOrZero(Path(limits, "cpu")).IsZero() &&
      QtyOrZero(Path(&resources, "requests", "cpu")).IsZero()) {
    Json cpu = limits->at("cpu");
    requests_of()["cpu"] = cpu;
  }
  limits = Get(resources, "limits");
  if (!QtyOrZero(Path(limits, "memory")).IsZero() &&
      QtyOrZero(Path(&resources, "requests", "memory")).IsZero()) {
    Json memory = limits->at("memory");
    requests_of()["memory"] = memory;
  }
  if (Path(&resources, "requests", "memory") == nullptr) {
    std::optional<Quantity> guest = Qty(Path(&domain, "memory", "guest"));
    if (guest && guest->Value() > 0) requests_of()["memory"] = guest->String();
  }
  std::optional<Quantity> cpu_request = Quantity::Parse(opt.cpu_request);
  if (cpu_request && cpu_request->Compare(*Quantity::Parse("100m")) != 0 &&
      Path(&resources, "requests", "cpu") == nullptr) {
    requests_of()["cpu"] = cpu_request->String();
  }

  // setGuestMemory (memory.guest from requests, else limits).
  if (Path(&domain, "memory", "guest") == nullptr) {
    std::optional<Quantity> req = Qty(Path(&resources, "requests", "memory"));
    std::optional<Quantity> lim = Qty(Path(&resources, "limits", "memory"));
    if (req && !req->IsZero()) {
      Obj(domain, "memory")["guest"] = req->String();
    } else if (lim && !lim->IsZero()) {
      Obj(domain, "memory")["guest"] = lim->String();
    }
  }

  // SetDefaultGuestCPUTopology
  const Json* cpu = Get(domain, "cpu");
  int64_t cores = Int(Get(cpu, "cores")).value_or(0);
  int64_t sockets = Int(Get(cpu, "sockets")).value_or(0);
  int64_t threads = Int(Get(cpu, "threads")).value_or(0);
  if (cores == 0 && sockets == 0 && threads == 0) {
    int64_t s = 1;
    if (auto lim = Qty(Path(&resources, "limits", "cpu"))) {
      s = lim->Value();
    } else if (auto req = Qty(Path(&resources, "requests", "cpu"))) {
      s = req->Value();
    }
    Json& c = Obj(domain, "cpu");
    c["sockets"] = static_cast<uint32_t>(s);
    c["cores"] = 1;
    c["threads"] = 1;
  }

  // setDefaultPullPoliciesOnContainerDisks
  if (spec.contains("volumes") && spec["volumes"].is_array()) {
    for (Json& volume : spec["volumes"]) {
      Json* cd = volume.is_object() && volume.contains("containerDisk") ? &volume["containerDisk"]
                                                                        : nullptr;
      if (cd == nullptr || !cd->is_object() || !Str(Get(*cd, "imagePullPolicy")).empty()) continue;
      std::string image = Str(Get(*cd, "image"));
      bool latest = image.size() >= 7 && image.compare(image.size() - 7, 7, ":latest") == 0;
      bool untagged = image.find_first_of(":@") == std::string::npos;
      (*cd)["imagePullPolicy"] = latest || untagged ? "Always" : "IfNotPresent";
    }
  }

  // setDefaultEvictionStrategy
  if (Get(spec, "evictionStrategy") == nullptr && !opt.default_eviction_strategy.empty()) {
    spec["evictionStrategy"] = opt.default_eviction_strategy;
  }

  // SetVMISpecDefaultNetworkInterface
  Json& devices = Obj(domain, "devices");
  if (Bool(Get(devices, "autoattachPodInterface"), true) && Size(Get(spec, "networks")) == 0 &&
      Size(Get(devices, "interfaces")) == 0) {
    devices["interfaces"] =
        Json::array({{{"name", "default"}, {opt.default_network_interface, Json::object()}}});
    spec["networks"] = Json::array({{{"name", "default"}, {"pod", Json::object()}}});
  }

  // util.SetDefaultVolumeDisk
  std::set<std::string> disk_names;
  for (const Json& d : Arr(Get(devices, "disks"))) disk_names.insert(Str(Get(d, "name")));
  for (const Json& v : Arr(Get(spec, "volumes"))) {
    std::string name = Str(Get(v, "name"));
    if (!disk_names.count(name)) {
      if (!devices["disks"].is_array()) devices["disks"] = Json::array();
      devices["disks"].push_back({{"name", name}});
      disk_names.insert(name);
    }
  }

  // SetObjectDefaults_VirtualMachineInstance / SetDefaults_VirtualMachineInstance
  Json& firmware = Obj(domain, "firmware");
  if (Str(Get(firmware, "uuid")).empty()) firmware["uuid"] = RandomUuid(opt);
  Json& features = Obj(domain, "features");
  Json& acpi = Obj(features, "acpi");  // a value field in Go: always present
  if (Get(acpi, "enabled") == nullptr) acpi["enabled"] = true;
  for (const char* f : {"apic", "smm"}) {
    if (features.contains(f) && features[f].is_object() && Get(features[f], "enabled") == nullptr) {
      features[f]["enabled"] = true;
    }
  }
  if (devices.contains("disks") && devices["disks"].is_array()) {
    for (Json& disk : devices["disks"]) {
      if (!disk.is_object()) continue;
      if (Get(disk, "disk") == nullptr && Get(disk, "cdrom") == nullptr &&
          Get(disk, "lun") == nullptr) {
        disk["disk"] = Json::object();
      }
      if (Get(disk, "cdrom") != nullptr) {
        Json& cd = disk["cdrom"];
        if (Get(cd, "readonly") == nullptr) cd["readonly"] = true;
        if (Str(Get(cd, "tray")).empty()) cd["tray"] = "closed";
      }
      // amd64.go setDefaultAmd64DisksBus / defaults.go setDefaults_Disk: SATA.
      for (const char* target : {"disk", "cdrom", "lun"}) {
        if (Get(disk, target) != nullptr && Str(Get(disk[target], "bus")).empty()) {
          disk[target]["bus"] = "sata";
        }
      }
    }
  }
  // setDefaultCPUModel
  Json& c = Obj(domain, "cpu");
  if (Str(Get(c, "model")).empty())
    c["model"] = opt.cpu_model.empty() ? "host-model" : opt.cpu_model;
}

// What KubeVirt's VM mutator persists on the VM: machine type and architecture; Go
// serialisation also always writes template.metadata (creationTimestamp: null) and
// domain.resources.
void DefaultVmTemplate(Json& vm_spec, const KubevirtOptions& opt) {
  Json* tmpl = vm_spec.contains("template") && vm_spec["template"].is_object()
                   ? &vm_spec["template"]
                   : nullptr;
  if (tmpl == nullptr) return;
  Json& meta = Obj(*tmpl, "metadata");
  if (!meta.contains("creationTimestamp")) meta["creationTimestamp"] = nullptr;
  Json& spec = Obj(*tmpl, "spec");
  DefaultArchitecture(spec, opt);
  DefaultMachineType(spec, opt);
  Json& domain = Obj(spec, "domain");
  Obj(domain, "resources");
  Obj(domain, "devices");
}

// ---- validation ------------------------------------------------------------------------------

const std::set<std::string>& RestrictedLabels() {
  static const std::set<std::string> kLabels = {
      "kubevirt.io/created-by",  "kubevirt.io/migrationJobUID",
      "kubevirt.io/nodeName",    "kubevirt.io/migrationTargetNodeName",
      "kubevirt.io/schedulable", "kubevirt.io/install-strategy"};
  return kLabels;
}

std::map<std::string, std::string> FilterRestricted(const Json* labels) {
  std::map<std::string, std::string> out;
  if (labels == nullptr || !labels->is_object()) return out;
  for (const auto& [k, v] : labels->items()) {
    if (RestrictedLabels().count(k)) out[k] = v.is_string() ? v.get<std::string>() : Dump(v);
  }
  return out;
}

// ValidateVirtualMachineInstanceMetadata (the parts that apply without feature gates).
void ValidateMetadata(const std::string& field, const Json* meta, Causes* c) {
  if (!FilterRestricted(Get(meta, "labels")).empty()) {
    Add(c, "FieldValueNotSupported",
        "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited",
        field + ".labels");
  }
}

class SpecValidator {
 public:
  SpecValidator(const AdmitOptions& opt, std::string field, const Json& spec, Causes* causes)
      : opt_(opt.options),
        machine_patterns_(opt.machine_patterns),
        f_(std::move(field)),
        spec_(spec),
        c_(causes) {}

  // ValidateVirtualMachineInstanceSpec, in KubeVirt's order.
  void Run() {
    domain_ = Get(spec_, "domain");
    devices_ = Get(domain_, "devices");
    resources_ = Get(domain_, "resources");
    const std::string disks_f = f_ + ".domain.devices.disks";
    if (Size(Get(devices_, "disks")) > kArrayLenMax) {
      return Add(c_, "FieldValueInvalid", ListTooLong(disks_f), disks_f);
    }
    if (Size(Get(spec_, "volumes")) > kArrayLenMax) {
      return Add(c_, "FieldValueInvalid", ListTooLong(f_ + ".volumes"), f_ + ".volumes");
    }
    Hostname();
    Memory();
    MachineType();
    FirmwareSerial();
    Cpu();
    StartStrategy();
    Architecture();
    std::string ifaces_f = f_ + ".domain.devices.interfaces";
    if (Size(Get(devices_, "interfaces")) > kArrayLenMax) {
      return Add(c_, "FieldValueInvalid", ListTooLong(ifaces_f), ifaces_f);
    }
    if (Size(Get(spec_, "networks")) > kArrayLenMax) {
      return Add(c_, "FieldValueInvalid", ListTooLong(f_ + ".networks"), f_ + ".networks");
    }
    if (PodInterfaces() > 1) {
      // KubeVirt reports this at "<spec>.interfaces"; edgevirt names the real list.
      return Add(c_, "FieldValueDuplicate",
                 "more than one interface is connected to a pod network in " + ifaces_f, ifaces_f);
    }
    std::map<int64_t, bool> boot_orders;
    DiskVolumeMapping(&boot_orders);
    bool pod_exists = false;
    int multus_default = 0;
    Networks(&pod_exists, &multus_default);
    if (multus_default > 1) {
      Add(c_, "FieldValueInvalid", "Multus CNI should only have one default network",
          f_ + ".networks");
    }
    if (pod_exists && multus_default > 0) {
      Add(c_, "FieldValueInvalid",
          "Pod network cannot be defined when Multus default network is defined", f_ + ".networks");
    }
    std::set<std::string> iface_names;
    Interfaces(&boot_orders, &iface_names);
    NetworksAssigned(iface_names);
    Disks();
    Firmware();
    Volumes();
    EdgevirtRules();
  }

 private:
  static std::string ListTooLong(const std::string& f) {
    return f + " list exceeds the 256 element limit in length";
  }

  void Hostname() {
    std::string hostname = Str(Get(spec_, "hostname"));
    if (!hostname.empty()) {
      auto errs = IsDns1123Label(hostname);
      if (!errs.empty()) {
        Add(c_, "FieldValueInvalid",
            f_ + ".hostname does not conform to the kubernetes DNS_LABEL rules : " +
                Join(errs, ", "),
            f_ + ".hostname");
      }
    }
    std::string subdomain = Str(Get(spec_, "subdomain"));
    if (!subdomain.empty()) {
      auto errs = IsDns1123Subdomain(subdomain);
      if (!errs.empty()) {
        Add(c_, "FieldValueInvalid",
            f_ + ".subdomain does not conform to the kubernetes DNS_SUBDOMAIN rules : " +
                Join(errs, ", "),
            f_ + ".subdomain");
      }
    }
  }

  void Memory() {
    const std::string req_f = f_ + ".domain.resources.requests.memory";
    const std::string lim_f = f_ + ".domain.resources.limits.memory";
    Quantity req = QtyOrZero(Path(resources_, "requests", "memory"));
    Quantity lim = QtyOrZero(Path(resources_, "limits", "memory"));
    if (req.Value() < 0) {
      Add(c_, "FieldValueInvalid",
          req_f + " '" + req.String() + "': must be greater than or equal to 0.", req_f);
    } else if (req.Value() > 0 && req.Compare(*Quantity::Parse("1M")) < 0) {
      Add(c_, "FieldValueInvalid",
          req_f + " '" + req.String() + "': must be greater than or equal to 1M.", req_f);
    }
    if (lim.Value() < 0) {
      Add(c_, "FieldValueInvalid",
          lim_f + " '" + lim.String() + "': must be greater than or equal to 0.", lim_f);
    }
    if (lim.Value() > 0 && req.Value() > lim.Value()) {
      Add(c_, "FieldValueInvalid",
          req_f + " '" + req.String() + "' is greater than " + lim_f + " '" + lim.String() + "'",
          req_f);
    }
    if (auto guest = Qty(Path(domain_, "memory", "guest"))) {
      if (lim.Value() < guest->Value() && lim.Value() != 0) {
        std::string g_f = f_ + ".domain.memory.guest";
        Add(c_, "FieldValueInvalid",
            g_f + " '" + guest->String() + "' must be equal to or less than the memory limit " +
                lim_f + " '" + lim.String() + "'",
            g_f);
      }
    }
  }

  void MachineType() {
    std::string type = Str(Path(domain_, "machine", "type"));
    if (type.empty()) return;
    for (const auto& pattern : machine_patterns_) {
      if (pattern && std::regex_search(type, *pattern)) return;
    }
    std::string f = f_ + ".domain.machine.type";
    Add(c_, "FieldValueInvalid",
        f + " is not supported: " + type + " (allowed values: [" +
            Join(opt_.emulated_machines, " ") + "])",
        f);
  }

  void FirmwareSerial() {
    std::string serial = Str(Path(domain_, "firmware", "serial"));
    if (serial.empty()) return;
    std::string f = f_ + ".domain.firmware.serial";
    if (serial.size() > kMaxStrLen) {
      Add(c_, "FieldValueInvalid", f + " must be less than or equal to 256 in length, if specified",
          f);
    }
    if (!MatchesSerial(serial)) {
      Add(c_, "FieldValueInvalid",
          f + " must be made up of the following characters [A-Za-z0-9_.+-], if specified", f);
    }
  }

  void Cpu() {
    const std::string req_f = f_ + ".domain.resources.requests.cpu";
    const std::string lim_f = f_ + ".domain.resources.limits.cpu";
    Quantity req = QtyOrZero(Path(resources_, "requests", "cpu"));
    Quantity lim = QtyOrZero(Path(resources_, "limits", "cpu"));
    if (req.MilliValue() < 0) {
      Add(c_, "FieldValueInvalid",
          req_f + " '" + req.String() + "': must be greater than or equal to 0.", req_f);
    }
    if (lim.MilliValue() < 0) {
      Add(c_, "FieldValueInvalid",
          lim_f + " '" + lim.String() + "': must be greater than or equal to 0.", lim_f);
    }
    if (lim.MilliValue() > 0 && req.MilliValue() > lim.MilliValue()) {
      Add(c_, "FieldValueInvalid",
          req_f + " '" + req.String() + "' is greater than " + lim_f + " '" + lim.String() + "'",
          req_f);
    }
  }

  void StartStrategy() {
    const Json* s = Get(spec_, "startStrategy");
    if (s != nullptr && Str(s) != "Paused") {
      std::string f = f_ + ".startStrategy";
      Add(c_, "FieldValueInvalid", f + " is set with an unrecognized option: " + Str(s), f);
    }
  }

  void Architecture() {
    std::string arch = Str(Get(spec_, "architecture"));
    if (!arch.empty() && arch != opt_.architecture) {
      std::string f = f_ + ".architecture";
      Add(c_, "FieldValueRequired",
          "multi-architecture feature gate is not enabled in kubevirt-config, invalid entry " + f,
          f);
    }
  }

  int PodInterfaces() const {
    int n = 0;
    for (const Json& net : Arr(Get(spec_, "networks"))) {
      if (Get(net, "pod") == nullptr) continue;
      for (const Json& iface : Arr(Get(devices_, "interfaces"))) {
        if (Str(Get(iface, "name")) == Str(Get(net, "name"))) {
          ++n;
          break;
        }
      }
    }
    return n;
  }

  const Json* Volume(const std::string& name) const {
    for (const Json& v : Arr(Get(spec_, "volumes"))) {
      if (Str(Get(v, "name")) == name) return &v;
    }
    return nullptr;
  }
  const Json* Network(const std::string& name) const {
    const Json* found = nullptr;
    for (const Json& n : Arr(Get(spec_, "networks"))) {
      if (Str(Get(n, "name")) == name) found = &n;  // the last one wins, as in KubeVirt's map
    }
    return found;
  }

  // validateBootOrder (disks part): disk -> volume mapping, lun sources, duplicate boot orders.
  void DiskVolumeMapping(std::map<int64_t, bool>* boot_orders) {
    const std::string disks_f = f_ + ".domain.devices.disks";
    const Json& disks = Arr(Get(devices_, "disks"));
    for (size_t i = 0; i < disks.size(); ++i) {
      const Json& disk = disks[i];
      std::string name = Str(Get(disk, "name"));
      const Json* volume = Volume(name);
      if (volume == nullptr) {
        Add(c_, "FieldValueInvalid", Idx(disks_f, i) + ".Name '" + name + "' not found.",
            Idx(disks_f, i) + ".name");
      }
      if (Get(disk, "lun") != nullptr && volume != nullptr &&
          Get(*volume, "persistentVolumeClaim") == nullptr) {
        std::string f = Idx(disks_f, i) + ".lun";
        Add(c_, "FieldValueInvalid",
            f + " can only be mapped to a DataVolume or PersistentVolumeClaim volume.", f);
      }
      if (auto order = Int(Get(disk, "bootOrder"))) {
        if ((*boot_orders)[*order]) {
          std::string f = Idx(disks_f, i) + ".bootOrder";
          Add(c_, "FieldValueInvalid",
              "Boot order for " + f + " already set for a different device.", f);
        }
        (*boot_orders)[*order] = true;
      }
    }
  }

  // validateNetworks
  void Networks(bool* pod_exists, int* multus_default) {
    const Json& nets = Arr(Get(spec_, "networks"));
    for (size_t i = 0; i < nets.size(); ++i) {
      const Json& net = nets[i];
      int types = 0;
      bool name_ok = true;
      if (Get(net, "pod") != nullptr) {
        ++types;
        *pod_exists = true;
      }
      if (const Json* multus = Get(net, "multus")) {
        ++types;
        name_ok = !Str(Get(multus, "networkName")).empty();
        if (Bool(Get(multus, "default"), false)) ++*multus_default;
      }
      std::string f = Idx(f_ + ".networks", i);
      if (types == 0) Add(c_, "FieldValueRequired", "should have a network type", f);
      if (types > 1) Add(c_, "FieldValueRequired", "should have only one network type", f);
      if (!name_ok)
        Add(c_, "FieldValueRequired", "CNI delegating plugin must have a networkName", f);
    }
  }

  // validateNetworksMatchInterfaces
  void Interfaces(std::map<int64_t, bool>* boot_orders, std::set<std::string>* names) {
    static const std::set<std::string> kModels = {"e1000", "e1000e",  "ne2k_pci",
                                                  "pcnet", "rtl8139", "virtio"};
    const std::string ifaces_f = f_ + ".domain.devices.interfaces";
    std::set<std::string> port_names;
    const Json& ifaces = Arr(Get(devices_, "interfaces"));
    for (size_t i = 0; i < ifaces.size(); ++i) {
      const Json& iface = ifaces[i];
      std::string name = Str(Get(iface, "name"));
      std::string at = Idx(ifaces_f, i);
      const Json* net = Network(name);
      if (net == nullptr) {
        Add(c_, "FieldValueInvalid", at + ".name '" + name + "' not found.", at + ".name");
      } else if (Get(iface, "masquerade") != nullptr && Get(*net, "pod") == nullptr) {
        Add(c_, "FieldValueInvalid", "Masquerade interface only implemented with pod network",
            at + ".name");
      } else if (Get(iface, "masquerade") != nullptr &&
                 ToLower(Str(Get(iface, "macAddress"))) == kMasqueradeReservedMac) {
        Add(c_, "FieldValueInvalid",
            "The requested MAC address is reserved for the in-pod bridge. Please choose another "
            "one.",
            at + ".macAddress");
      }
      if (names->count(name)) {
        Add(c_, "FieldValueDuplicate",
            "Only one interface can be connected to one specific network", at + ".name");
      }
      // ^[A-Za-z0-9-_]+$ (std::regex reads "9-_" as '9', '-', '_').
      if (name.empty() || !std::all_of(name.begin(), name.end(),
                                       [](char c) { return IsAlnum(c) || c == '-' || c == '_'; })) {
        Add(c_, "FieldValueInvalid",
            "Network interface name can only contain alphabetical characters, numbers, dashes (-) "
            "or underscores (_)",
            at + ".name");
      }
      names->insert(name);
      if (net != nullptr && Get(*net, "pod") != nullptr) {
        const Json& ports = Arr(Get(iface, "ports"));
        for (size_t p = 0; p < ports.size(); ++p) {
          std::string pf = Idx(at + ".ports", p);
          int64_t port = Int(Get(ports[p], "port")).value_or(0);
          if (port == 0) Add(c_, "FieldValueRequired", "Port field is mandatory.", pf);
          if (port < 0 || port > 65536) {
            Add(c_, "FieldValueInvalid", "Port field must be in range 0 < x < 65536.", pf);
          }
          std::string protocol = Str(Get(ports[p], "protocol"));
          if (!protocol.empty() && protocol != "TCP" && protocol != "UDP") {
            Add(c_, "FieldValueInvalid", "Unknown protocol, only TCP or UDP allowed",
                pf + ".protocol");
          }
          std::string port_name = Str(Get(ports[p], "name"));
          if (!port_name.empty()) {
            if (port_names.count(port_name)) {
              Add(c_, "FieldValueDuplicate", "Duplicate name of the port: " + port_name,
                  pf + ".name");
            }
            if (!IsValidPortName(port_name)) {
              Add(c_, "FieldValueInvalid", "Invalid name of the port: " + port_name, pf + ".name");
            }
            port_names.insert(port_name);
          }
        }
      }
      std::string model = Str(Get(iface, "model"));
      if (!model.empty() && !kModels.count(model)) {
        Add(c_, "FieldValueNotSupported",
            "interface " + at + ".name uses model " + model + " that is not supported.",
            at + ".model");
      }
      std::string mac = Str(Get(iface, "macAddress"));
      if (!mac.empty()) {
        size_t len = ParseMacLen(mac);
        if (len == 0) {
          Add(c_, "FieldValueInvalid",
              "interface " + at + ".name has malformed MAC address (" + mac + ").",
              at + ".macAddress");
        }
        if (len > 6) {
          Add(c_, "FieldValueInvalid",
              "interface " + at + ".name has MAC address (" + mac + ") that is too long.",
              at + ".macAddress");
        }
      }
      if (auto order = Int(Get(iface, "bootOrder"))) {
        // KubeVirt names this "<spec>[i]" (a path bug); edgevirt names the interface.
        if (*order < 1) {
          Add(c_, "FieldValueInvalid", at + " must have a boot order > 0, if supplied",
              at + ".bootOrder");
        } else {
          if ((*boot_orders)[*order]) {
            Add(c_, "FieldValueInvalid",
                "Boot order for " + at + ".bootOrder already set for a different device.",
                at + ".bootOrder");
          }
          (*boot_orders)[*order] = true;
        }
      }
      std::string pci = Str(Get(iface, "pciAddress"));
      if (!pci.empty() && !IsPciAddress(pci)) {
        Add(c_, "FieldValueInvalid",
            "interface " + at + ".name has malformed PCI address (" + pci + ").",
            at + ".pciAddress");
      }
    }
  }

  // validateNetworksAssignedToInterfaces
  void NetworksAssigned(const std::set<std::string>& iface_names) {
    std::set<std::string> seen;
    const Json& nets = Arr(Get(spec_, "networks"));
    for (size_t i = 0; i < nets.size(); ++i) {
      std::string name = Str(Get(nets[i], "name"));
      std::string f = Idx(f_ + ".networks", i) + ".name";
      if (seen.count(name)) {
        Add(c_, "FieldValueDuplicate",
            "Network with name " + Dump(Json(name)) +
                " already exists, every network must have a unique name",
            f);
      }
      seen.insert(name);
      if (!iface_names.count(name)) {
        Add(c_, "FieldValueRequired", f + " '" + name + "' not found.", f);
      }
    }
  }

  // validateDisks
  void Disks() {
    const std::string f = f_ + ".domain.devices.disks";
    std::map<std::string, size_t> names;
    const Json& disks = Arr(Get(devices_, "disks"));
    for (size_t i = 0; i < disks.size(); ++i) {
      const Json& disk = disks[i];
      std::string at = Idx(f, i);
      std::string name = Str(Get(disk, "name"));
      auto prev = names.find(name);
      if (prev == names.end()) {
        names[name] = i;
      } else {
        Add(c_, "FieldValueInvalid",
            at + " and " + Idx(f, prev->second) + " must not have the same Name.", at + ".name");
      }
      int targets = 0;
      std::string type;
      std::string bus;
      for (const char* t : {"disk", "lun", "cdrom"}) {
        if (const Json* target = Get(disk, t)) {
          ++targets;
          type = t;
          bus = Str(Get(target, "bus"));
        }
      }
      if (targets > 1) {
        Add(c_, "FieldValueInvalid", at + " can only have a single target type defined", at);
      }
      if (auto order = Int(Get(disk, "bootOrder")); order && *order < 1) {
        Add(c_, "FieldValueInvalid", at + " must have a boot order > 0, if supplied",
            at + ".bootOrder");
      }
      if (!bus.empty()) {
        if (bus == "ide") {
          Add(c_, "FieldValueInvalid", "IDE bus is not supported", at + "." + type + ".bus");
        } else {
          static const std::set<std::string> kBuses = {"virtio", "scsi", "sata", "usb"};
          if (!kBuses.count(bus)) {
            Add(c_, "FieldValueInvalid",
                at + " is set with an unrecognized bus " + bus +
                    ", must be one of: [virtio scsi sata usb]",
                at + "." + type + ".bus");
          } else if (bus == "usb") {
            Add(c_, "FieldValueNotSupported",
                at + " uses bus usb, which edgevirt does not support (use virtio, sata or scsi)",
                at + "." + type + ".bus");
          }
          if (type == "cdrom" && bus == "virtio") {
            Add(c_, "FieldValueInvalid", "Bus type virtio is invalid for CD-ROM device",
                at + ".cdrom.bus");
          }
          if (type == "disk" && bus == "sata" && Bool(Path(&disk, "disk", "readonly"), false)) {
            Add(c_, "FieldValueInvalid", "sata hard-disks do not support read-only.",
                at + ".disk.bus");
          }
        }
      }
      std::string serial = Str(Get(disk, "serial"));
      if (!serial.empty() && !MatchesSerial(serial)) {
        Add(c_, "FieldValueInvalid",
            at + " must be made up of the following characters [A-Za-z0-9_.+-], if specified",
            at + ".serial");
      }
      if (!serial.empty() && serial.size() > kMaxStrLen) {
        Add(c_, "FieldValueInvalid",
            at + " must be less than or equal to 256 in length, if specified", at + ".serial");
      }
      std::string cache = Str(Get(disk, "cache"));
      if (!cache.empty() && cache != "none" && cache != "writethrough" && cache != "writeback") {
        Add(c_, "FieldValueInvalid", at + ".cache has invalid value " + cache, at + ".cache");
      }
      std::string io = Str(Get(disk, "io"));
      if (!io.empty() && io != "native" && io != "threads") {
        // KubeVirt doubles the path prefix here (a path bug); edgevirt names the field once.
        Add(c_, "FieldValueNotSupported",
            "Disk IO mode for " + at +
                ".io is not supported. Supported modes are: native, threads.",
            at + ".io");
      }
      for (const auto& err : IsDns1123Label(name)) {
        Add(c_, "FieldValueInvalid", err, at + ".name");
      }
    }
  }

  void Firmware() {
    const Json* bootloader = Path(domain_, "firmware", "bootloader");
    std::string bl_f = f_ + ".domain.firmware.bootloader";
    if (Get(bootloader, "efi") != nullptr && Get(bootloader, "bios") != nullptr) {
      Add(c_, "FieldValueInvalid",
          bl_f + " has both EFI and BIOS configured, but they are mutually exclusive.", bl_f);
    }
    if (const Json* efi = Get(bootloader, "efi")) {
      bool secure = Bool(Get(efi, "secureBoot"), true);
      const Json* smm = Path(domain_, "features", "smm");
      bool smm_off = smm == nullptr || !Bool(Get(smm, "enabled"), true);
      if (secure && smm_off) {
        Add(c_, "FieldValueInvalid",
            f_ + ".domain has EFI SecureBoot enabled. SecureBoot requires SMM, which is currently "
                 "disabled.",
            f_ + ".domain");
      }
    }
  }

  // validateVolumes + validateContainerDisks
  void Volumes() {
    const std::string f = f_ + ".volumes";
    std::map<std::string, size_t> names;
    const Json& volumes = Arr(Get(spec_, "volumes"));
    static const char* kSources[] = {"persistentVolumeClaim",
                                     "cloudInitNoCloud",
                                     "cloudInitConfigDrive",
                                     "containerDisk",
                                     "ephemeral",
                                     "emptyDisk",
                                     "hostDisk"};
    for (size_t i = 0; i < volumes.size(); ++i) {
      const Json& volume = volumes[i];
      std::string at = Idx(f, i);
      std::string name = Str(Get(volume, "name"));
      auto prev = names.find(name);
      if (prev == names.end()) {
        names[name] = i;
      } else {
        Add(c_, "FieldValueInvalid",
            at + " and " + Idx(f, prev->second) + " must not have the same Name.", at + ".name");
      }
      int sources = 0;
      for (const char* s : kSources) sources += Get(volume, s) != nullptr ? 1 : 0;
      if (sources != 1) {
        Add(c_, "FieldValueInvalid", at + " must have exactly one source type set", at);
      }
      for (const char* kind : {"cloudInitNoCloud", "cloudInitConfigDrive"}) {
        if (const Json* ci = Get(volume, kind)) {
          CloudInit(at, kind, *ci);
          break;
        }
      }
      if (const Json* hd = Get(volume, "hostDisk")) HostDisk(at, *hd);
      if (const Json* cd = Get(volume, "containerDisk")) {
        std::string path = Str(Get(cd, "path"));
        std::string pf = at + ".containerDisk";
        if (path == "/") {
          Add(c_, "FieldValueInvalid", pf + " must not point to root", pf);
        } else if (!path.empty() && !IsCleanAbsolutePath(path)) {
          Add(c_, "FieldValueInvalid",
              pf + " must be an absolute path to a file without relative components", pf);
        }
      }
    }
  }

  // One cloud-init data kind (user data or network data): its source fields and the wording of
  // KubeVirt's messages about it.
  struct CloudInitData {
    const char* secret_ref;    // "secretRef"
    const char* plain;         // "userData"
    const char* base64;        // "userDataBase64"
    const char* source_label;  // "userdatasource", as in "must have only one <label> set."
    const char* size_label;    // "userdata", as in "<label> exceeds 2048 byte limit."
    const char* secret_label;  // "UserDataSecretRef", the advice for larger data
    size_t max_len;
  };

  // Checks one data kind of a cloud-init volume at `f`; returns how many sources it has set.
  size_t CloudInitSources(const std::string& f, const std::string& kind, const Json& ci,
                          const CloudInitData& d) {
    size_t len = 0, sources = 0;
    if (!Str(Path(&ci, d.secret_ref, "name")).empty()) ++sources;
    std::string b64 = Str(Get(ci, d.base64));
    if (!b64.empty()) {
      ++sources;
      auto decoded = Base64DecodedLen(b64);
      if (!decoded) {
        Add(c_, "FieldValueInvalid",
            f + "." + d.base64 + "." + kind + "." + d.base64 + " is not a valid base64 value.",
            f + "." + d.base64);
      }
      len = decoded.value_or(0);
    }
    std::string plain = Str(Get(ci, d.plain));
    if (!plain.empty()) {
      ++sources;
      len = plain.size();
    }
    if (sources > 1) {
      Add(c_, "FieldValueInvalid", f + " must have only one " + d.source_label + " set.", f);
    }
    if (len > d.max_len) {
      Add(c_, "FieldValueInvalid",
          f + " " + d.size_label + " exceeds " + std::to_string(d.max_len) +
              " byte limit. Should use " + d.secret_label + " for larger data.",
          f);
    }
    return sources;
  }

  void CloudInit(const std::string& at, const std::string& kind, const Json& ci) {
    static constexpr CloudInitData kUser = {"secretRef",         "userData", "userDataBase64",
                                            "userdatasource",    "userdata", "UserDataSecretRef",
                                            kCloudInitUserMaxLen};
    static constexpr CloudInitData kNetwork = {"networkDataSecretRef", "networkData",
                                               "networkDataBase64",    "networkdata source",
                                               "networkdata",          "NetworkDataSecretRef",
                                               kCloudInitNetworkMaxLen};
    std::string f = at + "." + kind;
    const size_t user_sources = CloudInitSources(f, kind, ci, kUser);
    const size_t net_sources = CloudInitSources(f, kind, ci, kNetwork);
    if (user_sources == 0 && net_sources == 0) {
      Add(c_, "FieldValueInvalid",
          f + " must have at least one userdatasource or one networkdatasource set.", f);
    }
  }

  void HostDisk(const std::string& at, const Json& hd) {
    std::string path = Str(Get(hd, "path"));
    std::string type = Str(Get(hd, "type"));
    if (path.empty()) {
      Add(c_, "FieldValueNotFound", at + ".hostDisk.path is required for hostDisk volume",
          at + ".hostDisk.path");
    }
    if (type != "Disk" && type != "DiskOrCreate") {
      Add(c_, "FieldValueInvalid",
          at + ".hostDisk.type has invalid value '" + type +
              "', allowed are 'Disk' or 'DiskOrCreate'",
          at + ".hostDisk.type");
    }
    if (type == "Disk" && !QtyOrZero(Get(hd, "capacity")).IsZero()) {
      Add(c_, "FieldValueInvalid",
          at + ".hostDisk.capacity is allowed to pass only with " + at +
              ".hostDisk.type equal to 'DiskOrCreate'",
          at + ".hostDisk.capacity");
    }
    if (!opt_.host_disk_enabled) {
      Add(c_, "FieldValueForbidden",
          at + ".hostDisk is not allowed on this host: no directory is configured for hostDisk "
               "volumes",
          at + ".hostDisk");
      return;
    }
    if (!path.empty() && !opt_.host_disk_dirs.empty()) {
      bool allowed = false;
      if (IsCleanAbsolutePath(path)) {
        for (std::string dir : opt_.host_disk_dirs) {
          while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
          if (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
              (dir == "/" || path[dir.size()] == '/')) {
            allowed = true;
          }
        }
      }
      if (!allowed) {
        Add(c_, "FieldValueForbidden",
            at +
                ".hostDisk.path must be a clean absolute path under one of the host disk "
                "directories [" +
                Join(opt_.host_disk_dirs, " ") + "]",
            at + ".hostDisk.path");
      }
    }
  }

  static std::string ToLower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  }

  // Interface and network rules edgevirt adds: what KubeVirt v1.0 admits and then fails to run
  // (libvirt refuses it when virt-launcher defines the domain), or what cannot name anything
  // on an edgevirt host.
  void NetworkRules() {
    const Json& ifaces = Arr(Get(devices_, "interfaces"));
    std::set<std::string> disk_names;
    for (const Json& d : Arr(Get(devices_, "disks"))) disk_names.insert(Str(Get(d, "name")));
    for (size_t i = 0; i < ifaces.size(); ++i) {
      const Json& iface = ifaces[i];
      const std::string at = Idx(f_ + ".domain.devices.interfaces", i);
      const std::string name = Str(Get(iface, "name"));
      // Disks and interfaces share libvirt's alias namespace (ua-<name>).
      if (!name.empty() && disk_names.count(name)) {
        Add(c_, "FieldValueInvalid",
            at + ".name '" + name +
                "' is also a disk name; disks and interfaces need distinct "
                "names (both become the device alias ua-" +
                name + ")",
            at + ".name");
      }
      // libvirt refuses a PCI slot above 0x1f; KubeVirt's pattern allows two hex digits.
      std::string pci = Str(Get(iface, "pciAddress"));
      if (IsPciAddress(pci) && std::stoi(pci.substr(8, 2), nullptr, 16) > 0x1f) {
        Add(c_, "FieldValueInvalid",
            "interface " + at + ".name has PCI address (" + pci + ") with a slot above 1f.",
            at + ".pciAddress");
      }
      // A multicast MAC (low bit of the first octet) is refused by libvirt.
      std::string mac = Str(Get(iface, "macAddress"));
      if (ParseMacLen(mac) == 6 && (std::stoi(mac.substr(0, 2), nullptr, 16) & 1)) {
        Add(c_, "FieldValueInvalid",
            "interface " + at + ".name has a multicast MAC address (" + mac + ").",
            at + ".macAddress");
      }
    }
    const Json& nets = Arr(Get(spec_, "networks"));
    for (size_t i = 0; i < nets.size(); ++i) {
      const Json* multus = Get(nets[i], "multus");
      if (multus == nullptr) continue;
      const std::string f = Idx(f_ + ".networks", i) + ".multus";
      if (Bool(Get(*multus, "default"), false)) {
        Add(c_, "FieldValueNotSupported",
            f + ".default: edgevirt has no Multus default network (use the pod network)",
            f + ".default");
      }
      // edgevirt host networks are named by DNS labels; "namespace/name" names the same one.
      std::string full = Str(Get(*multus, "networkName"));
      auto label = [](std::string_view v) { return v.size() <= 63 && MatchesDns1123Label(v); };
      size_t slash = full.find('/');
      bool ok = slash == std::string::npos
                    ? label(full)
                    : label(full.substr(0, slash)) && label(full.substr(slash + 1));
      if (!full.empty() && !ok) {
        Add(c_, "FieldValueInvalid",
            f + ".networkName '" + full +
                "' must be \"name\" or \"namespace/name\" of lowercase DNS labels (a host "
                "network of edgevirtd's config)",
            f + ".networkName");
      }
    }
  }

  // Rules edgevirt adds for fields it accepts but KubeVirt v1.0's webhooks leave unchecked (or
  // leave to a later stage that edgevirt does not have). Documented in README.md.
  void EdgevirtRules() {
    const Json& ifaces = Arr(Get(devices_, "interfaces"));
    for (size_t i = 0; i < ifaces.size(); ++i) {
      int bindings = (Get(ifaces[i], "masquerade") != nullptr ? 1 : 0) +
                     (Get(ifaces[i], "bridge") != nullptr ? 1 : 0);
      if (bindings != 1) {
        std::string at = Idx(f_ + ".domain.devices.interfaces", i);
        Add(c_, "FieldValueInvalid",
            at + " must have exactly one binding method (masquerade or bridge)", at);
      }
    }
    NetworkRules();
    if (auto grace = Int(Get(spec_, "terminationGracePeriodSeconds")); grace && *grace < 0) {
      std::string f = f_ + ".terminationGracePeriodSeconds";
      Add(c_, "FieldValueInvalid",
          f + " '" + std::to_string(*grace) + "': must be greater than or equal to 0.", f);
    }
    const Json* cpu = Get(domain_, "cpu");
    for (const char* key : {"cores", "sockets", "threads"}) {
      if (auto v = Int(Get(cpu, key)); v && (*v < 0 || *v > UINT32_MAX)) {
        std::string f = f_ + ".domain.cpu." + key;
        Add(c_, "FieldValueInvalid",
            f + " '" + std::to_string(*v) + "': must be between 0 and 4294967295.", f);
      }
    }
    std::string uuid = Str(Path(domain_, "firmware", "uuid"));
    if (!uuid.empty() && !ParseUuid(uuid, nullptr)) {
      std::string f = f_ + ".domain.firmware.uuid";
      Add(c_, "FieldValueInvalid",
          f + " '" + uuid + "' is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", f);
    }
    const Json* clock = Get(domain_, "clock");
    if (Get(clock, "utc") != nullptr && Get(clock, "timezone") != nullptr) {
      std::string f = f_ + ".domain.clock";
      Add(c_, "FieldValueInvalid", f + " must set only one of utc and timezone", f);
    }
    const Json& disks = Arr(Get(devices_, "disks"));
    for (size_t i = 0; i < disks.size(); ++i) {
      std::string tray = Str(Path(&disks[i], "cdrom", "tray"));
      if (!tray.empty() && tray != "closed") {
        std::string f = Idx(f_ + ".domain.devices.disks", i) + ".cdrom.tray";
        Add(c_, "FieldValueNotSupported",
            f + ": Unsupported value: " + Dump(Json(tray)) + ": supported values: \"closed\"", f);
      }
    }
    const Json& volumes = Arr(Get(spec_, "volumes"));
    for (size_t i = 0; i < volumes.size(); ++i) {
      if (const Json* cap = Path(&volumes[i], "emptyDisk", "capacity")) {
        if (auto q = Qty(cap); q && q->Value() <= 0) {
          std::string f = Idx(f_ + ".volumes", i) + ".emptyDisk.capacity";
          Add(c_, "FieldValueInvalid", f + " '" + q->String() + "': must be greater than 0.", f);
        }
      }
    }
    if (const Json* es = Get(spec_, "evictionStrategy")) {
      std::string f = f_ + ".evictionStrategy";
      std::string v = Str(es);
      static const std::set<std::string> kKnown = {"LiveMigrate", "LiveMigrateIfPossible", "None",
                                                   "External"};
      if (!kKnown.count(v)) {
        Add(c_, "FieldValueInvalid", f + " is set with an unrecognized option: " + v, f);
      } else if (v != "None") {
        Add(c_, "FieldValueNotSupported",
            f + ": Unsupported value: " + Dump(Json(v)) +
                ": supported values: \"None\" (edgevirt runs on one host and cannot migrate)",
            f);
      }
    }
    if (const Json* selector = Get(spec_, "nodeSelector"); selector && selector->is_object()) {
      for (const auto& [key, value] : selector->items()) {
        auto host = opt_.node_labels.find(key);
        if (host == opt_.node_labels.end() || !value.is_string() || host->second != value) {
          std::string f = f_ + ".nodeSelector[" + key + "]";
          Add(c_, "FieldValueInvalid",
              f + ": the only node (this host) does not carry the label " + key + "=" +
                  (value.is_string() ? value.get<std::string>() : Dump(value)),
              f);
        }
      }
    }
  }

  const KubevirtOptions& opt_;
  const std::vector<std::optional<std::regex>>& machine_patterns_;
  std::string f_;
  const Json& spec_;
  Causes* c_;
  const Json* domain_ = nullptr;
  const Json* devices_ = nullptr;
  const Json* resources_ = nullptr;
};

// validateVirtualMachineInstanceSpecVolumeDisks + ValidateVirtualMachineInstanceMandatoryFields
void ValidateVmiOnly(const Json& spec, Causes* c) {
  std::set<std::string> disks;
  for (const Json& d : Arr(Path(&spec, "domain", "devices", "disks"))) {
    disks.insert(Str(Get(d, "name")));
  }
  const Json& volumes = Arr(Get(spec, "volumes"));
  for (size_t i = 0; i < volumes.size(); ++i) {
    std::string name = Str(Get(volumes[i], "name"));
    if (!disks.count(name)) {
      // KubeVirt writes this path as spec.domain.volumes[i].name.
      std::string f = "spec.domain.volumes[" + std::to_string(i) + "].name";
      Add(c, "FieldValueInvalid", f + " '" + name + "' not found.", f);
    }
  }
  Quantity requests = QtyOrZero(Path(&spec, "domain", "resources", "requests", "memory"));
  if (requests.Value() == 0 && Path(&spec, "domain", "memory", "guest") == nullptr) {
    Add(c, "FieldValueRequired",
        "no memory requested, at least one of 'spec.domain.memory.guest', "
        "'spec.domain.memory.hugepages.size' or 'spec.domain.resources.requests.memory' must be "
        "set",
        "");
  }
}

// edgevirt accepts only these template metadata fields (labels and annotations are copied to
// the VMI; the others are overwritten by the VM controller, as in KubeVirt).
void ValidateTemplateMetadata(const Json* meta, Causes* c) {
  static const std::set<std::string> kAllowed = {"labels",    "annotations",  "name",
                                                 "namespace", "generateName", "creationTimestamp"};
  if (meta == nullptr || !meta->is_object()) return;
  for (const auto& item : meta->items()) {
    if (!kAllowed.count(item.key())) {
      std::string f = "spec.template.metadata." + item.key();
      Add(c, "FieldValueForbidden", f + ": Forbidden: not supported by edgevirt", f);
    }
  }
}

AdmitResult Structural(const SchemaModel& model, std::string_view def, Json& object,
                       FieldValidation fv, bool canonicalize) {
  DecodeResult decoded;
  DecodeOptions opt;
  opt.canonicalize_quantities = canonicalize;
  Decode(model, def, object, "", opt, &decoded);
  AdmitResult result;
  result.unknown_fields = std::move(decoded.unknown_fields);
  if (fv == FieldValidation::kIgnore) result.unknown_fields.clear();
  result.invalid = std::move(decoded.causes);
  return result;
}

std::string CreationTimestamp(const Json& object) {
  return Str(Path(&object, "metadata", "creationTimestamp"));
}

}  // namespace

AdmitOptions::AdmitOptions(KubevirtOptions kubevirt_options)
    : options(std::move(kubevirt_options)) {
  for (const auto& pattern : options.emulated_machines) {
    try {
      machine_patterns.emplace_back(std::regex(pattern));
    } catch (const std::regex_error&) {
      machine_patterns.emplace_back(std::nullopt);
    }
  }
}

AdmitResult AdmitVirtualMachine(const SchemaModel& model, const AdmitOptions& admit_options,
                                const AdmitRequest& request) {
  const KubevirtOptions& options = admit_options.options;
  AdmitResult result;
  if (request.op == Operation::kDelete || request.object == nullptr) return result;
  Json& vm = *request.object;
  if (request.status_subresource) {
    DecodeResult decoded;
    DecodeOptions opt;
    opt.status = true;
    if (vm.is_object() && vm.contains("status")) {
      if (vm["status"].is_null()) {
        vm.erase("status");
      } else {
        Decode(model, "v1.VirtualMachineStatus", vm["status"], "status", opt, &decoded);
      }
    }
    result.unknown_fields = std::move(decoded.unknown_fields);
    if (request.field_validation == FieldValidation::kIgnore) result.unknown_fields.clear();
    result.invalid = std::move(decoded.causes);
    return result;
  }
  result = Structural(model, "v1.VirtualMachine", vm, request.field_validation, true);
  Causes unsupported;
  ValidateTemplateMetadata(Path(&vm, "spec", "template", "metadata"), &unsupported);
  result.invalid.insert(result.invalid.end(), unsupported.begin(), unsupported.end());
  if (!result.invalid.empty()) return result;

  // Mutating webhook (persisted).
  DefaultVmTemplate(vm["spec"], options);

  // Validating webhook: on a copy with the full VMI defaults, as SetDefaultVirtualMachine does.
  const Json& spec = vm["spec"];
  Causes causes;
  const Json* tmpl = Get(spec, "template");
  if (tmpl == nullptr) {
    Add(&causes, "FieldValueRequired", "missing virtual machine template.", "spec.template");
  } else {
    Json tmpl_spec = tmpl->value("spec", Json::object());
    DefaultVmiSpec(tmpl_spec, options);
    ValidateMetadata("spec.template.metadata", Get(*tmpl, "metadata"), &causes);
    SpecValidator(admit_options, "spec.template.spec", tmpl_spec, &causes).Run();
  }
  const Json* running = Get(spec, "running");
  const Json* run_strategy = Get(spec, "runStrategy");
  if (running != nullptr && run_strategy != nullptr) {
    Add(&causes, "FieldValueInvalid", "Running and RunStrategy are mutually exclusive",
        "spec.running");
  }
  if (running == nullptr && run_strategy == nullptr) {
    Add(&causes, "FieldValueInvalid", "One of Running or RunStrategy must be specified",
        "spec.running");
  }
  if (run_strategy != nullptr) {
    static const std::set<std::string> kStrategies = {"Halted", "Manual", "Always",
                                                      "RerunOnFailure", "Once"};
    if (!kStrategies.count(Str(run_strategy))) {
      Add(&causes, "FieldValueInvalid", "Invalid RunStrategy (" + Str(run_strategy) + ")",
          "spec.runStrategy");
    }
  }
  if (!causes.empty()) {
    result.invalid = std::move(causes);
    result.denied_by = std::string(kVmValidator);
    return result;
  }
  if (running != nullptr) {
    result.warnings.push_back("spec.running is deprecated, please use spec.runStrategy instead.");
  }
  return result;
}

AdmitResult AdmitVirtualMachineInstance(const SchemaModel& model, const AdmitOptions& admit_options,
                                        const AdmitRequest& request) {
  const KubevirtOptions& options = admit_options.options;
  AdmitResult result;
  if (request.op == Operation::kDelete || request.object == nullptr) return result;
  Json& vmi = *request.object;
  bool create = request.op == Operation::kCreate;
  // The mutating webhook re-serialises the spec only on create; an update must equal the stored
  // spec byte for byte (after the same canonical quantity form the create wrote).
  result = Structural(model, "v1.VirtualMachineInstance", vmi, request.field_validation, true);
  if (!result.invalid.empty()) return result;
  Causes causes;
  if (create) {
    DefaultVmiSpec(vmi["spec"], options);
    Json status = Json::object();
    status["phase"] = "Pending";
    std::string created = CreationTimestamp(vmi);
    if (!created.empty()) {
      status["phaseTransitionTimestamps"] =
          Json::array({{{"phase", "Pending"}, {"phaseTransitionTimestamp", created}}});
    }
    status["guestOSInfo"] = Json::object();
    status["runtimeUser"] = options.runtime_user;
    vmi["status"] = std::move(status);

    SpecValidator(admit_options, "spec", vmi["spec"], &causes).Run();
    ValidateVmiOnly(vmi["spec"], &causes);
    ValidateMetadata("metadata", Get(vmi, "metadata"), &causes);
    if (!causes.empty()) {
      result.invalid = std::move(causes);
      result.denied_by = std::string(kVmiCreateValidator);
    }
    return result;
  }
  const Json* old = request.old_object;
  if (old == nullptr) return result;
  // vmi-mutator: status changes from users are ignored.
  if (old->contains("status")) {
    vmi["status"] = (*old)["status"];
  } else {
    vmi.erase("status");
  }
  const Json* new_spec = Get(vmi, "spec");
  const Json* old_spec = Get(*old, "spec");
  if ((new_spec == nullptr) != (old_spec == nullptr) ||
      (new_spec != nullptr && *new_spec != *old_spec)) {
    Add(&causes, "FieldValueNotSupported", "update of VMI object is restricted", "");
  } else if (FilterRestricted(Path(&vmi, "metadata", "labels")) !=
             FilterRestricted(Path(old, "metadata", "labels"))) {
    Add(&causes, "FieldValueNotSupported",
        "modification of the following reserved kubevirt.io/ labels on a VMI object is prohibited",
        "");
  }
  if (!causes.empty()) {
    result.invalid = std::move(causes);
    result.denied_by = std::string(kVmiUpdateValidator);
  }
  return result;
}

}  // namespace edgevirt::api::kubevirt
