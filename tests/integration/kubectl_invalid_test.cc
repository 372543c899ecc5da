// Invalid manifests through kubectl (default, strict validation) and through the same request
// on the wire: KubeVirt's webhook denials (`admission webhook
// "virtualmachine-validator.kubevirt.io" denied the request: ...`, 422 with causes), CRD schema
// failures (`The VirtualMachine "x" is invalid: ...`), strict decoding of unknown fields (400)
// and the Warn mode; nothing is created by a rejected request.
#include <yaml-cpp/yaml.h>

#include <regex>

#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

// YAML (the subset in testdata/) to JSON: quoted scalars stay strings, plain ones become
// null/bool/integer when they look like one.
Json YamlToJson(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      Json o = Json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = YamlToJson(kv.second);
      return o;
    }
    case YAML::NodeType::Sequence: {
      Json a = Json::array();
      for (const auto& e : n) a.push_back(YamlToJson(e));
      return a;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = n.Scalar();
      if (n.Tag() == "!") return s;
      if (s == "null" || s == "~") return nullptr;
      if (s == "true" || s == "True") return true;
      if (s == "false" || s == "False") return false;
      if (std::regex_match(s, std::regex("-?[0-9]+"))) return std::stoll(s);
      return s;
    }
    default:
      return nullptr;
  }
}

Json Manifest(const std::string& name) { return YamlToJson(YAML::LoadFile(Testdata(name))); }

const std::string kVms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

// POST as kubectl's client-side apply does on create.
HttpResult Post(const std::string& url, const Json& object, const std::string& validation) {
  return Http(url, "POST",
              kVms + "?fieldManager=kubectl-client-side-apply&fieldValidation=" + validation,
              object.dump());
}

void ExpectAbsent(KubectlEnv& env, const std::string& name) {
  auto r = Http(env.Url(), "GET", kVms + "/" + name);
  REQUIRE(r.ok);
  CHECK(r.status == 404);
  auto list = env.kubectl.Run({"get", "vm", "-o", "name"});
  CHECK(list.code == 0);
  CHECK(list.out.find("/" + name + "\n") == std::string::npos);
}

TEST_CASE("webhook denial: a disk naming a missing volume") {
  KubectlEnv env("ev-kubectl-invalid");
  const std::string file = Testdata("invalid-missing-volume.yaml").string();
  auto r = env.kubectl.Run({"apply", "-f", file});
  INFO(Describe(r));
  CHECK(r.code == 1);
  CHECK(r.out == "");
  // The webhook's Status has causes but no kind/name: kubectl prints "The request is invalid"
  // and the causes as "<field>: <message>".
  CHECK(r.err ==
        "The request is invalid: spec.template.spec.domain.devices.disks[0].name: "
        "spec.template.spec.domain.devices.disks[0].Name 'containerdisk' not found.\n");
  ExpectAbsent(env, "novolume");

  auto raw = Post(env.Url(), Manifest("invalid-missing-volume.yaml"), "Strict");
  REQUIRE(raw.ok);
  CHECK(raw.status == 422);
  Json st = ParseJson(raw.body);
  INFO(st.dump(2));
  CHECK(st["kind"] == "Status");
  CHECK(st["apiVersion"] == "v1");
  CHECK(st["status"] == "Failure");
  CHECK(st["reason"] == "Invalid");
  CHECK(st["code"] == 422);
  CHECK(st["message"] ==
        "admission webhook \"virtualmachine-validator.kubevirt.io\" denied the request: "
        "spec.template.spec.domain.devices.disks[0].Name 'containerdisk' not found.");
  REQUIRE(st["details"]["causes"].size() == 1);
  CHECK(st["details"]["causes"][0] ==
        Json({{"reason", "FieldValueInvalid"},
              {"message",
               "spec.template.spec.domain.devices.disks[0].Name 'containerdisk' not "
               "found."},
              {"field", "spec.template.spec.domain.devices.disks[0].name"}}));
  ExpectAbsent(env, "novolume");
}

TEST_CASE("webhook denial: runStrategy Sometimes, on create and on update") {
  KubectlEnv env("ev-kubectl-invalid");
  auto r = env.kubectl.Run({"apply", "-f", Testdata("invalid-runstrategy.yaml").string()});
  INFO(Describe(r));
  CHECK(r.code == 1);
  CHECK(r.err == "The request is invalid: spec.runStrategy: Invalid RunStrategy (Sometimes)\n");
  ExpectAbsent(env, "sometimes");

  auto raw = Post(env.Url(), Manifest("invalid-runstrategy.yaml"), "Strict");
  REQUIRE(raw.ok);
  CHECK(raw.status == 422);
  Json st = ParseJson(raw.body);
  INFO(st.dump(2));
  CHECK(st["reason"] == "Invalid");
  CHECK(st["message"] ==
        "admission webhook \"virtualmachine-validator.kubevirt.io\" denied the request: "
        "Invalid RunStrategy (Sometimes)");
  REQUIRE(st["details"]["causes"].size() == 1);
  CHECK(st["details"]["causes"][0]["field"] == "spec.runStrategy");
  ExpectAbsent(env, "sometimes");

  // The same denial for an update (client-side apply's merge patch), which changes nothing.
  MustRun(env.kubectl, {"apply", "-f", Testdata("vm-web.yaml").string()});
  Json before = ParseJson(MustRun(env.kubectl, {"get", "vm", "web", "-o", "json"}).out);
  std::string text = ReadFile(Testdata("vm-web.yaml"));
  text.replace(text.find("runStrategy: Halted"), 19, "runStrategy: Sometimes");
  WriteFile(env.tmp / "web-sometimes.yaml", text);
  auto upd = env.kubectl.Run({"apply", "-f", (env.tmp / "web-sometimes.yaml").string()});
  INFO(Describe(upd));
  CHECK(upd.code == 1);
  CHECK_THAT(upd.err, Catch::Contains("spec.runStrategy: Invalid RunStrategy (Sometimes)"));
  Json after = ParseJson(MustRun(env.kubectl, {"get", "vm", "web", "-o", "json"}).out);
  CHECK(after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]);
  CHECK(after["spec"]["runStrategy"] == "Halted");
}

TEST_CASE("webhook denial: hostDisk on a daemon that allows no hostDisk directory") {
  KubectlEnv env("ev-kubectl-invalid");
  auto r = env.kubectl.Run({"apply", "-f", Testdata("invalid-hostdisk.yaml").string()});
  INFO(Describe(r));
  CHECK(r.code == 1);
  CHECK_THAT(r.err, Catch::Contains("spec.template.spec.volumes[0].hostDisk is not allowed on "
                                    "this host: no directory is configured for hostDisk volumes"));
  auto raw = Post(env.Url(), Manifest("invalid-hostdisk.yaml"), "Strict");
  REQUIRE(raw.ok);
  CHECK(raw.status == 422);
  Json st = ParseJson(raw.body);
  INFO(st.dump(2));
  REQUIRE(st["details"]["causes"].size() == 1);
  CHECK(st["details"]["causes"][0]["field"] == "spec.template.spec.volumes[0].hostDisk");
  ExpectAbsent(env, "hostdisk");
}

TEST_CASE("strict field validation: an unknown field is a 400 and creates nothing; Warn warns") {
  KubectlEnv env("ev-kubectl-invalid");
  const std::string file = Testdata("invalid-unknown-field.yaml").string();
  auto r = env.kubectl.Run({"apply", "-f", file});
  INFO(Describe(r));
  CHECK(r.code == 1);
  CHECK(r.err == "Error from server (BadRequest): error when creating \"" + file +
                     "\": VirtualMachine in version \"v1\" cannot be handled as a VirtualMachine: "
                     "strict decoding error: unknown field \"spec.foo\"\n");
  ExpectAbsent(env, "unknownfield");

  auto raw = Post(env.Url(), Manifest("invalid-unknown-field.yaml"), "Strict");
  REQUIRE(raw.ok);
  CHECK(raw.status == 400);
  Json st = ParseJson(raw.body);
  CHECK(st["reason"] == "BadRequest");
  CHECK(st["message"] ==
        "VirtualMachine in version \"v1\" cannot be handled as a VirtualMachine: strict decoding "
        "error: unknown field \"spec.foo\"");
  ExpectAbsent(env, "unknownfield");

  // --validate=warn: created without the field, kubectl prints the server's warning.
  auto warn = env.kubectl.Run({"apply", "--validate=warn", "-f", file});
  INFO(Describe(warn));
  CHECK(warn.code == 0);
  CHECK(warn.out == "virtualmachine.kubevirt.io/unknownfield created\n");
  CHECK_THAT(warn.err, Catch::Contains("Warning: unknown field \"spec.foo\""));
  Json vm = ParseJson(MustRun(env.kubectl, {"get", "vm", "unknownfield", "-o", "json"}).out);
  CHECK_FALSE(vm["spec"].contains("foo"));

  // On the wire: 201 with a Warning header.
  Json other = Manifest("invalid-unknown-field.yaml");
  other["metadata"]["name"] = "unknownfield2";
  auto w = Post(env.Url(), other, "Warn");
  REQUIRE(w.ok);
  CHECK(w.status == 201);
  CHECK(w.headers["warning"] == "299 - \"unknown field \\\"spec.foo\\\"\"");
}

TEST_CASE("CRD schema failures: The VirtualMachine \"x\" is invalid") {
  KubectlEnv env("ev-kubectl-invalid");
  auto r = env.kubectl.Run({"apply", "-f", Testdata("invalid-no-template.yaml").string()});
  INFO(Describe(r));
  CHECK(r.code == 1);
  CHECK(r.err == "The VirtualMachine \"notemplate\" is invalid: spec.template: Required value\n");
  ExpectAbsent(env, "notemplate");

  auto raw = Post(env.Url(), Manifest("invalid-no-template.yaml"), "Strict");
  REQUIRE(raw.ok);
  CHECK(raw.status == 422);
  Json st = ParseJson(raw.body);
  INFO(st.dump(2));
  CHECK(st["reason"] == "Invalid");
  CHECK(st["message"] ==
        "VirtualMachine.kubevirt.io \"notemplate\" is invalid: spec.template: Required value");
  CHECK(st["details"]["name"] == "notemplate");
  CHECK(st["details"]["group"] == "kubevirt.io");
  CHECK(st["details"]["kind"] == "VirtualMachine");
  REQUIRE(st["details"]["causes"].size() == 1);
  CHECK(st["details"]["causes"][0] == Json({{"reason", "FieldValueRequired"},
                                            {"message", "Required value"},
                                            {"field", "spec.template"}}));

  auto name = env.kubectl.Run({"apply", "-f", Testdata("invalid-name.yaml").string()});
  INFO(Describe(name));
  CHECK(name.code == 1);
  CHECK_THAT(name.err,
             Catch::StartsWith("The VirtualMachine \"Bad_Name\" is invalid: metadata.name: Invalid "
                               "value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist "
                               "of lower case alphanumeric characters"));
  auto list = MustRun(env.kubectl, {"get", "vm", "-A", "-o", "name"});
  CHECK(list.out == "");
}

}  // namespace
}  // namespace edgevirt::testing
