// kubectl apply against the real edgevirtd: client-side apply (create, then a three-way JSON
// merge patch, then "unchanged"), generation bumps on spec changes only, and server-side apply
// with field ownership conflicts. Default validation everywhere (no --validate flag), so kubectl
// reads the server's OpenAPI v3 and sends fieldValidation=Strict.
#include <regex>

#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

// kubectl hides metadata.managedFields unless asked.
Json GetVm(Kubectl& k, const std::string& name) {
  return ParseJson(MustRun(k, {"get", "vm", name, "-o", "json", "--show-managed-fields"}).out);
}

std::string Replace(std::string text, const std::string& from, const std::string& to) {
  auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

TEST_CASE("client-side apply: create, merge-patch update, unchanged, metadata-only change") {
  KubectlEnv env("ev-kubectl-apply");
  Kubectl& k = env.kubectl;

  // Create. kubectl GETs (404), then POSTs with the last-applied annotation.
  auto created = MustRun(k, {"apply", "-f", Testdata("vm-web.yaml").string()});
  CHECK(created.out == "virtualmachine.kubevirt.io/web created\n");
  CHECK(created.err == "");

  const Json v1 = GetVm(k, "web");
  INFO(v1.dump(2));
  CHECK(v1["apiVersion"] == "kubevirt.io/v1");
  CHECK(v1["kind"] == "VirtualMachine");
  CHECK(v1["metadata"]["name"] == "web");
  CHECK(v1["metadata"]["namespace"] == "default");
  CHECK(v1["metadata"]["generation"] == 1);
  CHECK(v1["metadata"]["uid"].is_string());
  CHECK(std::regex_match(v1["metadata"].value("creationTimestamp", ""),
                         std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
  CHECK(v1["metadata"]["labels"] == Json({{"app", "web"}, {"tier", "frontend"}}));
  REQUIRE(
      v1["metadata"]["annotations"].contains("kubectl.kubernetes.io/last-applied-configuration"));
  const Json applied1 =
      ParseJson(v1["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                    .get<std::string>());
  CHECK(applied1["metadata"]["name"] == "web");
  // What kubectl sent is in the stored object (defaults may add members, never change them).
  CHECK(IsSubset(applied1["spec"], v1["spec"]));
  const uint64_t rv1 = Rv(v1);
  CHECK(rv1 > 0);

  // Update: more memory, label tier removed, env added. kubectl computes a three-way JSON merge
  // patch (KubeVirt kinds are not in its scheme and the OpenAPI must not offer strategic merge).
  auto configured = MustRun(k, {"apply", "-f", Testdata("vm-web-changed.yaml").string(), "-v=7"});
  CHECK(configured.out == "virtualmachine.kubevirt.io/web configured\n");
  CHECK_THAT(configured.err, Catch::Contains("PATCH " + env.Url() +
                                             "/apis/kubevirt.io/v1/namespaces/default/"
                                             "virtualmachines/web"));
  CHECK_THAT(configured.err, Catch::Contains("application/merge-patch+json"));
  CHECK_THAT(configured.err, !Catch::Contains("strategic-merge-patch"));

  const Json v2 = GetVm(k, "web");
  INFO(v2.dump(2));
  CHECK(v2["metadata"]["uid"] == v1["metadata"]["uid"]);
  CHECK(v2["metadata"]["generation"] == 2);
  CHECK(Rv(v2) > rv1);
  CHECK(v2["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] == "256Mi");
  CHECK(v2["metadata"]["labels"] == Json({{"app", "web"}, {"env", "prod"}}));
  const Json applied2 =
      ParseJson(v2["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                    .get<std::string>());
  CHECK(applied2["metadata"]["labels"]["env"] == "prod");
  CHECK(IsSubset(applied2["spec"], v2["spec"]));

  // Same file again: no patch, nothing written.
  auto unchanged = MustRun(k, {"apply", "-f", Testdata("vm-web-changed.yaml").string()});
  CHECK(unchanged.out == "virtualmachine.kubevirt.io/web unchanged\n");
  const Json v3 = GetVm(k, "web");
  CHECK(v3["metadata"]["resourceVersion"] == v2["metadata"]["resourceVersion"]);
  CHECK(v3["metadata"]["generation"] == 2);

  // A label-only change: written (new resourceVersion) but the generation stays.
  const std::filesystem::path relabelled = env.tmp / "vm-web-staging.yaml";
  WriteFile(relabelled,
            Replace(ReadFile(Testdata("vm-web-changed.yaml")), "env: prod", "env: staging"));
  auto relabel = MustRun(k, {"apply", "-f", relabelled.string()});
  CHECK(relabel.out == "virtualmachine.kubevirt.io/web configured\n");
  const Json v4 = GetVm(k, "web");
  CHECK(v4["metadata"]["labels"]["env"] == "staging");
  CHECK(v4["metadata"]["generation"] == 2);
  CHECK(Rv(v4) > Rv(v3));
}

TEST_CASE("server dry run and diff write nothing") {
  KubectlEnv env("ev-kubectl-apply");
  Kubectl& k = env.kubectl;

  // A dry-run create: the answer, but no object.
  auto dry_create =
      MustRun(k, {"apply", "--dry-run=server", "-f", Testdata("vm-web.yaml").string()});
  CHECK(dry_create.out == "virtualmachine.kubevirt.io/web created (server dry run)\n");
  CHECK(k.Run({"get", "vm", "web"}).code == 1);

  MustRun(k, {"apply", "-f", Testdata("vm-web.yaml").string()});
  const Json before = GetVm(k, "web");

  // A dry-run update: the patched object comes back, nothing is stored.
  auto dry_update = MustRun(k, {"apply", "--dry-run=server", "-o", "json", "-f",
                                Testdata("vm-web-changed.yaml").string()});
  const Json would_be = ParseJson(dry_update.out);
  CHECK(would_be["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] ==
        "256Mi");
  const Json after = GetVm(k, "web");
  CHECK(after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]);
  CHECK(after["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] == "128Mi");

  // kubectl diff: a server-side dry-run apply, compared with the live object (exit 1 = differs).
  auto diff = k.Run({"diff", "-f", Testdata("vm-web-changed.yaml").string()});
  INFO(Describe(diff));
  CHECK(diff.code == 1);
  CHECK(diff.err == "");
  CHECK_THAT(diff.out, Catch::Contains("-            memory: 128Mi") &&
                           Catch::Contains("+            memory: 256Mi") &&
                           Catch::Contains("+    env: prod") &&
                           Catch::Contains("-    tier: frontend"));
  CHECK(GetVm(k, "web")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]);
  auto same = k.Run({"diff", "-f", Testdata("vm-web.yaml").string()});
  INFO(Describe(same));
  CHECK(same.code == 0);
  CHECK(same.out == "");
}

TEST_CASE("client-side apply of several objects and namespaces from one directory") {
  KubectlEnv env("ev-kubectl-apply");
  Kubectl& k = env.kubectl;
  const std::filesystem::path dir = env.tmp / "manifests";
  std::filesystem::create_directories(dir);
  for (const char* f : {"vm-web.yaml", "vm-db-team-a.yaml", "vmi-standalone.yaml"}) {
    std::filesystem::copy_file(Testdata(f), dir / f);
  }
  auto r = MustRun(k, {"apply", "-f", dir.string()});
  // kubectl walks the directory in name order.
  CHECK(r.out ==
        "virtualmachine.kubevirt.io/db created\n"
        "virtualmachine.kubevirt.io/web created\n"
        "virtualmachineinstance.kubevirt.io/lone created\n");
  CHECK(GetVm(k, "web")["metadata"]["namespace"] == "default");
  auto db = ParseJson(MustRun(k, {"get", "vm", "db", "-n", "team-a", "-o", "json"}).out);
  CHECK(db["metadata"]["namespace"] == "team-a");
  auto vmi = ParseJson(MustRun(k, {"get", "vmi", "lone", "-o", "json"}).out);
  CHECK(vmi["kind"] == "VirtualMachineInstance");
  // 1 at create; the controller's status writes add to it (a VMI has no status subresource).
  CHECK(vmi["metadata"]["generation"].get<int64_t>() >= 1);

  // Again (the VMs only: as in KubeVirt, the stored VMI carries defaults the manifest lacks, so
  // kubectl would send a patch, and VMI spec updates are refused).
  std::filesystem::remove(dir / "vmi-standalone.yaml");
  auto again = MustRun(k, {"apply", "-f", dir.string()});
  CHECK(again.out ==
        "virtualmachine.kubevirt.io/db unchanged\n"
        "virtualmachine.kubevirt.io/web unchanged\n");
}

TEST_CASE("server-side apply: create, update, conflict with another manager, force") {
  KubectlEnv env("ev-kubectl-ssa");
  Kubectl& k = env.kubectl;

  auto created = MustRun(k, {"apply", "--server-side", "-f", Testdata("vm-ssa.yaml").string()});
  CHECK(created.out == "virtualmachine.kubevirt.io/ssa serverside-applied\n");
  CHECK(created.err == "");
  const Json v1 = GetVm(k, "ssa");
  INFO(v1.dump(2));
  CHECK(v1["metadata"]["generation"] == 1);
  CHECK(v1["metadata"]["namespace"] == "default");
  CHECK_FALSE(
      (v1["metadata"].contains("annotations") &&
       v1["metadata"]["annotations"].contains("kubectl.kubernetes.io/last-applied-configuration")));
  REQUIRE(v1["metadata"]["managedFields"].is_array());
  bool kubectl_applies = false;
  for (const auto& mf : v1["metadata"]["managedFields"]) {
    if (mf.value("manager", "") == "kubectl" && mf.value("operation", "") == "Apply") {
      kubectl_applies = true;
      CHECK(mf["apiVersion"] == "kubevirt.io/v1");
      CHECK(mf["fieldsType"] == "FieldsV1");
      CHECK(mf["fieldsV1"]["f:spec"].contains("f:runStrategy"));
      CHECK(mf["fieldsV1"]["f:metadata"]["f:labels"].contains("f:app"));
    }
  }
  CHECK(kubectl_applies);

  auto updated =
      MustRun(k, {"apply", "--server-side", "-f", Testdata("vm-ssa-changed.yaml").string()});
  CHECK(updated.out == "virtualmachine.kubevirt.io/ssa serverside-applied\n");
  const Json v2 = GetVm(k, "ssa");
  CHECK(v2["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] == "96Mi");
  CHECK(v2["metadata"]["generation"] == 2);

  // Another manager (kubectl-patch) takes spec.runStrategy...
  MustRun(k,
          {"patch", "vm", "ssa", "--type", "merge", "-p", R"({"spec":{"runStrategy":"Manual"}})"});
  // ...so applying the manifest's runStrategy again conflicts and changes nothing.
  auto conflict = k.Run({"apply", "--server-side", "-f", Testdata("vm-ssa-changed.yaml").string()});
  INFO(Describe(conflict));
  CHECK(conflict.code == 1);
  CHECK_THAT(conflict.err, Catch::Contains("Apply failed with 1 conflict") &&
                               Catch::Contains("conflict with \"kubectl-patch\"") &&
                               Catch::Contains(".spec.runStrategy"));
  CHECK(GetVm(k, "ssa")["spec"]["runStrategy"] == "Manual");

  auto forced = MustRun(k, {"apply", "--server-side", "--force-conflicts", "-f",
                            Testdata("vm-ssa-changed.yaml").string()});
  CHECK(forced.out == "virtualmachine.kubevirt.io/ssa serverside-applied\n");
  const Json v3 = GetVm(k, "ssa");
  CHECK(v3["spec"]["runStrategy"] == "Halted");
  for (const auto& mf : v3["metadata"]["managedFields"]) {
    if (mf.value("manager", "") == "kubectl-patch") {
      CHECK_FALSE((mf["fieldsV1"].contains("f:spec") &&
                   mf["fieldsV1"]["f:spec"].contains("f:runStrategy")));
    }
  }
}

// examples/kubeconfig names the plain-HTTP loopback listener its comment configures, and
// examples/vm-web.yaml applies as it is (default validation) and reads back.
TEST_CASE("examples/: the kubeconfig points at the loopback listener; vm-web.yaml applies") {
  KubectlEnv env("ev-kubectl-apply");
  Kubectl& k = env.kubectl;
  const auto examples = std::filesystem::path(EDGEVIRT_SOURCE_DIR) / "examples";

  auto view = MustRun(k, {"--kubeconfig", (examples / "kubeconfig").string(), "config", "view",
                          "-o", "jsonpath={.clusters[0].cluster.server}"});
  CHECK(view.out == "http://127.0.0.1:8080");  // the listener its comment configures

  auto created = MustRun(k, {"apply", "-f", (examples / "vm-web.yaml").string()});
  CHECK(created.out == "virtualmachine.kubevirt.io/web created\n");
  CHECK(created.err == "");
  const Json vm = GetVm(k, "web");
  CHECK(vm["metadata"]["namespace"] == "default");
  CHECK(vm["spec"]["runStrategy"] == "Halted");
  // Defaulted as KubeVirt's mutating webhook does.
  CHECK(vm["spec"]["template"]["spec"]["domain"]["machine"]["type"] == "q35");
  auto again = MustRun(k, {"apply", "-f", (examples / "vm-web.yaml").string()});
  CHECK(again.out == "virtualmachine.kubevirt.io/web unchanged\n");
}

}  // namespace
}  // namespace edgevirt::testing
