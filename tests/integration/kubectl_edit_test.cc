// kubectl's write verbs besides apply against the real edgevirtd: edit (through KUBE_EDITOR),
// patch (merge, JSON with `test`, strategic = 415 for custom resources), label, create of an
// existing name, and delete with the default --wait.
#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

// kubectl hides metadata.managedFields unless asked.
Json GetVm(Kubectl& k, const std::string& name) {
  return ParseJson(MustRun(k, {"get", "vm", name, "-o", "json", "--show-managed-fields"}).out);
}

void CreateWeb(Kubectl& k) {
  auto r = MustRun(k, {"apply", "-f", Testdata("vm-web.yaml").string()});
  REQUIRE(r.out == "virtualmachine.kubevirt.io/web created\n");
}

TEST_CASE("edit with KUBE_EDITOR: a label changed through a merge patch") {
  KubectlEnv env("ev-kubectl-edit");
  Kubectl& k = env.kubectl;
  CreateWeb(k);
  const Json before = GetVm(k, "web");

  // kubectl writes the object as YAML to a temp file and runs `$KUBE_EDITOR <file>`. The script
  // adds a label next to app=web (metadata.labels is the only 4-space-indented `app: web`).
  const std::filesystem::path editor = env.tmp / "editor.sh";
  WriteFile(editor,
            "#!/bin/sh\n"
            "set -e\n"
            "cp \"$1\" \"$(dirname \"$0\")/edit-input.yaml\"\n"
            "sed -i 's/^    app: web$/    app: web\\n    edited-by: editor/' \"$1\"\n");
  std::filesystem::permissions(editor, std::filesystem::perms::owner_all);

  auto r = k.Run({"edit", "vm", "web", "-v=7"}, 30s, {{"KUBE_EDITOR", editor.string()}});
  INFO(Describe(r));
  REQUIRE(r.code == 0);
  CHECK(r.out == "virtualmachine.kubevirt.io/web edited\n");
  CHECK_THAT(r.err, Catch::Contains("application/merge-patch+json"));
  // The editor saw the object as kubectl fetched it.
  CHECK_THAT(ReadFile(env.tmp / "edit-input.yaml"),
             Catch::Contains("kind: VirtualMachine") && Catch::Contains("  name: web\n"));

  const Json after = GetVm(k, "web");
  CHECK(after["metadata"]["labels"]["edited-by"] == "editor");
  CHECK(after["metadata"]["labels"]["app"] == "web");
  CHECK(after["metadata"]["generation"] == before["metadata"]["generation"]);
  CHECK(Rv(after) > Rv(before));
  bool edit_manager = false;
  for (const auto& mf : after["metadata"].value("managedFields", Json::array())) {
    edit_manager |= mf.value("manager", "") == "kubectl-edit";
  }
  CHECK(edit_manager);

  // An editor that changes nothing: kubectl cancels without a request.
  auto unchanged = k.Run({"edit", "vm", "web"}, 30s, {{"KUBE_EDITOR", "true"}});
  INFO(Describe(unchanged));
  CHECK(unchanged.code == 0);
  CHECK(unchanged.err == "Edit cancelled, no changes made.\n");
  CHECK(GetVm(k, "web")["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]);
}

TEST_CASE("patch: --type merge, --type json with test, strategic is not supported") {
  KubectlEnv env("ev-kubectl-patch");
  Kubectl& k = env.kubectl;
  CreateWeb(k);

  auto merge = MustRun(k, {"patch", "vm", "web", "--type", "merge", "-p",
                           R"({"spec":{"runStrategy":"Manual"},"metadata":{"labels":{"p":"1"}}})"});
  CHECK(merge.out == "virtualmachine.kubevirt.io/web patched\n");
  Json vm = GetVm(k, "web");
  CHECK(vm["spec"]["runStrategy"] == "Manual");
  CHECK(vm["metadata"]["labels"]["p"] == "1");
  CHECK(vm["metadata"]["generation"] == 2);

  // null deletes in a merge patch.
  MustRun(k,
          {"patch", "vm", "web", "--type", "merge", "-p", R"({"metadata":{"labels":{"p":null}}})"});
  vm = GetVm(k, "web");
  CHECK_FALSE(vm["metadata"]["labels"].contains("p"));
  CHECK(vm["metadata"]["generation"] == 2);

  auto json = MustRun(k, {"patch", "vm", "web", "--type", "json", "-p",
                          R"([{"op":"test","path":"/spec/runStrategy","value":"Manual"},)"
                          R"({"op":"replace","path":"/spec/runStrategy","value":"Halted"},)"
                          R"({"op":"add","path":"/spec/template/spec/domain/devices/disks/-",)"
                          R"("value":{"name":"scratch","disk":{"bus":"virtio"}}},)"
                          R"({"op":"add","path":"/spec/template/spec/volumes/-",)"
                          R"("value":{"name":"scratch","emptyDisk":{"capacity":"1Gi"}}}])"});
  CHECK(json.out == "virtualmachine.kubevirt.io/web patched\n");
  vm = GetVm(k, "web");
  CHECK(vm["spec"]["runStrategy"] == "Halted");
  CHECK(vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"].size() == 3);
  CHECK(vm["spec"]["template"]["spec"]["volumes"][2]["emptyDisk"]["capacity"] == "1Gi");
  CHECK(vm["metadata"]["generation"] == 3);
  const std::string rv = vm["metadata"]["resourceVersion"];

  // A failing `test` op: rejected, nothing written.
  auto failed = k.Run({"patch", "vm", "web", "--type", "json", "-p",
                       R"([{"op":"test","path":"/spec/runStrategy","value":"Always"},)"
                       R"({"op":"replace","path":"/spec/runStrategy","value":"Manual"}])"});
  INFO(Describe(failed));
  CHECK(failed.code == 1);
  CHECK(failed.out == "");
  CHECK(failed.err != "");
  CHECK(GetVm(k, "web")["metadata"]["resourceVersion"] == rv);

  // A patch that leaves the object as it is: no write, kubectl says so.
  auto noop = MustRun(
      k, {"patch", "vm", "web", "--type", "merge", "-p", R"({"spec":{"runStrategy":"Halted"}})"});
  CHECK(noop.out == "virtualmachine.kubevirt.io/web patched (no change)\n");
  CHECK(GetVm(k, "web")["metadata"]["resourceVersion"] == rv);

  // The VM has a status subresource: status in a main-resource patch is ignored.
  auto status = MustRun(k, {"patch", "vm", "web", "--type", "merge", "-p",
                            R"({"status":{"printableStatus":"Bogus"}})"});
  CHECK(status.out == "virtualmachine.kubevirt.io/web patched (no change)\n");
  CHECK(GetVm(k, "web").value("status", Json::object()).value("printableStatus", "") != "Bogus");

  // Without --type kubectl sends a strategic merge patch, which custom resources do not take:
  // 415 from the server, which kubectl words like this.
  auto strategic = k.Run({"patch", "vm", "web", "-p", R"({"metadata":{"labels":{"s":"1"}}})"});
  INFO(Describe(strategic));
  CHECK(strategic.code == 1);
  CHECK_THAT(strategic.err,
             Catch::StartsWith("error: application/strategic-merge-patch+json is not supported "
                               "by kubevirt.io/v1, Kind=VirtualMachine: ") &&
                 Catch::Contains("application/merge-patch+json"));
  CHECK_FALSE(GetVm(k, "web")["metadata"]["labels"].contains("s"));

  // The same on the wire.
  auto raw = Http(env.Url(), "PATCH", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web",
                  R"({"metadata":{"labels":{"s":"1"}}})", "application/strategic-merge-patch+json");
  REQUIRE(raw.ok);
  CHECK(raw.status == 415);
  Json st = ParseJson(raw.body);
  CHECK(st["kind"] == "Status");
  CHECK(st["reason"] == "UnsupportedMediaType");
  CHECK(st["code"] == 415);

  // label/annotate go through merge patches too.
  auto label = MustRun(k, {"label", "vm", "web", "team=infra"});
  CHECK(label.out == "virtualmachine.kubevirt.io/web labeled\n");
  auto annotate = MustRun(k, {"annotate", "vm", "web", "note=hello"});
  CHECK(annotate.out == "virtualmachine.kubevirt.io/web annotated\n");
  vm = GetVm(k, "web");
  CHECK(vm["metadata"]["labels"]["team"] == "infra");
  CHECK(vm["metadata"]["annotations"]["note"] == "hello");
}

TEST_CASE("create of an existing name is AlreadyExists; replace needs the resourceVersion") {
  KubectlEnv env("ev-kubectl-create");
  Kubectl& k = env.kubectl;
  auto created = MustRun(k, {"create", "-f", Testdata("vm-web.yaml").string()});
  CHECK(created.out == "virtualmachine.kubevirt.io/web created\n");
  auto again = k.Run({"create", "-f", Testdata("vm-web.yaml").string()});
  INFO(Describe(again));
  CHECK(again.code == 1);
  CHECK(again.err == "Error from server (AlreadyExists): error when creating \"" +
                         Testdata("vm-web.yaml").string() +
                         "\": virtualmachines.kubevirt.io \"web\" already exists\n");

  // replace: GET, then PUT with the resourceVersion kubectl read.
  auto replaced = MustRun(k, {"replace", "-f", Testdata("vm-web-changed.yaml").string()});
  CHECK(replaced.out == "virtualmachine.kubevirt.io/web replaced\n");
  Json vm = GetVm(k, "web");
  CHECK(vm["metadata"]["generation"] == 2);
  CHECK(vm["spec"]["template"]["spec"]["domain"]["resources"]["requests"]["memory"] == "256Mi");
}

TEST_CASE("delete waits until the object is gone; get is then NotFound") {
  KubectlEnv env("ev-kubectl-delete");
  Kubectl& k = env.kubectl;
  CreateWeb(k);
  MustRun(k, {"apply", "-f", Testdata("vmi-standalone.yaml").string()});
  MustRun(k, {"apply", "-f", Testdata("vm-db-team-a.yaml").string()});

  const auto started = Clock::now();
  auto del = k.Run({"delete", "vm", "web"}, 60s);
  const auto took = Clock::now() - started;
  INFO(Describe(del));
  REQUIRE(del.code == 0);
  CHECK(del.out == "virtualmachine.kubevirt.io \"web\" deleted\n");
  CHECK(took < 20s);

  auto get = k.Run({"get", "vm", "web"});
  CHECK(get.code == 1);
  CHECK(get.err == "Error from server (NotFound): virtualmachines.kubevirt.io \"web\" not found\n");
  auto raw = Http(env.Url(), "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web");
  REQUIRE(raw.ok);
  CHECK(raw.status == 404);
  Json st = ParseJson(raw.body);
  CHECK(st["reason"] == "NotFound");
  CHECK(st["details"]["name"] == "web");
  CHECK(st["details"]["group"] == "kubevirt.io");
  CHECK(st["details"]["kind"] == "virtualmachines");

  auto vmi = k.Run({"delete", "vmi", "lone"}, 60s);
  INFO(Describe(vmi));
  CHECK(vmi.code == 0);
  CHECK(vmi.out == "virtualmachineinstance.kubevirt.io \"lone\" deleted\n");
  CHECK(k.Run({"get", "vmi", "lone"}).code == 1);

  auto by_file = k.Run({"delete", "-f", Testdata("vm-db-team-a.yaml").string()}, 60s);
  INFO(Describe(by_file));
  CHECK(by_file.code == 0);
  CHECK(by_file.out == "virtualmachine.kubevirt.io \"db\" deleted\n");

  // --all: list, then delete each.
  MustRun(k, {"apply", "-f", Testdata("vm-web.yaml").string()});
  MustRun(k, {"apply", "-f", Testdata("vm-ssa.yaml").string()});
  auto all = k.Run({"delete", "vm", "--all"}, 60s);
  INFO(Describe(all));
  CHECK(all.code == 0);
  CHECK(all.out ==
        "virtualmachine.kubevirt.io \"ssa\" deleted\nvirtualmachine.kubevirt.io \"web\" deleted\n");

  auto missing = k.Run({"delete", "vm", "web"});
  CHECK(missing.code == 1);
  CHECK(missing.err ==
        "Error from server (NotFound): virtualmachines.kubevirt.io \"web\" not found\n");
  auto ignore = MustRun(k, {"delete", "vm", "web", "--ignore-not-found"});
  CHECK(ignore.out == "");

  auto empty = k.Run({"get", "vm", "-A"});
  CHECK(empty.code == 0);
  CHECK(empty.err == "No resources found\n");
}

}  // namespace
}  // namespace edgevirt::testing
