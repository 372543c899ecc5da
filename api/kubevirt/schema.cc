#include "api/kubevirt/schema.h"

#include <cstdlib>
#include <deque>
#include <iostream>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "api/kubevirt/quantity.h"

namespace edgevirt::api::kubevirt {
namespace embedded {
extern const std::string_view kStructureJson;
extern const std::string_view kDescriptionsYaml;
}  // namespace embedded

namespace {

// What edgevirt implements of KubeVirt's kubevirt.io/v1 spec types: "<definition>:<props>".
// Everything else a KubeVirt spec may carry is rejected with 422 (README.md has the table).
// Status types list the fields edgevirt's controller reports; the rest of a status is still
// accepted (it is server-written), just never set.
constexpr const char* kImplemented[] = {
    "v1.VirtualMachine:apiVersion,kind,metadata,spec,status",
    "v1.VirtualMachineList:apiVersion,items,kind,metadata",
    "v1.VirtualMachineInstance:apiVersion,kind,metadata,spec,status",
    "v1.VirtualMachineInstanceList:apiVersion,items,kind,metadata",
    "v1.VirtualMachineSpec:runStrategy,running,template",
    "v1.VirtualMachineInstanceTemplateSpec:metadata,spec",
    "v1.VirtualMachineInstanceSpec:architecture,domain,evictionStrategy,hostname,networks,"
    "nodeSelector,startStrategy,subdomain,terminationGracePeriodSeconds,volumes",
    "v1.DomainSpec:clock,cpu,devices,features,firmware,machine,memory,resources",
    "v1.CPU:cores,model,sockets,threads",
    "v1.Memory:guest",
    "v1.ResourceRequirements:limits,overcommitGuestOverhead,requests",
    "v1.Machine:type",
    "v1.Firmware:bootloader,serial,uuid",
    "v1.Bootloader:bios,efi",
    "v1.BIOS:useSerial",
    "v1.EFI:secureBoot",
    "v1.Features:acpi,apic,smm",
    "v1.FeatureState:enabled",
    "v1.FeatureAPIC:enabled",
    "v1.Clock:timezone,utc",
    "v1.ClockOffsetUTC:offsetSeconds",
    "v1.Devices:autoattachGraphicsDevice,autoattachMemBalloon,autoattachPodInterface,"
    "autoattachSerialConsole,disks,interfaces,rng,tpm",
    "v1.TPMDevice:persistent",
    "v1.Disk:bootOrder,cache,cdrom,disk,io,lun,name,serial",
    "v1.DiskTarget:bus,readonly",
    "v1.CDRomTarget:bus,readonly,tray",
    "v1.LunTarget:bus,readonly",
    "v1.Interface:bootOrder,bridge,macAddress,masquerade,model,name,pciAddress,ports",
    "v1.Port:name,port,protocol",
    "v1.Network:multus,name,pod",
    "v1.MultusNetwork:default,networkName",
    "v1.Volume:cloudInitConfigDrive,cloudInitNoCloud,containerDisk,emptyDisk,ephemeral,hostDisk,"
    "name,persistentVolumeClaim",
    "v1.ContainerDiskSource:image,imagePullPolicy,imagePullSecret,path",
    "v1.CloudInitNoCloudSource:networkData,networkDataBase64,networkDataSecretRef,secretRef,"
    "userData,userDataBase64",
    "v1.CloudInitConfigDriveSource:networkData,networkDataBase64,networkDataSecretRef,secretRef,"
    "userData,userDataBase64",
    "k8s.io.api.core.v1.LocalObjectReference:name",
    "v1.EmptyDiskSource:capacity",
    "v1.HostDisk:capacity,path,type",
    "v1.EphemeralVolumeSource:persistentVolumeClaim",
    "k8s.io.api.core.v1.PersistentVolumeClaimVolumeSource:claimName,readOnly",
    "v1.PersistentVolumeClaimVolumeSource:claimName,hotpluggable,readOnly",
    // Status written by edgevirt's controller.
    "v1.VirtualMachineStatus:conditions,created,desiredGeneration,observedGeneration,"
    "printableStatus,ready,startFailure,stateChangeRequests",
    "v1.VirtualMachineCondition:lastProbeTime,lastTransitionTime,message,reason,status,type",
    "v1.VirtualMachineStateChangeRequest:action,data,uid",
    "v1.VirtualMachineStartFailure:consecutiveFailCount,lastFailedVMIUID,retryAfterTimestamp",
    "v1.VirtualMachineInstanceStatus:activePods,conditions,currentCPUTopology,guestOSInfo,"
    "interfaces,launcherContainerImageVersion,machine,nodeName,phase,phaseTransitionTimestamps,"
    "qosClass,reason,runtimeUser,volumeStatus",
    "v1.VirtualMachineInstanceCondition:lastProbeTime,lastTransitionTime,message,reason,status,"
    "type",
    "v1.VirtualMachineInstanceNetworkInterface:infoSource,interfaceName,ipAddress,ipAddresses,"
    "mac,name,queueCount",
    "v1.VirtualMachineInstanceGuestOSInfo:id,kernelRelease,kernelVersion,machine,name,"
    "prettyName,version,versionId",
    "v1.VolumeStatus:message,name,phase,reason,size,target",
    "v1.VirtualMachineInstancePhaseTransitionTimestamp:phase,phaseTransitionTimestamp",
    "v1.CPUTopology:cores,sockets,threads",
};

constexpr std::string_view kMetaPrefix = "k8s.io.apimachinery.pkg.apis.meta.v1.";
constexpr std::string_view kQuantity = "k8s.io.apimachinery.pkg.api.resource.Quantity";
constexpr std::string_view kQuantityPattern =
    R"(^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$)";

std::string RefName(const Json& schema) {
  const std::string& ref = schema.at("$ref").get_ref<const std::string&>();
  size_t slash = ref.rfind('/');
  return slash == std::string::npos ? ref : ref.substr(slash + 1);
}

// RefName without a copy: a view into `schema`.
std::string_view RefView(const Json& ref) {
  std::string_view s = ref.get_ref<const std::string&>();
  size_t slash = s.rfind('/');
  return slash == std::string_view::npos ? s : s.substr(slash + 1);
}

void CollectRefs(const Json& node, std::set<std::string>* out) {
  if (node.is_object()) {
    auto it = node.find("$ref");
    if (it != node.end() && it->is_string()) out->insert(RefName(node));
    for (const auto& [key, value] : node.items()) CollectRefs(value, out);
  } else if (node.is_array()) {
    for (const auto& value : node) CollectRefs(value, out);
  }
}

std::set<std::string> Reachable(const Json& definitions, std::vector<std::string> roots) {
  std::set<std::string> seen;
  std::deque<std::string> todo(roots.begin(), roots.end());
  while (!todo.empty()) {
    std::string name = todo.front();
    todo.pop_front();
    if (!seen.insert(name).second) continue;
    auto it = definitions.find(name);
    if (it == definitions.end()) continue;
    std::set<std::string> refs;
    CollectRefs(*it, &refs);
    for (const auto& r : refs) {
      if (!seen.count(r)) todo.push_back(r);
    }
  }
  return seen;
}

std::string JsonTypeName(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer";
    case Json::value_t::number_float:
      return "number";
    case Json::value_t::string:
      return "string";
    case Json::value_t::array:
      return "array";
    default:
      return "object";
  }
}

bool MatchesType(const Json& v, std::string_view type) {
  if (type == "string") return v.is_string();
  if (type == "boolean") return v.is_boolean();
  if (type == "integer") {
    if (v.is_number_integer()) return true;
    if (v.is_number_float()) {
      double d = v.get<double>();
      return d == static_cast<double>(static_cast<long long>(d));
    }
    return false;
  }
  if (type == "number") return v.is_number();
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "null") return v.is_null();
  return true;
}

bool Nullable(const Json& schema) {
  auto it = schema.find("type");
  if (it == schema.end() || !it->is_array()) return false;
  for (const auto& t : *it) {
    if (t == "null") return true;
  }
  return false;
}

std::string Join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

// JSON text of a value; invalid UTF-8 from YAML bodies becomes U+FFFD instead of throwing.
std::string Dump(const Json& v) { return v.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string Quote(const std::string& s) { return Dump(Json(s)); }

// The JSON path of the node being decoded, as a chain of stack frames: the string is built only
// when an error or an unknown field needs it (most decodes need none).
class Path {
 public:
  enum class Sep { kJoin, kDot, kBracket };  // "a.b" (or "b" at an empty root), "a.b", "a[b]"
  explicit Path(const std::string& root) : root_(&root) {}
  Path(const Path& parent, std::string_view key, Sep sep)
      : parent_(&parent), key_(key), sep_(sep) {}
  Path(const Path& parent, size_t index) : parent_(&parent), index_(index), is_index_(true) {}

  std::string Str() const {
    if (root_ != nullptr) return *root_;
    std::string out = parent_->Str();
    if (is_index_) return out + "[" + std::to_string(index_) + "]";
    if (sep_ == Sep::kBracket) return out + "[" + std::string(key_) + "]";
    if (sep_ == Sep::kJoin && out.empty()) return std::string(key_);
    return out + "." + std::string(key_);
  }

 private:
  const std::string* root_ = nullptr;
  const Path* parent_ = nullptr;
  std::string_view key_;
  Sep sep_ = Sep::kJoin;
  size_t index_ = 0;
  bool is_index_ = false;
};

class Decoder {
 public:
  Decoder(const SchemaModel& model, DecodeResult* result) : model_(model), result_(result) {}

  void Definition(std::string_view def, Json& node, const Path& path, DecodeOptions opt) {
    if (def == kQuantity) return QuantityValue(node, path, opt);
    if (def.size() == kMetaPrefix.size() + 8 && def.substr(0, kMetaPrefix.size()) == kMetaPrefix &&
        def.substr(kMetaPrefix.size()) == "FieldsV1") {
      return;  // free-form by design
    }
    const SchemaModel::CompiledDefinition* d = model_.Compiled(def);
    if (d == nullptr) return;
    if (!d->has_properties) return Value(*d->definition, def, "", node, path, opt);
    if (!node.is_object()) return TypeError(node, path, "object");
    const bool top = def == "v1.VirtualMachine" || def == "v1.VirtualMachineInstance";
    // Erasing while walking leaves the other entries (and the keys the paths view) in place.
    for (auto it = node.begin(); it != node.end();) {
      const std::string& key = it.key();
      auto prop = d->properties.find(key);
      if (prop == d->properties.end()) {
        result_->unknown_fields.push_back(Join(path.Str(), key));
        it = node.erase(it);
        continue;
      }
      Json& value = it.value();
      if (value.is_null() && !prop->second.nullable) {
        it = node.erase(it);
        continue;
      }
      if (!opt.status && !prop->second.implemented) {
        std::string field = Join(path.Str(), key);
        result_->causes.push_back(
            {"FieldValueForbidden", field + ": Forbidden: not supported by edgevirt", field});
        ++it;
        continue;
      }
      DecodeOptions sub = opt;
      if (top && key == "status") {
        sub.status = true;
        sub.canonicalize_quantities = false;
      }
      Value(*prop->second.schema, def, key, value, Path(path, key, Path::Sep::kJoin), sub);
      ++it;
    }
    for (const std::string& name : d->required) {
      if (!node.contains(name)) {
        std::string field = Join(path.Str(), name);
        result_->causes.push_back({"FieldValueRequired", field + ": Required value", field});
      }
    }
  }

 private:
  void Value(const Json& schema, std::string_view owner, std::string_view prop, Json& node,
             const Path& path, const DecodeOptions& opt) {
    if (auto ref = schema.find("$ref"); ref != schema.end()) {
      return Definition(RefView(*ref), node, path, opt);
    }
    auto type_it = schema.find("type");
    if (type_it == schema.end()) return;
    if (type_it->is_array()) {
      for (const auto& t : *type_it) {
        if (MatchesType(node, t.get_ref<const std::string&>())) return;
      }
      std::string names;
      for (const auto& t : *type_it) {
        if (t == "null") continue;
        names += (names.empty() ? "" : ",") + t.get<std::string>();
      }
      return TypeError(node, path, names);
    }
    const std::string& type = type_it->get_ref<const std::string&>();
    if (!MatchesType(node, type)) return TypeError(node, path, type);
    if (type == "object") {
      bool resource_list =
          owner == "v1.ResourceRequirements" && (prop == "limits" || prop == "requests");
      if (resource_list) return ResourceList(node, path, opt);
      auto ap = schema.find("additionalProperties");
      if (ap != schema.end() && ap->is_object()) {
        for (auto& [key, value] : node.items()) {
          Value(*ap, owner, "", value, Path(path, key, Path::Sep::kBracket), opt);
        }
      } else if (!schema.contains("properties")) {
        // An object type without fields (masquerade: {}, rng: {}): anything inside is unknown.
        std::vector<std::string> keys;
        for (const auto& item : node.items()) keys.push_back(item.key());
        for (const auto& key : keys) {
          result_->unknown_fields.push_back(Join(path.Str(), key));
          node.erase(key);
        }
      }
      return;
    }
    if (type == "array") {
      auto items = schema.find("items");
      if (items == schema.end()) return;
      for (size_t i = 0; i < node.size(); ++i) {
        Value(*items, owner, "", node[i], Path(path, i), opt);
      }
      return;
    }
    if (type == "string") {
      auto e = schema.find("enum");
      if (e != schema.end()) {
        for (const auto& allowed : *e) {
          if (allowed == node) return;
        }
        std::string list;
        for (const auto& allowed : *e) list += (list.empty() ? "" : ", ") + Dump(allowed);
        result_->causes.push_back(
            {"FieldValueNotSupported",
             path.Str() + ": Unsupported value: " + Dump(node) + ": supported values: " + list,
             path.Str()});
      }
    }
  }

  void ResourceList(Json& node, const Path& path, const DecodeOptions& opt) {
    for (auto& [key, value] : node.items()) {
      const Path field(path, key, Path::Sep::kDot);
      if (!opt.status && key != "cpu" && key != "memory") {
        std::string name = field.Str();
        result_->causes.push_back({"FieldValueForbidden",
                                   name + ": Forbidden: not supported by edgevirt (only cpu and "
                                          "memory are)",
                                   name});
        continue;
      }
      QuantityValue(value, field, opt);
    }
  }

  void QuantityValue(Json& node, const Path& path, const DecodeOptions& opt) {
    std::string text;
    if (node.is_string()) {
      text = node.get<std::string>();
    } else if (node.is_number()) {
      text = node.dump();
    } else {
      return TypeError(node, path, "integer,string");
    }
    std::optional<Quantity> q = Quantity::Parse(text);
    if (!q) {
      std::string name = path.Str();
      result_->causes.push_back({"FieldValueInvalid",
                                 name + ": Invalid value: " + Quote(text) + ": " + name +
                                     " in body should match '" + std::string(kQuantityPattern) +
                                     "'",
                                 name});
      return;
    }
    if (opt.canonicalize_quantities) node = q->String();
  }

  void TypeError(const Json& node, const Path& path, const std::string& type) {
    std::string actual = JsonTypeName(node);
    std::string name = path.Str();
    result_->causes.push_back({"FieldValueTypeInvalid",
                               name + ": Invalid value: " + Quote(actual) + ": " + name +
                                   " in body must be of type " + type + ": " + Quote(actual),
                               name});
  }

  const SchemaModel& model_;
  DecodeResult* result_;
};

Json Emit(const SchemaModel& model, const Json& schema, std::string_view def);

Json EmitProperty(const SchemaModel& model, const Json& schema, std::string_view def,
                  std::string_view prop) {
  Json out = Emit(model, schema, def);
  if (def == "v1.ResourceRequirements" && (prop == "limits" || prop == "requests")) {
    out["additionalProperties"] = {
        {"allOf",
         Json::array({{{"$ref", "#/components/schemas/" + SchemaModel::OpenApiName(kQuantity)}}})}};
  }
  std::string description = model.Description(def, prop);
  if (!description.empty()) out["description"] = description;
  return out;
}

Json Emit(const SchemaModel& model, const Json& schema, std::string_view def) {
  Json out = Json::object();
  if (schema.contains("$ref")) {
    out["allOf"] = Json::array(
        {{{"$ref", "#/components/schemas/" + SchemaModel::OpenApiName(RefName(schema))}}});
    if (schema.contains("default")) out["default"] = schema["default"];
    return out;
  }
  for (const auto& [key, value] : schema.items()) {
    if (key == "type" && value.is_array()) {
      std::vector<std::string> types;
      bool nullable = false;
      for (const auto& t : value) {
        if (t == "null") {
          nullable = true;
        } else {
          types.push_back(t.get<std::string>());
        }
      }
      if (types.size() == 1) {
        out["type"] = types[0];
      } else {
        // int-or-string, published as apiextensions does.
        out["x-kubernetes-int-or-string"] = true;
        out["anyOf"] = Json::array({{{"type", "integer"}}, {{"type", "string"}}});
      }
      if (nullable) out["nullable"] = true;
    } else if (key == "items" || key == "additionalProperties") {
      out[key] = value.is_object() ? Emit(model, value, def) : value;
    } else if (key == "properties") {
      Json props = Json::object();
      for (const auto& [name, sub] : value.items()) {
        props[name] = EmitProperty(model, sub, def, name);
      }
      out["properties"] = props;
    } else {
      out[key] = value;
    }
  }
  return out;
}

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string_view::npos) end = s.size();
    out.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

std::shared_ptr<const SchemaModel> SchemaModel::Load(std::string_view structure_json,
                                                     std::string_view descriptions_yaml,
                                                     std::string* error) {
  auto model = std::make_shared<SchemaModel>();
  Json structure = Json::parse(structure_json, nullptr, false);
  if (structure.is_discarded() || !structure.contains("definitions") ||
      !structure["definitions"].is_object()) {
    *error = "structure extract is not a JSON object with definitions";
    return nullptr;
  }
  model->definitions_ = std::move(structure["definitions"]);
  for (const char* entry : kImplemented) {
    std::string_view e(entry);
    size_t colon = e.find(':');
    std::string def(e.substr(0, colon));
    for (const auto& prop : Split(e.substr(colon + 1), ',')) {
      model->implemented_.insert(def + "." + prop);
    }
  }
  try {
    YAML::Node root = YAML::Load(std::string(descriptions_yaml));
    if (!root.IsMap()) {
      *error = "descriptions.yaml is not a map";
      return nullptr;
    }
    for (const auto& def : root) {
      std::string def_name = def.first.as<std::string>();
      if (def.second.IsScalar()) {
        model->descriptions_[def_name][""] = def.second.as<std::string>();
        continue;
      }
      if (!def.second.IsMap()) {
        *error = "descriptions.yaml: " + def_name + " is neither text nor a map";
        return nullptr;
      }
      for (const auto& prop : def.second) {
        std::string prop_name = prop.first.as<std::string>();
        model->descriptions_[def_name][prop_name == "_" ? "" : prop_name] =
            prop.second.as<std::string>();
      }
    }
  } catch (const YAML::Exception& e) {
    *error = std::string("descriptions.yaml: ") + e.what();
    return nullptr;
  }
  for (const auto& [name, def] : model->definitions_.items()) {
    CompiledDefinition& c = model->compiled_[name];
    c.definition = &def;
    auto props = def.find("properties");
    if (props == def.end()) continue;
    c.has_properties = true;
    for (const auto& [prop, schema] : props->items()) {
      Property& p = c.properties[prop];
      p.schema = &schema;
      p.nullable = Nullable(schema);
      p.implemented = model->Implemented(name, prop);
    }
    if (auto required = def.find("required"); required != def.end()) {
      for (const auto& r : *required) c.required.push_back(r.get<std::string>());
    }
  }
  model->published_ = Reachable(model->definitions_,
                                {"v1.VirtualMachine", "v1.VirtualMachineList",
                                 "v1.VirtualMachineInstance", "v1.VirtualMachineInstanceList"});
  std::set<std::string> spec_side =
      Reachable(model->definitions_,
                {"v1.VirtualMachineSpec", "v1.VirtualMachineInstanceSpec",
                 std::string(kMetaPrefix) + "ObjectMeta", std::string(kMetaPrefix) + "ListMeta"});
  for (const auto& name : Reachable(
           model->definitions_, {"v1.VirtualMachineStatus", "v1.VirtualMachineInstanceStatus"})) {
    if (!spec_side.count(name)) model->status_only_.insert(name);
  }
  return model;
}

std::shared_ptr<const SchemaModel> SchemaModel::Embedded() {
  std::string error;
  auto model = Load(embedded::kStructureJson, embedded::kDescriptionsYaml, &error);
  if (model == nullptr) {
    std::cerr << "api/kubevirt: compiled-in schema is broken: " << error << "\n";
    std::abort();
  }
  return model;
}

const Json* SchemaModel::Definition(std::string_view name) const {
  auto it = definitions_.find(std::string(name));
  return it == definitions_.end() ? nullptr : &*it;
}

const SchemaModel::CompiledDefinition* SchemaModel::Compiled(std::string_view name) const {
  auto it = compiled_.find(name);
  return it == compiled_.end() ? nullptr : &it->second;
}

bool SchemaModel::Implemented(std::string_view definition, std::string_view property) const {
  static const std::set<std::string, std::less<>> kMetaAccepted = {
      "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
      "k8s.io.apimachinery.pkg.apis.meta.v1.ListMeta",
      "k8s.io.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry",
      "k8s.io.apimachinery.pkg.apis.meta.v1.OwnerReference"};
  if (kMetaAccepted.count(definition) != 0) return true;
  std::string key(definition);
  key += '.';
  key += property;
  return implemented_.count(key) != 0;
}

std::string SchemaModel::Description(std::string_view definition, std::string_view property) const {
  auto def = descriptions_.find(std::string(definition));
  if (def != descriptions_.end()) {
    auto prop = def->second.find(std::string(property));
    if (prop != def->second.end()) return prop->second;
  }
  bool status_only = StatusOnly(definition);
  if (property.empty()) {
    return status_only ? "Part of KubeVirt's status; edgevirt does not report it."
                       : "Part of KubeVirt's API; not supported by edgevirt.";
  }
  if (Implemented(definition, property)) return "";
  return status_only ? "Reported by KubeVirt; edgevirt does not set it."
                     : "Not supported by edgevirt; setting it is rejected.";
}

std::string SchemaModel::OpenApiName(std::string_view definition) {
  std::string name(definition);
  if (name.rfind("k8s.io.", 0) == 0) return "io.k8s." + name.substr(7);
  if (name.rfind("v1beta1.", 0) == 0) return "io.kubevirt.cdi." + name;
  return "io.kubevirt." + name;
}

Json SchemaModel::OpenApiSchemas() const {
  Json out = Json::object();
  for (const auto& name : published_) {
    const Json* def = Definition(name);
    if (def == nullptr) continue;
    Json schema = Emit(*this, *def, name);
    std::string description = Description(name, "");
    if (!description.empty()) schema["description"] = description;
    for (const char* kind : {"VirtualMachine", "VirtualMachineList", "VirtualMachineInstance",
                             "VirtualMachineInstanceList"}) {
      if (name == std::string("v1.") + kind) {
        schema["x-kubernetes-group-version-kind"] =
            Json::array({{{"group", "kubevirt.io"}, {"kind", kind}, {"version", "v1"}}});
      }
    }
    out[OpenApiName(name)] = std::move(schema);
  }
  return out;
}

void Decode(const SchemaModel& model, std::string_view definition, Json& node,
            const std::string& path, const DecodeOptions& options, DecodeResult* result) {
  Decoder(model, result).Definition(definition, node, Path(path), options);
}

}  // namespace edgevirt::api::kubevirt
