// The machinery with the real kubevirt.io/v1 kinds (api/kubevirt): how KubeVirt's admission
// results are rendered (CRD schema errors vs webhook denials), discovery and tables of
// VirtualMachine/VirtualMachineInstance.
#include "api/kubevirt/kubevirt.h"
#include "api/machinery/codec.h"
#include "api/machinery/machinery.h"
#include "api/machinery/testing.h"
#include "tests/support/catch.h"

namespace edgevirt::api::machinery {
namespace {

using testing::TempDir;

const std::string kVms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

class KubevirtEnv {
 public:
  KubevirtEnv() {
    store::Options so;
    so.dir = dir_.path() / "state";
    store_ = std::move(*store::Store::Open(so));
    MachineryOptions mo;
    mo.run_garbage_collector = false;
    machinery_ = std::move(*Machinery::Create(*store_, {kubevirt::KubevirtV1({})}, mo));
  }
  ~KubevirtEnv() {
    machinery_.reset();
    store_->Close();
  }
  std::pair<int, Json> Call(const std::string& method, const std::string& target,
                            const std::string& body = "",
                            const std::string& type = "application/json",
                            const std::string& accept = "") {
    HttpRequest req;
    req.method = method;
    req.target = target;
    size_t q = target.find('?');
    req.path = target.substr(0, q);
    req.query = q == std::string::npos ? "" : target.substr(q + 1);
    req.body = body;
    req.headers.emplace_back("content-type", type);
    if (!accept.empty()) req.headers.emplace_back("accept", accept);
    auto r = machinery_->Serve(req);
    REQUIRE(r);
    return {r->status, Json::parse(r->body, nullptr, false)};
  }

 private:
  TempDir dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Machinery> machinery_;
};

Json Vm(const std::string& name) {
  return Json::parse(R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine",)"
                     R"("metadata":{"name":")" +
                     name +
                     R"("},"spec":{"runStrategy":"Halted","template":{"spec":{"domain":)"
                     R"({"devices":{},"resources":{"requests":{"memory":"64Mi"}}}}}}})");
}

TEST_CASE("kubevirt.io/v1 through the machinery", "[kubevirt]") {
  KubevirtEnv env;
  auto [s1, list] = env.Call("GET", "/apis/kubevirt.io/v1");
  REQUIRE(s1 == 200);
  std::vector<std::string> names;
  for (const auto& r : list["resources"]) names.push_back(r["name"]);
  CHECK(names == std::vector<std::string>{"virtualmachines", "virtualmachines/status",
                                          "virtualmachineinstances"});
  CHECK(list["resources"][0]["shortNames"] == Json::array({"vm", "vms"}));

  auto [s2, vm] = env.Call("POST", kVms, Dump(Vm("vm1")));
  INFO(vm.dump());
  REQUIRE(s2 == 201);
  CHECK(vm["spec"]["template"]["spec"]["domain"]["machine"]["type"] == "q35");  // defaulted

  // A CRD schema error: NewInvalid with the kind and the cause without its field prefix.
  Json bad = Vm("vm2");
  bad["spec"]["runStrategy"] = 5;
  auto [s3, schema] = env.Call("POST", kVms, Dump(bad));
  REQUIRE(s3 == 422);
  CHECK(schema["reason"] == "Invalid");
  CHECK(schema["details"]["kind"] == "VirtualMachine");
  CHECK(schema["details"]["group"] == "kubevirt.io");
  CHECK(schema["details"]["name"] == "vm2");
  const std::string msg = schema["message"];
  CHECK(msg.rfind("VirtualMachine.kubevirt.io \"vm2\" is invalid: spec.runStrategy: ", 0) == 0);
  CHECK(schema["details"]["causes"][0]["field"] == "spec.runStrategy");
  CHECK(schema["details"]["causes"][0]["message"].get<std::string>().rfind("spec.runStrategy", 0) !=
        0);

  // A webhook denial.
  Json denied = Vm("vm3");
  denied["spec"]["runStrategy"] = "Sometimes";
  auto [s4, webhook] = env.Call("POST", kVms, Dump(denied));
  REQUIRE(s4 == 422);
  CHECK(webhook["message"] ==
        "admission webhook \"virtualmachine-validator.kubevirt.io\" denied the request: Invalid "
        "RunStrategy (Sometimes)");
  CHECK_FALSE(webhook["details"].contains("name"));
  CHECK(webhook["details"]["causes"][0]["field"] == "spec.runStrategy");

  // Strict decoding.
  Json unknown = Vm("vm4");
  unknown["spec"]["foo"] = 1;
  auto [s5, strict] = env.Call("POST", kVms + "?fieldValidation=Strict", Dump(unknown));
  CHECK(s5 == 400);
  CHECK(strict["message"] ==
        "VirtualMachine in version \"v1\" cannot be handled as a VirtualMachine: strict decoding "
        "error: unknown field \"spec.foo\"");

  // Table: Name, Age, Status, Ready (KubeVirt's printer columns, Age first).
  auto [s6, table] =
      env.Call("GET", kVms, "", "application/json", "application/json;as=Table;v=v1;g=meta.k8s.io");
  REQUIRE(s6 == 200);
  std::vector<std::string> cols;
  for (const auto& c : table["columnDefinitions"]) cols.push_back(c["name"]);
  CHECK(cols == std::vector<std::string>{"Name", "Age", "Status", "Ready"});
  CHECK(table["rows"][0]["cells"][0] == "vm1");
  CHECK(table["rows"][0]["cells"][2].is_null());

  // The status subresource.
  auto [s7, st] =
      env.Call("PATCH", kVms + "/vm1/status", R"({"status":{"printableStatus":"Stopped"}})",
               "application/merge-patch+json");
  REQUIRE(s7 == 200);
  CHECK(st["status"]["printableStatus"] == "Stopped");
  CHECK(st["metadata"]["generation"] == 1);
  auto [s8, t2] = env.Call("GET", kVms + "/vm1", "", "application/json",
                           "application/json;as=Table;v=v1;g=meta.k8s.io");
  CHECK(t2["rows"][0]["cells"][2] == "Stopped");

  // OpenAPI: the kind's schema comes from api/kubevirt, the paths from the machinery.
  auto [s9, doc] = env.Call("GET", "/openapi/v3/apis/kubevirt.io/v1");
  REQUIRE(s9 == 200);
  CHECK(doc["paths"]["/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}"]["patch"]
           ["x-kubernetes-group-version-kind"]["kind"] == "VirtualMachine");
  CHECK(doc["components"]["schemas"].contains("io.kubevirt.v1.VirtualMachine"));
}

}  // namespace
}  // namespace edgevirt::api::machinery
