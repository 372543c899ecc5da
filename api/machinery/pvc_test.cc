// core/v1 PersistentVolumeClaim through the machinery: what `kubectl create -f pvc.yaml`,
// `kubectl get pvc` and `kubectl delete pvc` send and expect, kube-apiserver's defaulting and
// validation answers, and the refusal to delete a claim a VirtualMachine uses.
#include "api/machinery/pvc.h"

#include "api/machinery/machinery.h"
#include "api/machinery/testing.h"
#include "tests/support/catch.h"

namespace edgevirt::api::machinery {
namespace {

const std::string kClaims = "/api/v1/namespaces/default/persistentvolumeclaims";
const std::string kVms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const std::string kVmis = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";

// kubevirt.io/v1 VirtualMachine and VirtualMachineInstance without their rules: enough for the
// delete guard, which reads their volumes as JSON.
ResourceType FakeKubevirtType(const std::string& kind, const std::string& plural) {
  ResourceType rt;
  rt.group = "kubevirt.io";
  rt.version = "v1";
  rt.kind = kind;
  rt.list_kind = kind + "List";
  rt.plural = plural;
  rt.singular = kind;
  for (char& c : rt.singular) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  rt.verbs = {"create", "delete", "get", "list", "patch", "update", "watch"};
  rt.schema_name = "io.kubevirt.v1." + kind;
  rt.cells = [](const Json&) { return std::vector<Json>{}; };
  return rt;
}

std::vector<ApiGroupVersion> Groups(const std::string& default_class) {
  ApiGroupVersion kv;
  kv.group = "kubevirt.io";
  kv.version = "v1";
  kv.resources = {FakeKubevirtType("VirtualMachine", "virtualmachines"),
                  FakeKubevirtType("VirtualMachineInstance", "virtualmachineinstances")};
  CoreV1Options core;
  core.claims.default_storage_class = default_class;
  return {kv, CoreV1(core)};
}

struct PvcEnv : testing::Env {
  explicit PvcEnv(const std::string& default_class = "local")
      : testing::Env({}, {}, Groups(default_class)) {}
};

std::string ClaimJson(const std::string& name, const std::string& spec,
                      const std::string& extra_meta = "") {
  return R"({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":")" + name + "\"" +
         (extra_meta.empty() ? "" : "," + extra_meta) + "},\"spec\":{" + spec + "}}";
}

const std::string kSpec =
    R"("accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}})";

std::vector<std::string> Causes(const Json& status) {
  std::vector<std::string> out;
  for (const auto& c : status["details"]["causes"]) {
    out.push_back(c["field"].get<std::string>() + ": " + c["message"].get<std::string>());
  }
  return out;
}

TEST_CASE("pvc: discovery and OpenAPI", "[pvc]") {
  PvcEnv env;
  auto core = env.Call("GET", "/api/v1");
  REQUIRE(core.status == 200);
  Json pvc, status;
  for (const auto& r : core.json["resources"]) {
    if (r["name"] == "persistentvolumeclaims") pvc = r;
    if (r["name"] == "persistentvolumeclaims/status") status = r;
  }
  REQUIRE(pvc.is_object());
  CHECK(pvc["kind"] == "PersistentVolumeClaim");
  CHECK(pvc["singularName"] == "persistentvolumeclaim");
  CHECK(pvc["namespaced"] == true);
  CHECK(pvc["shortNames"] == Json::array({"pvc"}));
  REQUIRE(status.is_object());
  CHECK(status["verbs"] == Json::array({"get", "patch", "update"}));

  auto doc = env.Call("GET", "/openapi/v3/api/v1");
  REQUIRE(doc.status == 200);
  CHECK(doc.json["paths"].contains("/api/v1/namespaces/{namespace}/persistentvolumeclaims"));
  CHECK(doc.json["paths"].contains(
      "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}/status"));
  const Json& schemas = doc.json["components"]["schemas"];
  CHECK(schemas["io.k8s.api.core.v1.PersistentVolumeClaim"]["x-kubernetes-group-version-kind"][0]
               ["kind"] == "PersistentVolumeClaim");
  CHECK(schemas.contains("io.k8s.api.core.v1.PersistentVolumeClaimSpec"));
  CHECK(schemas.contains("io.k8s.apimachinery.pkg.api.resource.Quantity"));
  CHECK(schemas.contains("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"));
  // Every $ref points at a schema of the document.
  std::function<void(const Json&)> refs = [&](const Json& j) {
    if (j.is_object()) {
      if (auto r = j.find("$ref"); r != j.end()) {
        std::string name =
            r->get<std::string>().substr(std::string("#/components/schemas/").size());
        INFO(name);
        CHECK(schemas.contains(name));
      }
      for (const auto& [k, v] : j.items()) refs(v);
    } else if (j.is_array()) {
      for (const auto& v : j) refs(v);
    }
  };
  refs(schemas);
}

TEST_CASE("pvc: create defaults as kube-apiserver and the DefaultStorageClass plugin", "[pvc]") {
  PvcEnv env;
  auto created = env.Call("POST", kClaims + "?fieldManager=kubectl-create&fieldValidation=Strict",
                          ClaimJson("data", R"("accessModes":["ReadWriteOnce"],)"
                                            R"("resources":{"requests":{"storage":"1.5Gi"}})"));
  INFO(created.body);
  REQUIRE(created.status == 201);
  CHECK(created.json["spec"]["storageClassName"] == "local");
  CHECK(created.json["spec"]["volumeMode"] == "Filesystem");
  CHECK(created.json["spec"]["resources"]["requests"]["storage"] == "1536Mi");
  CHECK(created.json["status"] == Json{{"phase", "Pending"}});
  CHECK(env.Call("GET", kClaims + "/data").json == created.json);

  // An explicit class (also "", "no class") is kept; so is a class given by the beta
  // annotation; a status sent with the create is dropped (status subresource).
  auto empty = env.Call("POST", kClaims, ClaimJson("empty", kSpec + R"(,"storageClassName":"")"));
  REQUIRE(empty.status == 201);
  CHECK(empty.json["spec"]["storageClassName"] == "");
  auto fast = env.Call(
      "POST", kClaims,
      R"({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"fast"},)"
      R"("spec":{"accessModes":["ReadWriteMany"],"storageClassName":"fast","volumeMode":"Block",)"
      R"("resources":{"requests":{"storage":1073741824}}},"status":{"phase":"Bound"}})");
  INFO(fast.body);
  REQUIRE(fast.status == 201);
  CHECK(fast.json["spec"]["storageClassName"] == "fast");
  CHECK(fast.json["spec"]["volumeMode"] == "Block");
  CHECK(fast.json["spec"]["resources"]["requests"]["storage"] == "1073741824");
  CHECK(fast.json["status"]["phase"] == "Pending");
  auto beta = env.Call(
      "POST", kClaims,
      ClaimJson("beta", kSpec, R"("annotations":{"volume.beta.kubernetes.io/storage-class":"x"})"));
  REQUIRE(beta.status == 201);
  CHECK_FALSE(beta.json["spec"].contains("storageClassName"));
  CHECK(ClaimClass(beta.json) == "x");

  // No default class: the claim keeps none.
  PvcEnv none("");
  auto plain = none.Call("POST", kClaims, ClaimJson("plain", kSpec));
  REQUIRE(plain.status == 201);
  CHECK_FALSE(plain.json["spec"].contains("storageClassName"));

  // Fields of the disabled VolumeAttributesClass feature are dropped; the data source is mirrored.
  auto vac = env.Call("POST", kClaims,
                      ClaimJson("vac", kSpec + R"(,"volumeAttributesClassName":"gold",)"
                                               R"("dataSource":{"kind":"PersistentVolumeClaim",)"
                                               R"("name":"data"})"));
  INFO(vac.body);
  REQUIRE(vac.status == 201);
  CHECK_FALSE(vac.json["spec"].contains("volumeAttributesClassName"));
  CHECK(vac.json["spec"]["dataSourceRef"] ==
        Json{{"kind", "PersistentVolumeClaim"}, {"name", "data"}});
}

TEST_CASE("pvc: kubectl get pvc columns", "[pvc]") {
  PvcEnv env;
  REQUIRE(
      env.Call("POST", kClaims,
               ClaimJson("data", R"("accessModes":["ReadOnlyMany","ReadWriteOnce",)"
                                 R"("ReadOnlyMany"],"resources":{"requests":{"storage":"1Gi"}})"))
          .status == 201);
  const std::vector<std::pair<std::string, std::string>> table_accept = {
      {"accept", "application/json;as=Table;v=v1;g=meta.k8s.io"}};
  auto table = env.Call("GET", kClaims, "", "", table_accept);
  REQUIRE(table.status == 200);
  std::vector<std::string> cols;
  for (const auto& c : table.json["columnDefinitions"]) cols.push_back(c["name"]);
  CHECK(cols == std::vector<std::string>{"Name", "Status", "Volume", "Capacity", "Access Modes",
                                         "StorageClass", "VolumeAttributesClass", "Age",
                                         "VolumeMode"});
  CHECK(table.json["columnDefinitions"][0]["format"] == "name");
  CHECK(table.json["columnDefinitions"][8]["priority"] == 1);
  REQUIRE(table.json["rows"].size() == 1);
  Json cells = table.json["rows"][0]["cells"];
  CHECK(cells[0] == "data");
  CHECK(cells[1] == "Pending");
  CHECK(cells[2] == "");
  CHECK(cells[3] == "");
  CHECK(cells[4] == "");
  CHECK(cells[5] == "local");
  CHECK(cells[6] == "<unset>");
  CHECK(cells[7].is_string());
  CHECK(cells[8] == "Filesystem");

  // What the claims controller writes when it binds: spec.volumeName, then the status.
  auto bound = env.registry().Mutate(*env.registry().ByKind("", "PersistentVolumeClaim"), "default",
                                     "data", false,
                                     [](Json& o) -> Status {
                                       o["spec"]["volumeName"] = "pvc-1";
                                       return Ok();
                                     },
                                     {});
  REQUIRE(bound.ok());
  auto status = env.Call("GET", kClaims + "/data");
  status.json["status"] = {{"phase", "Bound"},
                           {"accessModes", {"ReadOnlyMany", "ReadWriteOnce"}},
                           {"capacity", {{"storage", "1073741824"}}}};
  auto put = env.Call("PUT", kClaims + "/data/status", status.json.dump());
  INFO(put.body);
  REQUIRE(put.status == 200);
  CHECK(put.json["status"]["capacity"]["storage"] == "1073741824");
  cells = env.Call("GET", kClaims, "", "", table_accept).json["rows"][0]["cells"];
  CHECK(cells[1] == "Bound");
  CHECK(cells[2] == "pvc-1");
  CHECK(cells[3] == "1073741824");
  CHECK(cells[4] == "RWO,ROX");

  CHECK(AccessModesString(Json::array({"ReadWriteOncePod", "ReadWriteMany", "ReadWriteOnce"})) ==
        "RWO,RWX,RWOP");
}

TEST_CASE("pvc: validation answers 422 with causes", "[pvc]") {
  PvcEnv env;
  auto bad =
      env.Call("POST", kClaims,
               ClaimJson("bad", R"("accessModes":["ReadWriteOncePod","ReadWriteOnce","Sometimes"],)"
                                R"("storageClassName":"Not_A_Class","volumeMode":"Raw",)"
                                R"("resources":{"requests":{"storage":"0"}})"));
  INFO(bad.body);
  REQUIRE(bad.status == 422);
  CHECK(bad.json["reason"] == "Invalid");
  CHECK(bad.json["details"]["kind"] == "PersistentVolumeClaim");
  CHECK(bad.json["details"]["name"] == "bad");
  const auto causes = Causes(bad.json);
  auto has = [&](const std::string& text) {
    INFO(text);
    CHECK(std::find(causes.begin(), causes.end(), text) != causes.end());
  };
  has("spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", "
      "\"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"");
  has("spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes");
  has("spec.resources[storage]: Invalid value: \"0\": must be greater than zero");
  has("spec.volumeMode: Unsupported value: \"Raw\": supported values: \"Block\", \"Filesystem\"");
  CHECK(bad.json["message"].get<std::string>().rfind("PersistentVolumeClaim \"bad\" is invalid: [",
                                                     0) == 0);

  auto empty = env.Call("POST", kClaims, ClaimJson("empty", ""));
  REQUIRE(empty.status == 422);
  CHECK(Causes(empty.json) ==
        std::vector<std::string>{
            "spec.accessModes: Required value: at least 1 access mode is required",
            "spec.resources[storage]: Required value"});
  CHECK(empty.json["message"] ==
        "PersistentVolumeClaim \"empty\" is invalid: [spec.accessModes: Required value: at least "
        "1 access mode is required, spec.resources[storage]: Required value]");

  auto negative = env.Call("POST", kClaims,
                           ClaimJson("neg", R"("accessModes":["ReadWriteOnce"],)"
                                            R"("resources":{"requests":{"storage":"-1Mi"}})"));
  REQUIRE(negative.status == 422);
  CHECK(Causes(negative.json) ==
        std::vector<std::string>{
            "spec.resources[storage]: Invalid value: \"-1Mi\": must be greater than zero"});

  auto selector = env.Call(
      "POST", kClaims,
      ClaimJson("sel", kSpec + R"(,"selector":{"matchExpressions":[{"key":"a","operator":"In"},)"
                               R"({"key":"b","operator":"Near"}]},)"
                               R"("dataSource":{"kind":"Snapshot","name":"s"})"));
  REQUIRE(selector.status == 422);
  const auto selector_causes = Causes(selector.json);
  CHECK(selector_causes.size() == 4);  // dataSourceRef mirrors dataSource, so both fail
  CHECK(selector_causes[0] ==
        "spec.selector.matchExpressions[0].values: Required value: must be specified when "
        "`operator` is 'In' or 'NotIn'");

  // Decoding: a mistyped value or a malformed quantity is 400, as the apiserver's decoder.
  auto typed = env.Call("POST", kClaims,
                        ClaimJson("t", R"("accessModes":"ReadWriteOnce",)"
                                       R"("resources":{"requests":{"storage":"1Gi"}})"));
  CHECK(typed.status == 400);
  CHECK(typed.json["message"] ==
        "PersistentVolumeClaim in version \"v1\" cannot be handled as a PersistentVolumeClaim: "
        "json: cannot unmarshal string into Go struct field PersistentVolumeClaimSpec."
        "spec.accessModes of type []v1.PersistentVolumeAccessMode");
  auto quantity = env.Call("POST", kClaims,
                           ClaimJson("q", R"("accessModes":["ReadWriteOnce"],)"
                                          R"("resources":{"requests":{"storage":"lots"}})"));
  CHECK(quantity.status == 400);
  CHECK(quantity.json["message"] ==
        "PersistentVolumeClaim in version \"v1\" cannot be handled as a PersistentVolumeClaim: "
        "quantities must match the regular expression "
        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'");

  // Unknown fields, at any depth: Strict refuses, Warn warns and drops.
  auto strict = env.Call("POST", kClaims + "?fieldValidation=Strict",
                         ClaimJson("u", kSpec + R"(,"size":"big")"));
  CHECK(strict.status == 400);
  CHECK(strict.json["message"] ==
        "PersistentVolumeClaim in version \"v1\" cannot be handled as a PersistentVolumeClaim: "
        "strict decoding error: unknown field \"spec.size\"");
  auto warn = env.Call(
      "POST", kClaims,
      ClaimJson("u", R"("accessModes":["ReadWriteOnce"],)"
                     R"("resources":{"requests":{"storage":"1Gi"},"claims":[{"name":"x"}]})"));
  REQUIRE(warn.status == 201);
  CHECK(warn.Header("Warning") == "299 - \"unknown field \\\"spec.resources.claims\\\"\"");
  CHECK_FALSE(warn.json["spec"]["resources"].contains("claims"));
}

TEST_CASE("pvc: the spec is immutable; bound claims cannot grow", "[pvc]") {
  PvcEnv env;
  REQUIRE(env.Call("POST", kClaims, ClaimJson("data", kSpec)).status == 201);
  auto patch = [&](const std::string& body) {
    return env.Call("PATCH", kClaims + "/data", body, "application/merge-patch+json");
  };
  auto modes = patch(R"({"spec":{"accessModes":["ReadWriteMany"]}})");
  REQUIRE(modes.status == 422);
  CHECK(Causes(modes.json) ==
        std::vector<std::string>{"spec: Forbidden: spec is immutable after creation except "
                                 "resources.requests and volumeAttributesClassName for bound "
                                 "claims"});
  auto mode = patch(R"({"spec":{"volumeMode":"Block"}})");
  REQUIRE(mode.status == 422);
  CHECK(Causes(mode.json).back() == "volumeMode: Invalid value: \"Block\": field is immutable");
  // An unbound claim cannot change its request either.
  CHECK(patch(R"({"spec":{"resources":{"requests":{"storage":"2Gi"}}}})").status == 422);
  // Metadata may change; volumeName may be set once.
  CHECK(patch(R"({"metadata":{"labels":{"a":"b"}}})").status == 200);
  CHECK(patch(R"({"spec":{"volumeName":"pvc-x"}})").status == 200);
  CHECK(patch(R"({"spec":{"volumeName":"pvc-y"}})").status == 422);

  auto status = env.Call("PATCH", kClaims + "/data/status",
                         R"({"status":{"phase":"Bound","capacity":{"storage":"1Gi"}}})",
                         "application/merge-patch+json");
  REQUIRE(status.status == 200);
  CHECK(status.json["spec"]["volumeName"] == "pvc-x");
  auto grow = patch(R"({"spec":{"resources":{"requests":{"storage":"2Gi"}}}})");
  REQUIRE(grow.status == 422);
  CHECK(Causes(grow.json) == std::vector<std::string>{"spec.resources.requests.storage: "
                                                      "Forbidden: edgevirt cannot expand claims"});
  auto shrink = patch(R"({"spec":{"resources":{"requests":{"storage":"512Mi"}}}})");
  REQUIRE(shrink.status == 422);
  CHECK(Causes(shrink.json) ==
        std::vector<std::string>{"spec.resources.requests.storage: Forbidden: field can not be "
                                 "less than previous value"});
  // The same request in another spelling is no change.
  CHECK(patch(R"({"spec":{"resources":{"requests":{"storage":"1024Mi"}}}})").status == 200);
}

TEST_CASE("pvc: delete is refused while a VirtualMachine or VMI uses the claim", "[pvc]") {
  PvcEnv env;
  REQUIRE(env.Call("POST", kClaims, ClaimJson("data", kSpec)).status == 201);
  REQUIRE(env.Call("POST", kClaims, ClaimJson("other", kSpec)).status == 201);
  auto vm = env.Call(
      "POST", kVms,
      R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","metadata":{"name":"vm1"},)"
      R"("spec":{"template":{"spec":{"volumes":[{"name":"d","persistentVolumeClaim":)"
      R"({"claimName":"data"}}]}}}})");
  REQUIRE(vm.status == 201);
  // A VM of another namespace with the same claim name does not count.
  REQUIRE(env.Call("POST", "/apis/kubevirt.io/v1/namespaces/other/virtualmachines",
                   R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","metadata":)"
                   R"({"name":"vm2"},"spec":{"template":{"spec":{"volumes":[{"name":"d",)"
                   R"("persistentVolumeClaim":{"claimName":"other"}}]}}}})")
              .status == 201);

  for (const std::string query : {"", "?dryRun=All"}) {
    auto refused = env.Call("DELETE", kClaims + "/data" + query);
    INFO(refused.body);
    REQUIRE(refused.status == 409);
    CHECK(refused.json["reason"] == "Conflict");
    CHECK(refused.json["message"] ==
          "persistentvolumeclaims \"data\" is in use by VirtualMachine default/vm1");
    CHECK(refused.json["details"]["name"] == "data");
    CHECK(refused.json["details"]["kind"] == "persistentvolumeclaims");
  }
  CHECK(env.Call("GET", kClaims + "/data").status == 200);

  // A VMI's ephemeral volume counts as well; all users are named.
  REQUIRE(env.Call("POST", kVmis,
                   R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",)"
                   R"("metadata":{"name":"vm1"},"spec":{"volumes":[{"name":"d","ephemeral":)"
                   R"({"persistentVolumeClaim":{"claimName":"data"}}}]}})")
              .status == 201);
  CHECK(env.Call("DELETE", kClaims + "/data").json["message"] ==
        "persistentvolumeclaims \"data\" is in use by VirtualMachine default/vm1, "
        "VirtualMachineInstance default/vm1");

  // The other claim is free; once the users are gone, so is "data".
  CHECK(env.Call("DELETE", kClaims + "/other").status == 200);
  REQUIRE(env.Call("DELETE", kVms + "/vm1").status == 200);
  REQUIRE(env.Call("DELETE", kVmis + "/vm1").status == 200);
  CHECK(env.Call("DELETE", kClaims + "/data").status == 200);
  CHECK(env.Call("GET", kClaims + "/data").status == 404);
}

}  // namespace
}  // namespace edgevirt::api::machinery
