// What the generic Kubernetes API machinery (api/machinery) needs to know about one served
// resource, and the hooks through which a kind's own rules (schema, defaulting, validation,
// printer columns, field selectors) plug in. The machinery is kind-agnostic: KubeVirt's
// VirtualMachine/VirtualMachineInstance (api/kubevirt) and the core/v1 kinds (Event, Secret,
// PersistentVolumeClaim, Service) are all described by a ResourceType.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace edgevirt::api {

using Json = nlohmann::json;

// `fieldValidation` query parameter (POST, PUT, PATCH).
enum class FieldValidation { kIgnore, kWarn, kStrict };

enum class Operation { kCreate, kUpdate, kDelete };

// One entry of metav1.Status details.causes.
struct StatusCause {
  std::string reason;   // "FieldValueInvalid", "FieldValueRequired", "FieldValueNotSupported", …
  std::string message;  // human text, e.g. "spec.template.spec.domain.devices.disks[0].Name …"
  std::string field;    // JSON path, e.g. "spec.template.spec.domain.devices.disks[0].name"
};

// What admission decided about one write.
struct AdmitResult {
  // Fields not in the schema ("spec.foo"). Under kStrict the machinery answers 400 BadRequest
  // `<Kind> in version "v1" cannot be handled as a <Kind>: strict decoding error: unknown field
  // "spec.foo"`; under kWarn they become `Warning: 299 - "unknown field \"spec.foo\""` headers;
  // under kIgnore they are dropped from the object.
  std::vector<std::string> unknown_fields;
  // Denials: non-empty means 422 Invalid with these causes; nothing is written.
  std::vector<StatusCause> invalid;
  // Accepted with warnings (`Warning: 299 - "…"` headers), e.g. "spec.running is deprecated…".
  std::vector<std::string> warnings;
  // Which webhook-style validator denied, for the message prefix (`admission webhook "<name>"
  // denied the request: …`); empty for schema (CRD structural) failures, which use
  // `<Kind>.<group> "<name>" is invalid: …`.
  std::string denied_by;
  // Extension (api/machinery): the body does not decode into the kind (a value of the wrong
  // type, invalid base64 in a []byte field). Non-empty means 400 BadRequest `<Kind> in version
  // "<v>" cannot be handled as a <Kind>: <decode_error>`, as the apiserver's decoder answers;
  // nothing is written and nothing else is reported.
  std::string decode_error;
  // Extension (api/machinery): admission failed on the server's side (an exhausted allocation
  // range, a failed read). Non-empty means 500 InternalError `Internal error occurred:
  // <internal_error>`, as the apiserver answers when its allocators fail; nothing is written.
  std::string internal_error;
};

// Read access to other served objects, for hooks that need it (ResourceType::delete_guard):
// the objects of `group`/`kind` in namespace `ns` ("" = all namespaces), as clients see them
// (server-owned metadata set). kNotFound when that kind is not served.
using ObjectLister = std::function<Result<std::vector<Json>>(
    std::string_view group, std::string_view kind, const std::string& ns)>;

struct AdmitRequest {
  Operation op = Operation::kCreate;
  FieldValidation field_validation = FieldValidation::kStrict;
  const Json* old_object = nullptr;  // kUpdate/kDelete: the stored object
  // kCreate/kUpdate: the incoming object, mutated in place by defaulting (and by kIgnore's
  // removal of unknown fields). Server-owned metadata is already set.
  Json* object = nullptr;
  bool status_subresource = false;  // the write goes through /status
  // Extension (api/machinery): read access to the served objects, set (for creates and
  // updates) only for kinds with ResourceType::serialize_writes; null otherwise.
  const ObjectLister* list = nullptr;
};

struct TableColumn {
  std::string name;         // "Status"
  std::string type;         // "string", "date", "integer", "boolean"
  std::string format;       // "name" for the Name column, else ""
  std::string description;  // our own text
  int priority = 0;         // 1 = only with -o wide
};

struct ResourceType {
  std::string group;    // "kubevirt.io", "" for core
  std::string version;  // "v1"
  std::string kind;     // "VirtualMachine"
  std::string list_kind;
  std::string plural;                    // "virtualmachines"
  std::string singular;                  // "virtualmachine"
  std::vector<std::string> short_names;  // {"vm", "vms"}
  std::vector<std::string> categories;   // {"all"}
  bool namespaced = true;
  bool status_subresource = false;  // VirtualMachine yes, VirtualMachineInstance no
  std::vector<std::string> verbs;   // discovery verbs

  // Decodes against the schema, defaults and validates (webhook semantics). Must not touch the
  // store or any driver; pure function of its inputs.
  std::function<AdmitResult(const AdmitRequest&)> admit;
  // Extension (api/machinery): true = the registry runs this kind's creates and updates one at
  // a time (admission through the store write, one mutex for all such kinds) and gives `admit`
  // read access to the served objects (AdmitRequest::list). For values that must be unique
  // across objects and are allocated at admission (a Service's clusterIP and nodePorts): what
  // admission reads stays true until its write commits. Deletes are not serialized (they only
  // free values).
  bool serialize_writes = false;

  // Printer columns after Name (Age comes first for every kind, rendered by the machinery).
  std::vector<TableColumn> columns;
  // One cell per column in `columns`, from the full object (Json null renders as "<none>").
  // A string cell of a "date" column holding an RFC 3339 time is rendered by the machinery as
  // its age ("5m"), as the CRD table convertor does.
  std::function<std::vector<Json>(const Json& object)> cells;
  // Extension (api/machinery): false = the machinery adds neither Name nor Age; `columns` is
  // the whole table (its name column has format "name"), as for core kinds whose printers
  // order columns their own way (Event: Last Seen, Type, Reason, Object, ..., Name).
  bool default_columns = true;
  // Extension (api/machinery): when set, used instead of `cells`, with the time the table is
  // rendered at (for cells such as Event's "Last Seen" = "5m (x3 over 10m)").
  std::function<std::vector<Json>(const Json& object, std::chrono::system_clock::time_point now)>
      timed_cells;

  // Extra field selectors beyond metadata.name / metadata.namespace (e.g. Event's
  // involvedObject.*, "status.phase"): returns the value or nullopt if unsupported. A
  // supported field must yield a value (possibly "") even for an empty object: the machinery
  // asks with `{}` to tell supported fields from unsupported ones (400 "field label not
  // supported: <field>").
  std::function<std::optional<std::string>(const Json& object, const std::string& field)>
      field_value;

  // Extension (api/machinery): consulted before a DELETE changes anything (after the
  // preconditions; also for dry runs, for DELETE of a collection and for in-process callers),
  // with the stored object and read access to other kinds. A returned message refuses the
  // delete with 409 Conflict carrying that message as is (e.g. `persistentvolumeclaims "data"
  // is in use by VirtualMachine default/vm1`), details {name, group, kind: plural}; nothing is
  // written. Like `admit`, it must not write anything. The check and the delete are not one
  // transaction: an object that starts referring to this one in between is not seen.
  std::function<std::optional<std::string>(const Json& object, const ObjectLister& list)>
      delete_guard;

  // Key of the object's schema in the group-version's OpenAPI `components.schemas`
  // ("io.kubevirt.v1.VirtualMachine"); the machinery builds the paths, the kind module the schemas.
  std::string schema_name;

  // "apiVersion" as written in objects: "kubevirt.io/v1", or "v1" for core.
  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
  // "virtualmachines.kubevirt.io" (the resource name used in error messages), "events" for core.
  std::string QualifiedResource() const { return group.empty() ? plural : plural + "." + group; }
};

// Everything served under one group/version: its resources and the OpenAPI v3
// `components.schemas` that their schema_name entries point into (with
// `x-kubernetes-group-version-kind` on each object schema, as kube-apiserver publishes them).
struct ApiGroupVersion {
  std::string group;
  std::string version;
  std::vector<ResourceType> resources;
  Json schemas = Json::object();
};

}  // namespace edgevirt::api
