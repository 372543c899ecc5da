#include "api/machinery/pvc.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "api/machinery/errors.h"
#include "api/machinery/go_decode.h"
#include "api/machinery/meta.h"
#include "common/json_path.h"
#include "common/quantity.h"

namespace edgevirt::api::machinery {
namespace {

// k8s.io/api/core/v1 types.go.
constexpr char kBetaStorageClassAnnotation[] = "volume.beta.kubernetes.io/storage-class";
const std::vector<std::string>& AccessModes() {  // sorted, as sets.List prints them
  static const std::vector<std::string> k = {"ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce",
                                             "ReadWriteOncePod"};
  return k;
}

// ---- decoding: the Go types of core/v1 PersistentVolumeClaim ----------------------------------

using Type = GoType;
using Shape = GoShape;

const Shape& LabelSelectorRequirementShape() {
  static const Shape k{"LabelSelectorRequirement",
                       {{"key", Type::kString, "string"},
                        {"operator", Type::kString, "v1.LabelSelectorOperator"},
                        {"values", Type::kStringList, "[]string"}}};
  return k;
}

const Shape& LabelSelectorShape() {
  static const Shape k{"LabelSelector",
                       {{"matchExpressions", Type::kStructList, "[]v1.LabelSelectorRequirement",
                         &LabelSelectorRequirementShape()},
                        {"matchLabels", Type::kStringMap, "map[string]string"}}};
  return k;
}

const Shape& ResourcesShape() {
  static const Shape k{"VolumeResourceRequirements",
                       {{"limits", Type::kQuantityMap, "v1.ResourceList"},
                        {"requests", Type::kQuantityMap, "v1.ResourceList"}}};
  return k;
}

const Shape& TypedLocalObjectReferenceShape() {
  static const Shape k{"TypedLocalObjectReference",
                       {{"apiGroup", Type::kString, "string"},
                        {"kind", Type::kString, "string"},
                        {"name", Type::kString, "string"}}};
  return k;
}

const Shape& TypedObjectReferenceShape() {
  static const Shape k{"TypedObjectReference",
                       {{"apiGroup", Type::kString, "string"},
                        {"kind", Type::kString, "string"},
                        {"name", Type::kString, "string"},
                        {"namespace", Type::kString, "string"}}};
  return k;
}

const Shape& SpecShape() {
  static const Shape k{
      "PersistentVolumeClaimSpec",
      {{"accessModes", Type::kStringList, "[]v1.PersistentVolumeAccessMode"},
       {"dataSource", Type::kStruct, "v1.TypedLocalObjectReference",
        &TypedLocalObjectReferenceShape()},
       {"dataSourceRef", Type::kStruct, "v1.TypedObjectReference", &TypedObjectReferenceShape()},
       {"resources", Type::kStruct, "v1.VolumeResourceRequirements", &ResourcesShape()},
       {"selector", Type::kStruct, "v1.LabelSelector", &LabelSelectorShape()},
       {"storageClassName", Type::kString, "string"},
       {"volumeAttributesClassName", Type::kString, "string"},
       {"volumeMode", Type::kString, "v1.PersistentVolumeMode"},
       {"volumeName", Type::kString, "string"}}};
  return k;
}

const Shape& ConditionShape() {
  static const Shape k{"PersistentVolumeClaimCondition",
                       {{"lastProbeTime", Type::kString, "v1.Time"},
                        {"lastTransitionTime", Type::kString, "v1.Time"},
                        {"message", Type::kString, "string"},
                        {"reason", Type::kString, "string"},
                        {"status", Type::kString, "v1.ConditionStatus"},
                        {"type", Type::kString, "v1.PersistentVolumeClaimConditionType"}}};
  return k;
}

const Shape& ModifyVolumeStatusShape() {
  static const Shape k{"ModifyVolumeStatus",
                       {{"status", Type::kString, "v1.PersistentVolumeClaimModifyVolumeStatus"},
                        {"targetVolumeAttributesClassName", Type::kString, "string"}}};
  return k;
}

const Shape& StatusShape() {
  static const Shape k{
      "PersistentVolumeClaimStatus",
      {{"accessModes", Type::kStringList, "[]v1.PersistentVolumeAccessMode"},
       {"allocatedResourceStatuses", Type::kStringMap,
        "map[v1.ResourceName]v1.ClaimResourceStatus"},
       {"allocatedResources", Type::kQuantityMap, "v1.ResourceList"},
       {"capacity", Type::kQuantityMap, "v1.ResourceList"},
       {"conditions", Type::kStructList, "[]v1.PersistentVolumeClaimCondition", &ConditionShape()},
       {"currentVolumeAttributesClassName", Type::kString, "string"},
       {"modifyVolumeStatus", Type::kStruct, "v1.ModifyVolumeStatus", &ModifyVolumeStatusShape()},
       {"phase", Type::kString, "v1.PersistentVolumeClaimPhase"}}};
  return k;
}

const Shape& ClaimShape() {
  static const Shape k{
      "PersistentVolumeClaim",
      {{"apiVersion", Type::kString, "string"},
       {"kind", Type::kString, "string"},
       {"metadata", Type::kOpaque, "v1.ObjectMeta"},
       {"spec", Type::kStruct, "v1.PersistentVolumeClaimSpec", &SpecShape()},
       {"status", Type::kStruct, "v1.PersistentVolumeClaimStatus", &StatusShape()}}};
  return k;
}

// ---- small accessors ----------------------------------------------------------------------

using jsonpath::At;
using jsonpath::Str;
using jsonpath::Strings;

// ---- validation ---------------------------------------------------------------------------

// metav1 validation.ValidateLabelSelector (no options).
void ValidateSelector(const Json& selector, const std::string& path,
                      std::vector<StatusCause>* errors) {
  if (const Json* labels = At(selector, {"matchLabels"}); labels && labels->is_object()) {
    const std::string field = path + ".matchLabels";
    for (const auto& [k, v] : labels->items()) {
      for (const auto& m : IsQualifiedName(k)) errors->push_back(FieldInvalid(field, Quote(k), m));
      const std::string value = v.is_string() ? v.get<std::string>() : std::string();
      for (const auto& m : IsValidLabelValue(value)) {
        errors->push_back(FieldInvalid(field, Quote(value), m));
      }
    }
  }
  const Json* exprs = At(selector, {"matchExpressions"});
  if (exprs == nullptr || !exprs->is_array()) return;
  for (size_t i = 0; i < exprs->size(); ++i) {
    const Json& e = (*exprs)[i];
    const std::string at = path + ".matchExpressions[" + std::to_string(i) + "]";
    const std::string op = Str(e, {"operator"});
    const size_t values = Strings(At(e, {"values"})).size();
    if (op == "In" || op == "NotIn") {
      if (values == 0) {
        errors->push_back(
            FieldRequired(at + ".values", "must be specified when `operator` is 'In' or 'NotIn'"));
      }
    } else if (op == "Exists" || op == "DoesNotExist") {
      if (values > 0) {
        errors->push_back(FieldForbidden(
            at + ".values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"));
      }
    } else {
      errors->push_back(FieldInvalid(at + ".operator", Quote(op), "not a valid selector operator"));
    }
    const std::string key = Str(e, {"key"});
    for (const auto& m : IsQualifiedName(key)) {
      errors->push_back(FieldInvalid(at + ".key", Quote(key), m));
    }
  }
}

// validateDataSource / validateDataSourceRef.
void ValidateDataSource(const Json& ref, const std::string& path, bool with_namespace,
                        std::vector<StatusCause>* errors) {
  if (Str(ref, {"name"}).empty()) errors->push_back(FieldRequired(path + ".name"));
  const std::string kind = Str(ref, {"kind"});
  if (kind.empty()) errors->push_back(FieldRequired(path + ".kind"));
  const std::string group = Str(ref, {"apiGroup"});
  if (group.empty() && kind != "PersistentVolumeClaim") {
    errors->push_back(
        FieldInvalid(path, Quote(kind),
                     "must be 'PersistentVolumeClaim' when referencing the default apiGroup"));
  }
  if (!group.empty()) {
    for (const auto& m : IsDns1123Subdomain(group)) {
      errors->push_back(FieldInvalid(path + ".apiGroup", Quote(group), m));
    }
  }
  if (with_namespace) {
    const std::string ns = Str(ref, {"namespace"});
    if (!ns.empty()) {
      for (const auto& m : IsDns1123Label(ns)) {
        errors->push_back(FieldInvalid(path + ".namespace", Quote(ns), m));
      }
    }
  }
}

// ValidatePersistentVolumeClaimSpec.
void ValidateSpec(const Json& spec, std::vector<StatusCause>* errors) {
  const std::vector<std::string> modes = Strings(At(spec, {"accessModes"}));
  if (modes.empty()) {
    errors->push_back(FieldRequired("spec.accessModes", "at least 1 access mode is required"));
  }
  if (const Json* selector = At(spec, {"selector"}); selector && selector->is_object()) {
    ValidateSelector(*selector, "spec.selector", errors);
  }
  bool rwop = false, other = false;
  for (const auto& m : modes) {
    const bool supported =
        std::find(AccessModes().begin(), AccessModes().end(), m) != AccessModes().end();
    if (!supported)
      errors->push_back(FieldNotSupported("spec.accessModes", Quote(m), AccessModes()));
    if (m == "ReadWriteOncePod") {
      rwop = true;
    } else if (supported) {
      other = true;
    }
  }
  if (rwop && other) {
    errors->push_back(
        FieldForbidden("spec.accessModes", "may not use ReadWriteOncePod with other access modes"));
  }
  const Json* storage = At(spec, {"resources", "requests", "storage"});
  if (storage == nullptr || !storage->is_string()) {
    errors->push_back(FieldRequired("spec.resources[storage]"));
  } else if (auto q = Quantity::Parse(storage->get<std::string>());
             !q || q->IsZero() || q->IsNegative()) {
    errors->push_back(FieldInvalid("spec.resources[storage]", Quote(storage->get<std::string>()),
                                   "must be greater than zero"));
  }
  if (const std::string cls = Str(spec, {"storageClassName"}); !cls.empty()) {
    for (const auto& m : IsDns1123Subdomain(cls)) {
      errors->push_back(FieldInvalid("spec.storageClassName", Quote(cls), m));
    }
  }
  if (const Json* mode = At(spec, {"volumeMode"}); mode && mode->is_string()) {
    const std::string m = mode->get<std::string>();
    if (m != "Filesystem" && m != "Block") {
      errors->push_back(FieldNotSupported("spec.volumeMode", Quote(m), {"Block", "Filesystem"}));
    }
  }
  const Json* source = At(spec, {"dataSource"});
  const Json* source_ref = At(spec, {"dataSourceRef"});
  if (source) ValidateDataSource(*source, "spec.dataSource", false, errors);
  if (source_ref) ValidateDataSource(*source_ref, "spec.dataSourceRef", true, errors);
  if (source_ref && !Str(*source_ref, {"namespace"}).empty()) {
    if (source) {
      errors->push_back(FieldInvalid("spec", "\"spec.dataSource\"",
                                     "may not be specified when dataSourceRef.namespace is "
                                     "specified"));
    }
  } else if (source && source_ref) {
    if (Str(*source, {"apiGroup"}) != Str(*source_ref, {"apiGroup"}) ||
        Str(*source, {"kind"}) != Str(*source_ref, {"kind"}) ||
        Str(*source, {"name"}) != Str(*source_ref, {"name"})) {
      errors->push_back(FieldInvalid("spec", "\"spec.dataSource\"", "must match dataSourceRef"));
    }
  }
}

std::optional<Quantity> RequestedStorage(const Json& claim) {
  const Json* v = At(claim, {"spec", "resources", "requests", "storage"});
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return Quantity::Parse(v->get<std::string>());
}

// ValidatePersistentVolumeClaimUpdate, less the checks of the ObjectMeta the machinery does.
void ValidateUpdate(const Json& claim, const Json& old, std::vector<StatusCause>* errors) {
  Json spec = claim.contains("spec") ? claim["spec"] : Json::object();
  Json old_spec = old.contains("spec") ? old["spec"] : Json::object();
  // volumeName may be set once (the binding).
  if (Str(old_spec, {"volumeName"}).empty()) {
    if (spec.contains("volumeName")) {
      old_spec["volumeName"] = spec["volumeName"];
    } else {
      old_spec.erase("volumeName");
    }
  }
  // A nil class may be set once (validateStorageClassUpgradeFromNil).
  const Json* old_annotations = At(old, {"metadata", "annotations"});
  const std::string old_beta =
      old_annotations ? Str(*old_annotations, {kBetaStorageClassAnnotation}) : "";
  const bool old_has_beta = old_annotations && old_annotations->is_object() &&
                            old_annotations->contains(kBetaStorageClassAnnotation);
  if (!old_spec.contains("storageClassName") && spec.contains("storageClassName") &&
      (!old_has_beta || Str(spec, {"storageClassName"}) == old_beta)) {
    old_spec["storageClassName"] = spec["storageClassName"];
  }
  auto new_size = RequestedStorage(claim);
  auto old_size = RequestedStorage(old);
  const bool bound = Str(claim, {"status", "phase"}) == "Bound";
  if (bound && new_size && old_size && new_size->Compare(*old_size) > 0) {
    errors->push_back(
        FieldForbidden("spec.resources.requests.storage", "edgevirt cannot expand claims"));
  }
  if (bound) {
    // A Bound claim may change its request (expansion, refused above for growth; shrinking
    // below): the comparison of the rest of the spec leaves it out.
    Json* requests = spec.contains("resources") && spec["resources"].is_object() &&
                             spec["resources"].contains("requests")
                         ? &spec["resources"]["requests"]
                         : nullptr;
    Json* old_requests = old_spec.contains("resources") && old_spec["resources"].is_object() &&
                                 old_spec["resources"].contains("requests")
                             ? &old_spec["resources"]["requests"]
                             : nullptr;
    if (requests && old_requests && requests->is_object() && old_requests->is_object()) {
      requests->erase("storage");
      old_requests->erase("storage");
    }
  }
  if (spec != old_spec) {
    errors->push_back(FieldForbidden("spec",
                                     "spec is immutable after creation except resources.requests "
                                     "and volumeAttributesClassName for bound claims"));
  }
  if (new_size && old_size && new_size->Compare(*old_size) < 0) {
    errors->push_back(FieldForbidden("spec.resources.requests.storage",
                                     "field can not be less than previous value"));
  }
  const std::string mode = Str(claim, {"spec", "volumeMode"});
  if (mode != Str(old, {"spec", "volumeMode"})) {
    errors->push_back(
        FieldInvalid("volumeMode", mode.empty() ? "null" : Quote(mode), "field is immutable"));
  }
}

// Defaulting (SetDefaults_PersistentVolumeClaim[Spec]), the dropped fields of disabled
// features, the dataSource/dataSourceRef mirroring, and the DefaultStorageClass plugin.
void Default(Json& claim, Operation op, const PersistentVolumeClaimOptions& options) {
  Json& spec = claim["spec"];
  if (!spec.is_object()) spec = Json::object();
  if (!spec.contains("resources")) spec["resources"] = Json::object();
  if (!spec.contains("volumeMode")) spec["volumeMode"] = "Filesystem";
  // VolumeAttributesClass: beta and off by default in 1.32, so the strategy drops it.
  spec.erase("volumeAttributesClassName");
  // EnforceDataSourceBackwardsCompatibility / the AnyVolumeDataSource mirroring.
  if (spec.contains("dataSource") && !spec.contains("dataSourceRef")) {
    spec["dataSourceRef"] = spec["dataSource"];
  } else if (spec.contains("dataSourceRef") && !spec.contains("dataSource") &&
             Str(spec, {"dataSourceRef", "namespace"}).empty()) {
    Json source = spec["dataSourceRef"];
    source.erase("namespace");
    spec["dataSource"] = std::move(source);
  }
  Json& status = claim["status"];
  if (!status.is_object()) status = Json::object();
  if (Str(status, {"phase"}).empty()) status["phase"] = "Pending";
  status.erase("currentVolumeAttributesClassName");
  status.erase("modifyVolumeStatus");
  if (op == Operation::kCreate && !options.default_storage_class.empty() &&
      !spec.contains("storageClassName")) {
    const Json* annotations = At(claim, {"metadata", "annotations"});
    if (annotations == nullptr || !annotations->is_object() ||
        !annotations->contains(kBetaStorageClassAnnotation)) {
      spec["storageClassName"] = options.default_storage_class;
    }
  }
}

AdmitResult AdmitClaim(const PersistentVolumeClaimOptions& options, const AdmitRequest& req) {
  AdmitResult r;
  if (req.object == nullptr || req.op == Operation::kDelete) return r;
  Json& claim = *req.object;
  GoDecoder decoder(&r.unknown_fields);
  decoder.Struct(claim, ClaimShape(), "", "");
  if (!decoder.error().empty()) {
    r.decode_error = decoder.error();
    return r;
  }
  if (req.field_validation == FieldValidation::kIgnore) r.unknown_fields.clear();
  Default(claim, req.op, options);

  if (req.status_subresource) {
    // ValidatePersistentVolumeClaimStatusUpdate: quantities are checked by decoding.
    if (Strings(At(claim, {"spec", "accessModes"})).empty()) {
      r.invalid.push_back(FieldRequired("Spec.accessModes"));
    }
    return r;
  }
  ValidateSpec(claim["spec"], &r.invalid);
  if (req.op == Operation::kUpdate && req.old_object != nullptr) {
    ValidateUpdate(claim, *req.old_object, &r.invalid);
  }
  return r;
}

std::vector<Json> ClaimCells(const Json& claim, WallClock::time_point now) {
  const std::string name = Str(claim, {"metadata", "name"});
  std::string phase = Str(claim, {"status", "phase"});
  if (At(claim, {"metadata", "deletionTimestamp"}) != nullptr) phase = "Terminating";
  const std::string volume = Str(claim, {"spec", "volumeName"});
  std::string capacity, modes;
  if (!volume.empty()) {
    modes = AccessModesString(At(claim, {"status", "accessModes"}) ? claim["status"]["accessModes"]
                                                                   : Json::array());
    const std::string cap = Str(claim, {"status", "capacity", "storage"});
    auto q = Quantity::Parse(cap);
    capacity = q ? q->String() : "0";
  }
  const Json* vac = At(claim, {"spec", "volumeAttributesClassName"});
  const Json* mode = At(claim, {"spec", "volumeMode"});
  return {name,
          phase,
          volume,
          capacity,
          modes,
          ClaimClass(claim),
          vac && vac->is_string() ? vac->get<std::string>() : std::string("<unset>"),
          HumanAge(Str(claim, {"metadata", "creationTimestamp"}), now),
          mode && mode->is_string() ? mode->get<std::string>() : std::string("<unset>")};
}

// The claim names a kubevirt.io volume list refers to.
void ClaimNamesOf(const Json* volumes, std::set<std::string>* out) {
  if (volumes == nullptr || !volumes->is_array()) return;
  for (const Json& v : *volumes) {
    for (const Json* pvc :
         {At(v, {"persistentVolumeClaim"}), At(v, {"ephemeral", "persistentVolumeClaim"})}) {
      if (pvc != nullptr) out->insert(Str(*pvc, {"claimName"}));
    }
  }
}

std::optional<std::string> GuardDelete(const Json& claim, const ObjectLister& list) {
  const std::string ns = Str(claim, {"metadata", "namespace"});
  const std::string name = Str(claim, {"metadata", "name"});
  const std::string subject = "persistentvolumeclaims " + Quote(name);
  auto users = ClaimUsers(list, ns, name);
  if (!users) {
    return subject + " cannot be deleted: finding its users failed: " + users.error().message;
  }
  if (users->empty()) return std::nullopt;
  std::string text;
  for (const auto& u : *users) text += (text.empty() ? "" : ", ") + u;
  return subject + " is in use by " + text;
}

Json Ref(const std::string& name) {
  return {{"allOf", Json::array({{{"$ref", "#/components/schemas/" + name}}})}};
}

Json WithEmptyDefault(Json schema) {
  schema["default"] = Json::object();
  return schema;
}

Json Described(Json schema, const std::string& description) {
  schema["description"] = description;
  return schema;
}

Json StringSchema(const std::string& description) {
  return {{"type", "string"}, {"description", description}};
}

Json StringList(const std::string& description) {
  return {{"type", "array"},
          {"items", {{"type", "string"}, {"default", ""}}},
          {"x-kubernetes-list-type", "atomic"},
          {"description", description}};
}

Json ResourceList(const std::string& description) {
  return {{"type", "object"},
          {"additionalProperties",
           {{"$ref", "#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity"}}},
          {"description", description}};
}

}  // namespace

std::string ClaimClass(const Json& claim) {
  if (const Json* a = At(claim, {"metadata", "annotations"}); a && a->is_object()) {
    if (auto it = a->find(kBetaStorageClassAnnotation); it != a->end() && it->is_string()) {
      return it->get<std::string>();
    }
  }
  return Str(claim, {"spec", "storageClassName"});
}

std::string AccessModesString(const Json& modes) {
  const std::vector<std::string> have = Strings(&modes);
  std::string out;
  for (auto [mode, abbr] :
       {std::pair{"ReadWriteOnce", "RWO"}, std::pair{"ReadOnlyMany", "ROX"},
        std::pair{"ReadWriteMany", "RWX"}, std::pair{"ReadWriteOncePod", "RWOP"}}) {
    if (std::find(have.begin(), have.end(), mode) != have.end()) {
      out += (out.empty() ? "" : ",") + std::string(abbr);
    }
  }
  return out;
}

Result<std::vector<std::string>> ClaimUsers(const ObjectLister& list, const std::string& ns,
                                            const std::string& name) {
  std::vector<std::string> users;
  struct Kind {
    const char* kind;
    std::initializer_list<const char*> volumes;
  };
  for (const Kind& k : {Kind{"VirtualMachine", {"spec", "template", "spec", "volumes"}},
                        Kind{"VirtualMachineInstance", {"spec", "volumes"}}}) {
    auto objects = list("kubevirt.io", k.kind, ns);
    if (!objects) {
      if (objects.error().code == Code::kNotFound) continue;  // not served
      return std::move(objects).error();
    }
    for (const Json& o : *objects) {
      std::set<std::string> claims;
      ClaimNamesOf(At(o, k.volumes), &claims);
      if (claims.count(name) != 0) {
        users.push_back(std::string(k.kind) + " " + Str(o, {"metadata", "namespace"}) + "/" +
                        Str(o, {"metadata", "name"}));
      }
    }
  }
  return users;
}

ResourceType PersistentVolumeClaimResource(const PersistentVolumeClaimOptions& options) {
  ResourceType rt;
  rt.group = "";
  rt.version = "v1";
  rt.kind = "PersistentVolumeClaim";
  rt.list_kind = "PersistentVolumeClaimList";
  rt.plural = "persistentvolumeclaims";
  rt.singular = "persistentvolumeclaim";
  rt.short_names = {"pvc"};
  rt.namespaced = true;
  rt.status_subresource = true;
  rt.verbs = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"};
  rt.admit = [options](const AdmitRequest& req) { return AdmitClaim(options, req); };
  rt.delete_guard = GuardDelete;
  // pkg/printers/internalversion: persistentVolumeClaimColumnDefinitions (1.32).
  rt.default_columns = false;
  rt.columns = {
      {"Name", "string", "name", "Name must be unique within a namespace.", 0},
      {"Status", "string", "", "phase represents the current phase of PersistentVolumeClaim.", 0},
      {"Volume", "string", "",
       "volumeName is the binding reference to the PersistentVolume backing this claim.", 0},
      {"Capacity", "string", "",
       "capacity represents the actual resources of the underlying volume.", 0},
      {"Access Modes", "string", "",
       "accessModes contains the actual access modes the volume backing the PVC has.", 0},
      {"StorageClass", "string", "", "StorageClass of the pvc", 0},
      {"VolumeAttributesClass", "string", "", "VolumeAttributesClass of the pvc", 0},
      {"Age", "string", "",
       "CreationTimestamp is a timestamp representing the server time when this object was "
       "created.",
       0},
      {"VolumeMode", "string", "",
       "volumeMode defines what type of volume is required by the claim. Value of Filesystem is "
       "implied when not included in claim spec.",
       1},
  };
  rt.timed_cells = ClaimCells;
  rt.schema_name = "io.k8s.api.core.v1.PersistentVolumeClaim";
  return rt;
}

Json PersistentVolumeClaimSchemas() {
  const std::string meta = "io.k8s.apimachinery.pkg.apis.meta.v1.";
  const std::string core = "io.k8s.api.core.v1.";
  Json s = Json::object();
  s["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
      {"type", "string"},
      {"description",
       "Quantity is a fixed-point representation of a number, e.g. \"1Gi\", \"500M\", \"1.5Ti\"."}};
  s[meta + "LabelSelectorRequirement"] = {
      {"type", "object"},
      {"description",
       "A label selector requirement is a selector that contains values, a key, and an operator "
       "that relates the key and values."},
      {"required", {"key", "operator"}},
      {"properties",
       {{"key", {{"type", "string"}, {"default", ""}}},
        {"operator",
         StringSchema("Represents a key's relationship to a set of values: In, NotIn, Exists, "
                      "DoesNotExist.")},
        {"values", StringList("An array of string values.")}}}};
  s[meta + "LabelSelector"] = {
      {"type", "object"},
      {"description", "A label query over a set of resources."},
      {"properties",
       {{"matchExpressions",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/" + meta + "LabelSelectorRequirement"}}},
          {"description", "A list of label selector requirements (ANDed)."}}},
        {"matchLabels",
         {{"type", "object"},
          {"additionalProperties", {{"type", "string"}, {"default", ""}}},
          {"description", "A map of {key,value} pairs (ANDed)."}}}}},
      {"x-kubernetes-map-type", "atomic"}};
  s[core + "TypedLocalObjectReference"] = {
      {"type", "object"},
      {"description", "A reference to an object in the same namespace."},
      {"required", {"kind", "name"}},
      {"properties",
       {{"apiGroup", StringSchema("The group of the referenced resource.")},
        {"kind", {{"type", "string"}, {"default", ""}}},
        {"name", {{"type", "string"}, {"default", ""}}}}},
      {"x-kubernetes-map-type", "atomic"}};
  s[core + "TypedObjectReference"] = {
      {"type", "object"},
      {"description", "A reference to an object, possibly in another namespace."},
      {"required", {"kind", "name"}},
      {"properties",
       {{"apiGroup", StringSchema("The group of the referenced resource.")},
        {"kind", {{"type", "string"}, {"default", ""}}},
        {"name", {{"type", "string"}, {"default", ""}}},
        {"namespace", StringSchema("The namespace of the referenced resource.")}}}};
  s[core + "VolumeResourceRequirements"] = {
      {"type", "object"},
      {"description", "The storage resource requirements of a volume."},
      {"properties",
       {{"limits", ResourceList("Limits describes the maximum amount of compute resources.")},
        {"requests", ResourceList("Requests describes the minimum amount of resources required; "
                                  "requests.storage is the size of the volume.")}}}};
  s[core + "PersistentVolumeClaimSpec"] = {
      {"type", "object"},
      {"description", "PersistentVolumeClaimSpec describes the storage a claim asks for."},
      {"properties",
       {{"accessModes",
         StringList("The desired access modes: ReadWriteOnce, ReadOnlyMany, ReadWriteMany, "
                    "ReadWriteOncePod.")},
        {"dataSource",
         Described(Ref(core + "TypedLocalObjectReference"),
                   "A data source to populate the volume from (edgevirt cannot populate "
                   "volumes: such claims stay Pending).")},
        {"dataSourceRef", Described(Ref(core + "TypedObjectReference"),
                                    "The object to populate the volume from (see dataSource).")},
        {"resources", Described(Ref(core + "VolumeResourceRequirements"),
                                "The minimum resources the volume should have; requests.storage is "
                                "required.")},
        {"selector",
         Described(Ref(meta + "LabelSelector"),
                   "A label query over volumes to consider for binding (not supported by "
                   "edgevirt's provisioner).")},
        {"storageClassName",
         StringSchema("The name of the StorageClass (an edgevirtd storage class) required by "
                      "the claim; the default class when omitted.")},
        {"volumeAttributesClassName",
         StringSchema("VolumeAttributesClass of the claim (feature disabled: dropped).")},
        {"volumeMode",
         StringSchema("Filesystem (the default) or Block: the type of volume the claim needs.")},
        {"volumeName",
         StringSchema("The binding reference to the volume backing this claim (pvc-<uid>).")}}}};
  s[core + "PersistentVolumeClaimCondition"] = {
      {"type", "object"},
      {"description", "A condition of a PersistentVolumeClaim."},
      {"required", {"type", "status"}},
      {"properties",
       {{"lastProbeTime", Ref(meta + "Time")},
        {"lastTransitionTime", Ref(meta + "Time")},
        {"message", {{"type", "string"}}},
        {"reason", {{"type", "string"}}},
        {"status", {{"type", "string"}, {"default", ""}}},
        {"type", {{"type", "string"}, {"default", ""}}}}}};
  s[core + "ModifyVolumeStatus"] = {
      {"type", "object"},
      {"description", "The status of a ControllerModifyVolume operation."},
      {"required", {"status"}},
      {"properties",
       {{"status", {{"type", "string"}, {"default", ""}}},
        {"targetVolumeAttributesClassName", {{"type", "string"}}}}}};
  s[core + "PersistentVolumeClaimStatus"] = {
      {"type", "object"},
      {"description", "The current status of a claim."},
      {"properties",
       {{"accessModes", StringList("The actual access modes of the volume backing the claim.")},
        {"allocatedResourceStatuses",
         {{"type", "object"},
          {"additionalProperties", {{"type", "string"}}},
          {"x-kubernetes-map-type", "granular"}}},
        {"allocatedResources", ResourceList("Resources allocated to the claim.")},
        {"capacity", ResourceList("The actual resources of the underlying volume.")},
        {"conditions",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/" + core + "PersistentVolumeClaimCondition"}}},
          {"x-kubernetes-list-map-keys", {"type"}},
          {"x-kubernetes-list-type", "map"},
          {"x-kubernetes-patch-merge-key", "type"},
          {"x-kubernetes-patch-strategy", "merge"}}},
        {"currentVolumeAttributesClassName", {{"type", "string"}}},
        {"modifyVolumeStatus", Ref(core + "ModifyVolumeStatus")},
        {"phase", StringSchema("Pending, Bound or Lost.")}}}};
  s[core + "PersistentVolumeClaim"] = {
      {"type", "object"},
      {"description",
       "PersistentVolumeClaim is a user's request for storage; edgevirtd provisions it from a "
       "storage class of its configuration."},
      {"properties",
       {{"apiVersion", StringSchema("Always \"v1\".")},
        {"kind", StringSchema("Always \"PersistentVolumeClaim\".")},
        {"metadata",
         Described(WithEmptyDefault(Ref(meta + "ObjectMeta")), "Standard object's metadata.")},
        {"spec", Described(WithEmptyDefault(Ref(core + "PersistentVolumeClaimSpec")),
                           "The desired characteristics of a volume.")},
        {"status", Described(WithEmptyDefault(Ref(core + "PersistentVolumeClaimStatus")),
                             "The current information of the claim.")}}},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "PersistentVolumeClaim"}, {"version", "v1"}}})}};
  s[core + "PersistentVolumeClaimList"] = {
      {"type", "object"},
      {"description", "PersistentVolumeClaimList is a list of PersistentVolumeClaim items."},
      {"required", {"items"}},
      {"properties",
       {{"apiVersion", {{"type", "string"}}},
        {"items",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/" + core + "PersistentVolumeClaim"}}}}},
        {"kind", {{"type", "string"}}},
        {"metadata", Ref(meta + "ListMeta")}}},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "PersistentVolumeClaimList"}, {"version", "v1"}}})}};
  return s;
}

}  // namespace edgevirt::api::machinery
