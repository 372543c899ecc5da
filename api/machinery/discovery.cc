#include "api/machinery/discovery.h"

#include <cctype>
#include <cstdio>

#include "api/machinery/codec.h"
#include "api/machinery/errors.h"
#include "common/hash.h"

namespace edgevirt::api::machinery {
namespace {

using OJson = nlohmann::ordered_json;

std::string ODump(const OJson& j) {
  return j.dump(-1, ' ', false, OJson::error_handler_t::replace);
}

OJson GroupVersionFor(const std::string& group, const std::string& version) {
  OJson v;
  v["groupVersion"] = group.empty() ? version : group + "/" + version;
  v["version"] = version;
  return v;
}

OJson ResourceEntry(const ResourceType& rt) {
  OJson r;
  r["name"] = rt.plural;
  r["singularName"] = rt.singular;
  r["namespaced"] = rt.namespaced;
  r["kind"] = rt.kind;
  r["verbs"] = rt.verbs;
  if (!rt.short_names.empty()) r["shortNames"] = rt.short_names;
  if (!rt.categories.empty()) r["categories"] = rt.categories;
  return r;
}

OJson StatusEntry(const ResourceType& rt) {
  OJson r;
  r["name"] = rt.plural + "/status";
  r["singularName"] = "";
  r["namespaced"] = rt.namespaced;
  r["kind"] = rt.kind;
  r["verbs"] = {"get", "patch", "update"};
  return r;
}

std::string ResourceList(const ApiGroupVersion& gv) {
  OJson list;
  list["kind"] = "APIResourceList";
  list["apiVersion"] = "v1";
  list["groupVersion"] = gv.group.empty() ? gv.version : gv.group + "/" + gv.version;
  OJson resources = OJson::array();
  for (const auto& rt : gv.resources) {
    resources.push_back(ResourceEntry(rt));
    if (rt.status_subresource) resources.push_back(StatusEntry(rt));
  }
  list["resources"] = std::move(resources);
  return ODump(list);
}

OJson ApiGroup(const std::string& name, const std::vector<std::string>& versions) {
  OJson g;
  g["name"] = name;
  OJson vs = OJson::array();
  for (const auto& v : versions) vs.push_back(GroupVersionFor(name, v));
  g["versions"] = std::move(vs);
  g["preferredVersion"] = GroupVersionFor(name, versions.front());
  return g;
}

// ---- OpenAPI v3 -------------------------------------------------------------------------------

// "kubevirt.io" -> "KubevirtIo", "" -> "Core" (the apiserver's operationId prefixes).
std::string GroupCamel(const std::string& group) {
  if (group.empty()) return "Core";
  std::string out;
  bool upper = true;
  for (char c : group) {
    if (c == '.' || c == '-') {
      upper = true;
      continue;
    }
    out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return out;
}

std::string VersionCamel(const std::string& v) {
  std::string out = v;
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

OJson Ref(const std::string& name) { return OJson{{"$ref", "#/components/schemas/" + name}}; }

OJson QueryParam(const std::string& name, const std::string& type, const std::string& desc) {
  OJson p;
  p["name"] = name;
  p["in"] = "query";
  p["description"] = desc;
  p["schema"] = OJson{{"type", type}, {"uniqueItems", true}};
  return p;
}

OJson PathParam(const std::string& name, const std::string& desc) {
  OJson p;
  p["name"] = name;
  p["in"] = "path";
  p["description"] = desc;
  p["required"] = true;
  p["schema"] = OJson{{"type", "string"}, {"uniqueItems", true}};
  return p;
}

OJson DryRun() {
  return QueryParam("dryRun", "string",
                    "When present, indicates that modifications should not be persisted. The only "
                    "valid value is All.");
}
OJson FieldManagerParam() {
  return QueryParam("fieldManager", "string",
                    "fieldManager is a name associated with the actor or entity that is making "
                    "these changes. Required for apply requests (application/apply-patch).");
}
OJson FieldValidationParam() {
  return QueryParam("fieldValidation", "string",
                    "fieldValidation instructs the server on how to handle objects in the request "
                    "containing unknown or duplicate fields. Valid values are: Ignore, Warn (the "
                    "default) and Strict.");
}

OJson Content(const OJson& schema, const std::vector<std::string>& types) {
  OJson c = OJson::object();
  for (const auto& t : types) c[t] = OJson{{"schema", schema}};
  return c;
}

OJson Responses(const std::vector<std::pair<std::string, OJson>>& codes) {
  OJson r = OJson::object();
  for (const auto& [code, schema] : codes) {
    OJson resp;
    resp["description"] = code == "200" ? "OK" : code == "201" ? "Created" : "Accepted";
    resp["content"] = Content(schema, {"application/json", "application/yaml"});
    r[code] = std::move(resp);
  }
  r["401"] = OJson{{"description", "Unauthorized"}};
  return r;
}

OJson Gvk(const ResourceType& rt) {
  return OJson{{"group", rt.group}, {"version", rt.version}, {"kind", rt.kind}};
}

OJson Operation(const ResourceType& rt, const std::string& op_id, const std::string& description) {
  OJson op;
  op["tags"] = {GroupCamel(rt.group) + "_" + rt.version};
  op["description"] = description;
  op["operationId"] = op_id;
  return op;
}

void Finish(OJson& op, const ResourceType& rt, const std::string& action) {
  op["x-kubernetes-action"] = action;
  op["x-kubernetes-group-version-kind"] = Gvk(rt);
}

std::vector<OJson> ListParams() {
  return {
      QueryParam("allowWatchBookmarks", "boolean",
                 "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
      QueryParam("continue", "string",
                 "The continue option should be set when retrieving more results from the "
                 "server."),
      QueryParam("fieldSelector", "string",
                 "A selector to restrict the list of returned objects by their fields."),
      QueryParam("labelSelector", "string",
                 "A selector to restrict the list of returned objects by their labels."),
      QueryParam("limit", "integer", "limit is a maximum number of responses to return."),
      QueryParam("resourceVersion", "string",
                 "resourceVersion sets a constraint on what resource versions a request may be "
                 "served from."),
      QueryParam("resourceVersionMatch", "string",
                 "resourceVersionMatch determines how resourceVersion is applied to list calls."),
      QueryParam("sendInitialEvents", "boolean", "Not supported by edgevirt."),
      QueryParam("timeoutSeconds", "integer",
                 "Timeout for the list/watch call, regardless of any activity or inactivity."),
      QueryParam("watch", "boolean",
                 "Watch for changes to the described resources and return them as a stream of "
                 "add, update, and remove notifications."),
  };
}

void AddResourcePaths(OJson& paths, const ResourceType& rt, const std::string& prefix,
                      const Json& schemas) {
  const std::string camel = GroupCamel(rt.group) + VersionCamel(rt.version);
  const OJson obj = Ref(rt.schema_name);
  const std::string list_schema = rt.schema_name + "List";
  const OJson list = schemas.contains(list_schema) ? Ref(list_schema) : OJson{{"type", "object"}};
  const OJson status = Ref("io.k8s.apimachinery.pkg.apis.meta.v1.Status");
  const OJson delete_options = Ref("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions");
  const OJson patch = Ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
  const OJson pretty =
      QueryParam("pretty", "string", "If 'true', then the output is pretty printed.");
  const std::string ns_desc = "object name and auth scope, such as for teams and projects";
  const std::string ns_part = rt.namespaced ? "/namespaces/{namespace}" : "";
  const std::string scoped = rt.namespaced ? "Namespaced" : "";

  // Collection.
  {
    OJson item;
    OJson get = Operation(rt, "list" + camel + scoped + rt.kind,
                          "list or watch objects of kind " + rt.kind);
    get["parameters"] = ListParams();
    get["responses"] = Responses({{"200", list}});
    Finish(get, rt, "list");
    item["get"] = std::move(get);

    OJson post = Operation(rt, "create" + camel + scoped + rt.kind, "create a " + rt.kind);
    post["parameters"] = {DryRun(), FieldManagerParam(), FieldValidationParam()};
    post["requestBody"] = OJson{{"content", Content(obj, {"application/json", "application/yaml"})},
                                {"required", true}};
    post["responses"] = Responses({{"200", obj}, {"201", obj}, {"202", obj}});
    Finish(post, rt, "post");
    item["post"] = std::move(post);

    OJson del = Operation(rt, "deletecollection" + camel + scoped + rt.kind,
                          "delete collection of " + rt.kind);
    std::vector<OJson> del_params = ListParams();
    del_params.push_back(DryRun());
    del_params.push_back(QueryParam("gracePeriodSeconds", "integer",
                                    "The duration in seconds before the object should be "
                                    "deleted."));
    del_params.push_back(QueryParam("propagationPolicy", "string",
                                    "Whether and how garbage collection will be performed: "
                                    "Orphan, Background or Foreground."));
    del["parameters"] = std::move(del_params);
    del["requestBody"] =
        OJson{{"content", Content(delete_options, {"application/json", "application/yaml"})}};
    del["responses"] = Responses({{"200", status}});
    Finish(del, rt, "deletecollection");
    item["delete"] = std::move(del);

    OJson params = OJson::array();
    if (rt.namespaced) params.push_back(PathParam("namespace", ns_desc));
    params.push_back(pretty);
    item["parameters"] = std::move(params);
    paths[prefix + ns_part + "/" + rt.plural] = std::move(item);
  }
  // All namespaces.
  if (rt.namespaced) {
    OJson item;
    OJson get = Operation(rt, "list" + camel + rt.kind + "ForAllNamespaces",
                          "list or watch objects of kind " + rt.kind);
    get["parameters"] = ListParams();
    get["responses"] = Responses({{"200", list}});
    Finish(get, rt, "list");
    item["get"] = std::move(get);
    item["parameters"] = {pretty};
    paths[prefix + "/" + rt.plural] = std::move(item);
  }
  // One object, and its status.
  for (bool status_path : {false, true}) {
    if (status_path && !rt.status_subresource) continue;
    const std::string suffix = status_path ? "Status" : "";
    OJson item;
    OJson get = Operation(
        rt, "read" + camel + scoped + rt.kind + suffix,
        std::string(status_path ? "read status of" : "read") + " the specified " + rt.kind);
    get["parameters"] = OJson::array();
    if (!status_path) {
      get["parameters"].push_back(QueryParam("resourceVersion", "string",
                                             "resourceVersion sets a constraint on what resource "
                                             "versions a request may be served from."));
    }
    get["responses"] = Responses({{"200", obj}});
    Finish(get, rt, "get");
    item["get"] = std::move(get);

    OJson put = Operation(
        rt, "replace" + camel + scoped + rt.kind + suffix,
        std::string(status_path ? "replace status of" : "replace") + " the specified " + rt.kind);
    put["parameters"] = {DryRun(), FieldManagerParam(), FieldValidationParam()};
    put["requestBody"] = OJson{{"content", Content(obj, {"application/json", "application/yaml"})},
                               {"required", true}};
    put["responses"] = Responses({{"200", obj}, {"201", obj}});
    Finish(put, rt, "put");
    item["put"] = std::move(put);

    if (!status_path) {
      OJson del = Operation(rt, "delete" + camel + scoped + rt.kind, "delete a " + rt.kind);
      del["parameters"] = {
          DryRun(),
          QueryParam("gracePeriodSeconds", "integer",
                     "The duration in seconds before the object should be deleted."),
          QueryParam("orphanDependents", "boolean",
                     "Deprecated: please use the PropagationPolicy."),
          QueryParam("propagationPolicy", "string",
                     "Whether and how garbage collection will be performed: Orphan, Background "
                     "or Foreground."),
      };
      del["requestBody"] =
          OJson{{"content", Content(delete_options, {"application/json", "application/yaml"})}};
      del["responses"] = Responses({{"200", obj}, {"202", obj}});
      Finish(del, rt, "delete");
      item["delete"] = std::move(del);
    }

    OJson pat =
        Operation(rt, "patch" + camel + scoped + rt.kind + suffix,
                  std::string(status_path ? "partially update status of" : "partially update") +
                      " the specified " + rt.kind);
    pat["parameters"] = {
        DryRun(),
        FieldManagerParam(),
        FieldValidationParam(),
        QueryParam("force", "boolean",
                   "Force is going to \"force\" Apply requests. It means user will re-acquire "
                   "conflicting fields owned by other people. Must be unset for non-apply patch "
                   "requests."),
    };
    // Custom resources take no strategic merge patch: kubectl then falls back to merge patch.
    pat["requestBody"] = OJson{
        {"content", Content(patch, {"application/json-patch+json", "application/merge-patch+json",
                                    "application/apply-patch+yaml"})},
        {"required", true}};
    pat["responses"] = Responses({{"200", obj}, {"201", obj}});
    Finish(pat, rt, "patch");
    item["patch"] = std::move(pat);

    OJson params = OJson::array();
    params.push_back(PathParam("name", "name of the " + rt.kind));
    if (rt.namespaced) params.push_back(PathParam("namespace", ns_desc));
    params.push_back(pretty);
    item["parameters"] = std::move(params);
    paths[prefix + ns_part + "/" + rt.plural + "/{name}" + (status_path ? "/status" : "")] =
        std::move(item);
  }
}

// Minimal definitions of the meta.k8s.io types the paths reference, for documents whose kind
// module did not provide them.
void AddMetaSchemas(Json& schemas) {
  auto add = [&](const std::string& name, Json def) {
    if (!schemas.contains(name)) schemas[name] = std::move(def);
  };
  const std::string meta = "io.k8s.apimachinery.pkg.apis.meta.v1.";
  add(meta + "Patch",
      {{"type", "object"},
       {"description",
        "Patch is provided to give a concrete name and type to the Kubernetes PATCH request "
        "body."}});
  add(meta + "Preconditions",
      {{"type", "object"},
       {"description", "Preconditions must be fulfilled before an operation is carried out."},
       {"properties", {{"resourceVersion", {{"type", "string"}}}, {"uid", {{"type", "string"}}}}}});
  add(meta + "DeleteOptions",
      {{"type", "object"},
       {"description", "DeleteOptions may be provided when deleting an API object."},
       {"properties",
        {{"apiVersion", {{"type", "string"}}},
         {"kind", {{"type", "string"}}},
         {"dryRun", {{"type", "array"}, {"items", {{"type", "string"}, {"default", ""}}}}},
         {"gracePeriodSeconds", {{"type", "integer"}, {"format", "int64"}}},
         {"orphanDependents", {{"type", "boolean"}}},
         {"preconditions",
          {{"allOf", Json::array({{{"$ref", "#/components/schemas/" + meta + "Preconditions"}}})}}},
         {"propagationPolicy", {{"type", "string"}}}}}});
  add(meta + "StatusCause", {{"type", "object"},
                             {"properties",
                              {{"field", {{"type", "string"}}},
                               {"message", {{"type", "string"}}},
                               {"reason", {{"type", "string"}}}}}});
  add(meta + "StatusDetails",
      {{"type", "object"},
       {"properties",
        {{"causes",
          {{"type", "array"},
           {"items", {{"$ref", "#/components/schemas/" + meta + "StatusCause"}}}}},
         {"group", {{"type", "string"}}},
         {"kind", {{"type", "string"}}},
         {"name", {{"type", "string"}}},
         {"retryAfterSeconds", {{"type", "integer"}, {"format", "int32"}}},
         {"uid", {{"type", "string"}}}}}});
  add(meta + "Status",
      {{"type", "object"},
       {"description", "Status is a return value for calls that don't return other objects."},
       {"properties",
        {{"apiVersion", {{"type", "string"}}},
         {"code", {{"type", "integer"}, {"format", "int32"}}},
         {"details", {{"$ref", "#/components/schemas/" + meta + "StatusDetails"}}},
         {"kind", {{"type", "string"}}},
         {"message", {{"type", "string"}}},
         {"reason", {{"type", "string"}}},
         {"status", {{"type", "string"}}}}},
       {"x-kubernetes-group-version-kind",
        Json::array({{{"group", ""}, {"kind", "Status"}, {"version", "v1"}}})}});
  add(meta + "Time", {{"type", "string"}, {"format", "date-time"}});
  add(meta + "MicroTime", {{"type", "string"}, {"format", "date-time"}});
  add(meta + "FieldsV1", {{"type", "object"}});
  add(meta + "ListMeta", {{"type", "object"},
                          {"properties",
                           {{"continue", {{"type", "string"}}},
                            {"remainingItemCount", {{"type", "integer"}, {"format", "int64"}}},
                            {"resourceVersion", {{"type", "string"}}},
                            {"selfLink", {{"type", "string"}}}}}});
  add(meta + "OwnerReference", {{"type", "object"},
                                {"required", {"apiVersion", "kind", "name", "uid"}},
                                {"properties",
                                 {{"apiVersion", {{"type", "string"}}},
                                  {"blockOwnerDeletion", {{"type", "boolean"}}},
                                  {"controller", {{"type", "boolean"}}},
                                  {"kind", {{"type", "string"}}},
                                  {"name", {{"type", "string"}}},
                                  {"uid", {{"type", "string"}}}}}});
  add(meta + "ManagedFieldsEntry",
      {{"type", "object"},
       {"properties",
        {{"apiVersion", {{"type", "string"}}},
         {"fieldsType", {{"type", "string"}}},
         {"fieldsV1", {{"$ref", "#/components/schemas/" + meta + "FieldsV1"}}},
         {"manager", {{"type", "string"}}},
         {"operation", {{"type", "string"}}},
         {"subresource", {{"type", "string"}}},
         {"time", {{"$ref", "#/components/schemas/" + meta + "Time"}}}}}});
  add(meta + "ObjectMeta",
      {{"type", "object"},
       {"properties",
        {{"annotations", {{"type", "object"}, {"additionalProperties", {{"type", "string"}}}}},
         {"creationTimestamp", {{"$ref", "#/components/schemas/" + meta + "Time"}}},
         {"deletionGracePeriodSeconds", {{"type", "integer"}, {"format", "int64"}}},
         {"deletionTimestamp", {{"$ref", "#/components/schemas/" + meta + "Time"}}},
         {"finalizers", {{"type", "array"}, {"items", {{"type", "string"}}}}},
         {"generateName", {{"type", "string"}}},
         {"generation", {{"type", "integer"}, {"format", "int64"}}},
         {"labels", {{"type", "object"}, {"additionalProperties", {{"type", "string"}}}}},
         {"managedFields",
          {{"type", "array"},
           {"items", {{"$ref", "#/components/schemas/" + meta + "ManagedFieldsEntry"}}}}},
         {"name", {{"type", "string"}}},
         {"namespace", {{"type", "string"}}},
         {"ownerReferences",
          {{"type", "array"},
           {"items", {{"$ref", "#/components/schemas/" + meta + "OwnerReference"}}}}},
         {"resourceVersion", {{"type", "string"}}},
         {"selfLink", {{"type", "string"}}},
         {"uid", {{"type", "string"}}}}}});
}

std::string OpenApiFor(const ApiGroupVersion& gv, const std::vector<ApiGroupVersion>& all) {
  OJson doc;
  doc["openapi"] = "3.0.0";
  doc["info"] = OJson{{"title", "Kubernetes"}, {"version", "v1.32.0"}};
  OJson paths = OJson::object();
  const std::string prefix =
      gv.group.empty() ? "/api/" + gv.version : "/apis/" + gv.group + "/" + gv.version;
  Json schemas = gv.schemas.is_object() ? gv.schemas : Json::object();
  // Share the meta.k8s.io definitions other group-versions publish.
  for (const auto& other : all) {
    if (!other.schemas.is_object()) continue;
    for (const auto& [k, v] : other.schemas.items()) {
      if (k.rfind("io.k8s.apimachinery.", 0) == 0 && !schemas.contains(k)) schemas[k] = v;
    }
  }
  AddMetaSchemas(schemas);
  for (const auto& rt : gv.resources) AddResourcePaths(paths, rt, prefix, schemas);
  doc["paths"] = std::move(paths);
  std::string out = ODump(doc);
  // Append components without reordering their (sorted) keys.
  out.pop_back();
  out += ",\"components\":{\"schemas\":" + Dump(schemas) + "}}";
  return out;
}

std::string Fnv1aHex(const std::string& s) {
  const uint64_t h = Fnv1a64(s);
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llX", static_cast<unsigned long long>(h));
  return buf;
}

HttpResponse JsonOk(const std::string& body) { return HttpResponse::Json(200, body); }

}  // namespace

Discovery::Discovery(const std::vector<ApiGroupVersion>& groups, DiscoveryOptions options) {
  const ApiGroupVersion* core = nullptr;
  OJson group_list;
  group_list["kind"] = "APIGroupList";
  group_list["apiVersion"] = "v1";
  OJson glist = OJson::array();
  for (const auto& gv : groups) {
    if (gv.group.empty()) {
      core = &gv;
      continue;
    }
    glist.push_back(ApiGroup(gv.group, {gv.version}));
    OJson g = ApiGroup(gv.group, {gv.version});
    OJson group_doc;
    group_doc["kind"] = "APIGroup";
    group_doc["apiVersion"] = "v1";
    for (auto it = g.begin(); it != g.end(); ++it) group_doc[it.key()] = it.value();
    documents_["/apis/" + gv.group] = ODump(group_doc);
    documents_["/apis/" + gv.group + "/" + gv.version] = ResourceList(gv);
    openapi_["apis/" + gv.group + "/" + gv.version] = OpenApiFor(gv, groups);
  }
  if (options.subresources_group) {
    const std::string g = kSubresourcesGroup;
    glist.push_back(ApiGroup(g, {"v1"}));
    OJson group_doc;
    group_doc["kind"] = "APIGroup";
    group_doc["apiVersion"] = "v1";
    OJson body = ApiGroup(g, {"v1"});
    for (auto it = body.begin(); it != body.end(); ++it) group_doc[it.key()] = it.value();
    documents_["/apis/" + g] = ODump(group_doc);
    OJson list;
    list["kind"] = "APIResourceList";
    list["apiVersion"] = "v1";
    list["groupVersion"] = g + "/v1";
    OJson resources = OJson::array();
    for (const auto& name : options.subresources) {
      OJson r;
      r["name"] = name;
      r["singularName"] = "";
      r["namespaced"] = true;
      r["kind"] = "";
      r["verbs"] = nullptr;
      resources.push_back(std::move(r));
    }
    list["resources"] = std::move(resources);
    documents_["/apis/" + g + "/v1"] = ODump(list);
    OJson version;
    version["gitVersion"] = options.kubevirt_version;
    version["gitCommit"] = "";
    version["gitTreeState"] = "clean";
    version["buildDate"] = options.build_date;
    version["goVersion"] = "";
    version["compiler"] = "";
    version["platform"] = "linux/amd64";
    documents_["/apis/" + g + "/v1/version"] = ODump(version);
  }
  group_list["groups"] = std::move(glist);
  documents_["/apis"] = ODump(group_list);
  documents_["/apis/"] = documents_["/apis"];
  if (core != nullptr) {
    OJson versions;
    versions["kind"] = "APIVersions";
    versions["versions"] = {core->version};
    versions["serverAddressByClientCIDRs"] =
        OJson::array({OJson{{"clientCIDR", "0.0.0.0/0"}, {"serverAddress", ""}}});
    documents_["/api"] = ODump(versions);
    documents_["/api/"] = documents_["/api"];
    documents_["/api/" + core->version] = ResourceList(*core);
    openapi_["api/" + core->version] = OpenApiFor(*core, groups);
  }
  OJson kube_version;
  kube_version["major"] = options.kubernetes_major;
  kube_version["minor"] = options.kubernetes_minor;
  kube_version["emulationMajor"] = options.kubernetes_major;
  kube_version["emulationMinor"] = options.kubernetes_minor;
  kube_version["gitVersion"] = options.kubernetes_git_version;
  kube_version["gitCommit"] = "";
  kube_version["gitTreeState"] = "clean";
  kube_version["buildDate"] = options.build_date;
  kube_version["goVersion"] = "";
  kube_version["compiler"] = "gc";
  kube_version["platform"] = "linux/amd64";
  documents_["/version"] = ODump(kube_version);
  documents_["/version/"] = documents_["/version"];

  OJson index;
  OJson ipaths = OJson::object();
  for (const auto& [path, doc] : openapi_) {
    ipaths[path] = OJson{{"serverRelativeURL", "/openapi/v3/" + path + "?hash=" + Fnv1aHex(doc)}};
  }
  index["paths"] = std::move(ipaths);
  openapi_index_ = ODump(index);
}

const std::string& Discovery::OpenApiDocument(const std::string& gv_path) const {
  static const std::string kEmpty;
  auto it = openapi_.find(gv_path);
  return it == openapi_.end() ? kEmpty : it->second;
}

std::optional<HttpResponse> Discovery::Serve(const HttpRequest& request) const {
  const std::string& path = request.path;
  const bool is_openapi = path == "/openapi/v3" || path == "/openapi/v3/" ||
                          path.rfind("/openapi/v3/", 0) == 0 || path == "/openapi/v2";
  auto doc = documents_.find(path);
  if (doc == documents_.end() && !is_openapi) return std::nullopt;
  if (request.method != "GET" && request.method != "HEAD") return MethodNotAllowed().ToResponse();
  if (doc != documents_.end()) return JsonOk(doc->second);
  if (path == "/openapi/v3" || path == "/openapi/v3/") return JsonOk(openapi_index_);
  if (path.rfind("/openapi/v3/", 0) == 0) {
    auto it = openapi_.find(path.substr(std::string("/openapi/v3/").size()));
    if (it == openapi_.end()) return PathNotFound().ToResponse();
    HttpResponse r = JsonOk(it->second);
    r.headers.emplace_back("Etag", "\"" + Fnv1aHex(it->second) + "\"");
    if (request.QueryParam("hash")) {
      r.headers.emplace_back("Cache-Control", "public, immutable");
      r.headers.emplace_back("Expires", "Sun, 01 Jan 2090 00:00:00 GMT");
    }
    return r;
  }
  // No OpenAPI v2: it would have to be protobuf; kubectl 1.32 uses v3.
  return PathNotFound().ToResponse();
}

}  // namespace edgevirt::api::machinery
