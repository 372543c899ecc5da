// kubectl's read side against the real edgevirtd: get (Table output with KubeVirt's printer
// columns, -o yaml/json/wide/name, -A, -l, --show-labels, short names, `get all`), watch
// (`get -w`), describe, explain, api-resources.
#include <regex>
#include <set>

#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

using Row = std::vector<std::string>;

std::string Replace(std::string text, const std::string& from, const std::string& to) {
  auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

// default/web (app=web, tier=frontend), default/api (app=api), team-a/db (app=db) and the
// standalone VMI default/lone (app=web).
void CreateObjects(KubectlEnv& env) {
  const std::filesystem::path api = env.tmp / "vm-api.yaml";
  std::string text = ReadFile(Testdata("vm-web.yaml"));
  text = Replace(text, "  name: web\n", "  name: api\n");
  text = Replace(text, "    app: web\n    tier: frontend\n", "    app: api\n");
  WriteFile(api, text);
  for (const auto& f : {Testdata("vm-web.yaml"), api, Testdata("vm-db-team-a.yaml"),
                        Testdata("vmi-standalone.yaml")}) {
    MustRun(env.kubectl, {"apply", "-f", f.string()});
  }
}

bool Matches(const std::string& text, const std::string& re) {
  return std::regex_search(text, std::regex(re));
}

const Row kVmHeader = {"NAME", "AGE", "STATUS", "READY"};
const Row kVmiHeader = {"NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"};

std::vector<Row> Table(Kubectl& k, const std::vector<std::string>& args) {
  auto r = MustRun(k, args);
  return Lines(r.out);
}

std::set<std::string> Column(const std::vector<Row>& table, size_t col) {
  std::set<std::string> out;
  for (size_t i = 1; i < table.size(); ++i) {
    if (col < table[i].size()) out.insert(table[i][col]);
  }
  return out;
}

TEST_CASE("get vm: Table columns NAME AGE STATUS READY, short names, -A, -l, --show-labels") {
  KubectlEnv env("ev-kubectl-get");
  Kubectl& k = env.kubectl;
  CreateObjects(env);

  for (const char* resource : {"vm", "vms", "virtualmachines", "virtualmachine",
                               "virtualmachines.kubevirt.io", "virtualmachines.v1.kubevirt.io"}) {
    INFO("kubectl get " << resource);
    auto t = Table(k, {"get", resource});
    REQUIRE(t.size() == 3);
    CHECK(t[0] == kVmHeader);
    CHECK(Column(t, 0) == std::set<std::string>{"api", "web"});
  }

  // The Table kubectl asked for, on the wire: KubeVirt's printer columns, one cell per column,
  // a PartialObjectMetadata per row (what -A and --show-labels read).
  auto table =
      Http(env.Url(), "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines?limit=500",
           "", "", 10s,
           {"Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/"
            "json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"});
  REQUIRE(table.ok);
  CHECK(table.status == 200);
  Json tj = ParseJson(table.body);
  CHECK(tj["kind"] == "Table");
  CHECK(tj["apiVersion"] == "meta.k8s.io/v1");
  CHECK(Rv(tj) > 0);
  std::vector<std::string> cols;
  for (const auto& c : tj["columnDefinitions"]) cols.push_back(c.value("name", ""));
  CHECK(cols == std::vector<std::string>{"Name", "Age", "Status", "Ready"});
  CHECK(tj["columnDefinitions"][1]["type"] == "date");
  REQUIRE(tj["rows"].size() == 2);
  for (const auto& row : tj["rows"]) {
    CHECK(row["cells"].size() == 4);
    CHECK(row["object"]["kind"] == "PartialObjectMetadata");
    CHECK(row["object"]["metadata"]["namespace"] == "default");
    CHECK(row["object"]["metadata"]["name"] == row["cells"][0]);
  }

  // KubeVirt's VM printer columns have no priority-1 (wide-only) column.
  auto wide = Table(k, {"get", "vm", "-o", "wide"});
  REQUIRE(wide.size() == 3);
  CHECK(wide[0] == kVmHeader);

  auto one = Table(k, {"get", "vm", "web"});
  REQUIRE(one.size() == 2);
  CHECK(one[0] == kVmHeader);
  CHECK(one[1][0] == "web");

  auto all_ns = Table(k, {"get", "vm", "-A"});
  REQUIRE(all_ns.size() == 4);
  CHECK(all_ns[0] == Row{"NAMESPACE", "NAME", "AGE", "STATUS", "READY"});
  std::set<std::string> ns_names;
  for (size_t i = 1; i < all_ns.size(); ++i) ns_names.insert(all_ns[i][0] + "/" + all_ns[i][1]);
  CHECK(ns_names == std::set<std::string>{"default/api", "default/web", "team-a/db"});

  auto team_a = Table(k, {"get", "vm", "-n", "team-a"});
  REQUIRE(team_a.size() == 2);
  CHECK(team_a[1][0] == "db");

  auto labelled = Table(k, {"get", "vm", "-l", "app=web"});
  CHECK(Column(labelled, 0) == std::set<std::string>{"web"});
  auto not_web = Table(k, {"get", "vm", "-l", "app!=web"});
  CHECK(Column(not_web, 0) == std::set<std::string>{"api"});
  auto set_based = Table(k, {"get", "vm", "-A", "-l", "app in (web,db)"});
  CHECK(Column(set_based, 1) == std::set<std::string>{"db", "web"});
  auto exists = Table(k, {"get", "vm", "-l", "tier"});
  CHECK(Column(exists, 0) == std::set<std::string>{"web"});
  auto none = k.Run({"get", "vm", "-l", "app=nothing"});
  CHECK(none.code == 0);
  CHECK(none.out == "");
  CHECK(none.err == "No resources found in default namespace.\n");

  auto labels = Table(k, {"get", "vm", "--show-labels"});
  REQUIRE(labels.size() == 3);
  CHECK(labels[0] == Row{"NAME", "AGE", "STATUS", "READY", "LABELS"});
  auto web = RowOf(MustRun(k, {"get", "vm", "--show-labels"}).out, "web");
  REQUIRE(web.has_value());
  CHECK(web->back() == "app=web,tier=frontend");

  auto names = MustRun(k, {"get", "vm", "-o", "name"});
  CHECK(Column(Lines("HEADER\n" + names.out), 0) ==
        std::set<std::string>{"virtualmachine.kubevirt.io/api", "virtualmachine.kubevirt.io/web"});

  // --sort-by asks for the full objects in the Table rows (includeObject=Object).
  auto sorted = Table(k, {"get", "vm", "-A", "--sort-by=.metadata.name"});
  REQUIRE(sorted.size() == 4);
  CHECK(sorted[1][1] == "api");
  CHECK(sorted[2][1] == "db");
  CHECK(sorted[3][1] == "web");
  auto by_memory =
      Table(k, {"get", "vm", "--sort-by=.spec.template.spec.domain.resources.requests.memory"});
  REQUIRE(by_memory.size() == 3);
  auto custom = MustRun(k, {"get", "vm", "web", "-o",
                            "custom-columns=NAME:.metadata.name,RUN:.spec.runStrategy,"
                            "IMAGE:.spec.template.spec.volumes[0].containerDisk.image"});
  CHECK(Lines(custom.out) ==
        std::vector<Row>{{"NAME", "RUN", "IMAGE"},
                         {"web", "Halted", "quay.io/containerdisks/fedora:39"}});
  auto jsonpath = MustRun(k, {"get", "vm", "-o", "jsonpath={.items[*].metadata.name}"});
  CHECK(jsonpath.out == "api web");

  auto missing = k.Run({"get", "vm", "nothere"});
  CHECK(missing.code == 1);
  CHECK(missing.err ==
        "Error from server (NotFound): virtualmachines.kubevirt.io \"nothere\" not found\n");
}

TEST_CASE("get vm/vmi -o json and -o yaml; the raw list carries kind, apiVersion and an RV") {
  KubectlEnv env("ev-kubectl-get");
  Kubectl& k = env.kubectl;
  CreateObjects(env);

  Json web = ParseJson(MustRun(k, {"get", "vm", "web", "-o", "json"}).out);
  CHECK(web["apiVersion"] == "kubevirt.io/v1");
  CHECK(web["kind"] == "VirtualMachine");
  CHECK(web["metadata"]["name"] == "web");
  CHECK(Rv(web) > 0);
  CHECK(web["spec"]["runStrategy"] == "Halted");

  Json list = ParseJson(MustRun(k, {"get", "vm", "-o", "json"}).out);
  CHECK(list["kind"] == "List");
  REQUIRE(list["items"].size() == 2);
  for (const auto& item : list["items"]) {
    CHECK(item["apiVersion"] == "kubevirt.io/v1");
    CHECK(item["kind"] == "VirtualMachine");
  }

  auto yaml = MustRun(k, {"get", "vm", "web", "-o", "yaml"});
  CHECK(yaml.out.rfind("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n", 0) == 0);
  CHECK_THAT(yaml.out, Catch::Contains("\n  name: web\n") &&
                           Catch::Contains("\n  runStrategy: Halted\n") &&
                           Catch::Contains("image: quay.io/containerdisks/fedora:39"));

  Json vmi = ParseJson(MustRun(k, {"get", "vmi", "lone", "-o", "json"}).out);
  CHECK(vmi["apiVersion"] == "kubevirt.io/v1");
  CHECK(vmi["kind"] == "VirtualMachineInstance");
  auto vmi_yaml = MustRun(k, {"get", "vmi", "-o", "yaml"});
  CHECK_THAT(vmi_yaml.out,
             Catch::Contains("kind: VirtualMachineInstance") && Catch::Contains("kind: List"));

  // What kubectl -o json/yaml reads (plain Accept: application/json), straight from the server.
  for (const std::string& path :
       {std::string("/apis/kubevirt.io/v1/namespaces/default/virtualmachines"),
        std::string("/apis/kubevirt.io/v1/virtualmachines"),
        std::string("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances")}) {
    auto r = Http(env.Url(), "GET", path);
    INFO("GET " << path << ": " << r.error << " " << r.status << " " << r.body);
    REQUIRE(r.ok);
    CHECK(r.status == 200);
    Json raw = ParseJson(r.body);
    const bool vmis = path.find("instances") != std::string::npos;
    CHECK(raw["kind"] == (vmis ? "VirtualMachineInstanceList" : "VirtualMachineList"));
    CHECK(raw["apiVersion"] == "kubevirt.io/v1");
    CHECK(Rv(raw) > 0);
    for (const auto& item : raw["items"]) {
      CHECK(item["kind"] == (vmis ? "VirtualMachineInstance" : "VirtualMachine"));
      CHECK(item["apiVersion"] == "kubevirt.io/v1");
      CHECK(Rv(raw) >= Rv(item));
    }
  }
}

TEST_CASE("get vmi: Table columns, -o wide, empty namespaces, vm,vmi and get all") {
  KubectlEnv env("ev-kubectl-get");
  Kubectl& k = env.kubectl;
  CreateObjects(env);

  for (const char* resource : {"vmi", "vmis", "virtualmachineinstances"}) {
    INFO("kubectl get " << resource);
    auto t = Table(k, {"get", resource});
    REQUIRE(t.size() == 2);
    CHECK(t[0] == kVmiHeader);
    CHECK(t[1][0] == "lone");
  }
  auto wide = MustRun(k, {"get", "vmi", "-o", "wide"});
  auto wide_rows = Lines(wide.out);
  REQUIRE(wide_rows.size() == 2);
  CHECK(wide_rows[0] ==
        Row{"NAME", "AGE", "PHASE", "IP", "NODENAME", "READY", "LIVE-MIGRATABLE", "PAUSED"});

  auto vmi_all = Table(k, {"get", "vmi", "-A"});
  REQUIRE(vmi_all.size() == 2);
  CHECK(vmi_all[0] == Row{"NAMESPACE", "NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"});
  CHECK(vmi_all[1][0] == "default");
  CHECK(vmi_all[1][1] == "lone");
  CHECK(Column(Table(k, {"get", "vmi", "-l", "app=web"}), 0) == std::set<std::string>{"lone"});
  CHECK(k.Run({"get", "vmi", "-l", "app=db"}).out == "");
  auto vmi_labels = MustRun(k, {"get", "vmi", "--show-labels"});
  CHECK(Lines(vmi_labels.out)[0].back() == "LABELS");
  auto lone = RowOf(vmi_labels.out, "lone");
  REQUIRE(lone.has_value());
  CHECK(lone->back() == "app=web");
  Json vmi_list = ParseJson(MustRun(k, {"get", "vmi", "-o", "json"}).out);
  REQUIRE(vmi_list["items"].size() == 1);
  CHECK(vmi_list["items"][0]["kind"] == "VirtualMachineInstance");

  auto empty = k.Run({"get", "vmi", "-n", "team-a"});
  CHECK(empty.code == 0);
  CHECK(empty.out == "");
  CHECK(empty.err == "No resources found in team-a namespace.\n");

  // Two resource types: kubectl prints one table each, names prefixed with the resource.
  auto both = MustRun(k, {"get", "vm,vmi"});
  CHECK_THAT(both.out, Catch::Contains("virtualmachine.kubevirt.io/web") &&
                           Catch::Contains("virtualmachine.kubevirt.io/api") &&
                           Catch::Contains("virtualmachineinstance.kubevirt.io/lone"));

  // `get all` expands through the "all" category of the discovery documents.
  auto all = MustRun(k, {"get", "all"});
  CHECK_THAT(all.out, Catch::Contains("virtualmachine.kubevirt.io/web") &&
                          Catch::Contains("virtualmachine.kubevirt.io/api") &&
                          Catch::Contains("virtualmachineinstance.kubevirt.io/lone"));
  CHECK_THAT(all.out, !Catch::Contains("virtualmachine.kubevirt.io/db"));
  auto all_a = MustRun(k, {"get", "all", "-A"});
  CHECK_THAT(all_a.out, Catch::Contains("virtualmachine.kubevirt.io/db"));
  CHECK(all.err == "");
}

TEST_CASE("api-resources lists the KubeVirt kinds with their short names") {
  KubectlEnv env("ev-kubectl-get");
  Kubectl& k = env.kubectl;
  auto r = MustRun(k, {"api-resources"});
  auto rows = Lines(r.out);
  REQUIRE_FALSE(rows.empty());
  CHECK(rows[0] == Row{"NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"});
  auto vm = RowOf(r.out, "virtualmachines");
  REQUIRE(vm.has_value());
  CHECK(*vm == Row{"virtualmachines", "vm,vms", "kubevirt.io/v1", "true", "VirtualMachine"});
  auto vmi = RowOf(r.out, "virtualmachineinstances");
  REQUIRE(vmi.has_value());
  CHECK(*vmi == Row{"virtualmachineinstances", "vmi,vmis", "kubevirt.io/v1", "true",
                    "VirtualMachineInstance"});
  CHECK(r.err == "");

  auto group = MustRun(k, {"api-resources", "--api-group=kubevirt.io", "-o", "name"});
  CHECK_THAT(group.out, Catch::Contains("virtualmachines.kubevirt.io\n") &&
                            Catch::Contains("virtualmachineinstances.kubevirt.io\n"));
  auto versions = MustRun(k, {"api-versions"});
  CHECK_THAT(versions.out, Catch::Contains("kubevirt.io/v1\n"));
}

TEST_CASE("explain reads the OpenAPI v3 schema") {
  KubectlEnv env("ev-kubectl-get");
  Kubectl& k = env.kubectl;

  auto rs = MustRun(k, {"explain", "vm.spec.runStrategy"});
  CHECK_THAT(rs.out, Catch::Contains("GROUP:      kubevirt.io") &&
                         Catch::Contains("KIND:       VirtualMachine") &&
                         Catch::Contains("VERSION:    v1") &&
                         Catch::Contains("FIELD: runStrategy <string>") &&
                         Catch::Contains("DESCRIPTION:"));

  auto disks = MustRun(k, {"explain", "virtualmachine.spec.template.spec.domain.devices.disks"});
  CHECK_THAT(disks.out,
             Catch::Contains("KIND:       VirtualMachine") && Catch::Contains("FIELDS:"));
  // A CRD's inline schema prints as <[]Object>; a schema with named components (edgevirt's
  // OpenAPI) prints the component's name. Both are fine for kubectl.
  CHECK(Matches(disks.out, R"(\nFIELD: disks <\[\](Object|Disk)>\n)"));
  // The fields of a disk, `name` required.
  bool name_required = false;
  std::set<std::string> fields;
  for (const auto& row : Lines(disks.out)) {
    if (row.size() >= 2 && row[1].rfind('<', 0) == 0) fields.insert(row[0]);
    if (row.size() >= 3 && row[0] == "name" && row[2] == "-required-") name_required = true;
  }
  CHECK(name_required);
  for (const char* f : {"bootOrder", "cdrom", "disk", "lun", "serial", "cache"}) {
    INFO("field " << f);
    CHECK(fields.count(f) == 1);
  }
  CHECK(rs.err == "");

  auto vmi = MustRun(k, {"explain", "vmi.spec"});
  CHECK_THAT(vmi.out, Catch::Contains("KIND:       VirtualMachineInstance"));
  CHECK(Matches(vmi.out, R"(\n  domain\t<(Object|DomainSpec)> -required-\n)"));
}

TEST_CASE("describe vm and vmi: fields and an Events section, no error") {
  KubectlEnv env("ev-kubectl-get");
  Kubectl& k = env.kubectl;
  CreateObjects(env);

  auto vm = MustRun(k, {"describe", "vm", "web"});
  INFO(vm.out);
  CHECK(vm.err == "");
  CHECK(Matches(vm.out, R"((^|\n)Name:\s+web\n)"));
  CHECK(Matches(vm.out, R"(\nNamespace:\s+default\n)"));
  CHECK(Matches(vm.out, R"(\nAPI Version:\s+kubevirt.io/v1\n)"));
  CHECK(Matches(vm.out, R"(\nKind:\s+VirtualMachine\n)"));
  CHECK(Matches(vm.out, R"(\n\s+Run Strategy:\s+Halted\n)"));
  CHECK(Matches(vm.out, R"(\nEvents:)"));
  CHECK_THAT(vm.out, Catch::Contains("app=web") && Catch::Contains("tier=frontend"));

  auto vmi = MustRun(k, {"describe", "vmi", "lone"});
  INFO(vmi.out);
  CHECK(vmi.err == "");
  CHECK(Matches(vmi.out, R"((^|\n)Name:\s+lone\n)"));
  CHECK(Matches(vmi.out, R"(\nKind:\s+VirtualMachineInstance\n)"));
  CHECK(Matches(vmi.out, R"(\nEvents:)"));

  // describe with a label selector walks the list.
  auto selected = MustRun(k, {"describe", "vm", "-l", "app=api"});
  CHECK(Matches(selected.out, R"((^|\n)Name:\s+api\n)"));
  CHECK_FALSE(Matches(selected.out, R"((^|\n)Name:\s+web\n)"));
}

// Polls the stdout file of `child` until `pred` holds (at most `timeout`).
bool WaitForOutput(Child& child, const std::function<bool(const std::string&)>& pred,
                   std::chrono::milliseconds timeout) {
  return WaitUntil([&] { return pred(child.Stdout()); }, timeout);
}

size_t CountRowsNamed(const std::string& out, const std::string& name) {
  size_t n = 0;
  for (const auto& row : Lines(out)) n += row[0] == name;
  return n;
}

TEST_CASE("get -w prints the table, then one line per change, until stopped") {
  KubectlEnv env("ev-kubectl-watch");
  Kubectl& k = env.kubectl;
  CreateObjects(env);

  auto watch = k.Start({"get", "vm", "-w"});
  const bool listed = WaitForOutput(
      *watch, [](const std::string& out) { return CountRowsNamed(out, "web") == 1; }, 20s);
  INFO("stdout:\n" << watch->Stdout() << "\nstderr:\n" << watch->Stderr());
  REQUIRE(listed);
  CHECK(Lines(watch->Stdout())[0] == kVmHeader);
  CHECK(CountRowsNamed(watch->Stdout(), "api") == 1);

  // A change to web: one more line for it.
  MustRun(k, {"label", "vm", "web", "watched=yes"});
  CHECK(WaitForOutput(
      *watch, [](const std::string& out) { return CountRowsNamed(out, "web") == 2; }, 20s));

  // A new VM: its line appears.
  std::string text = ReadFile(Testdata("vm-web.yaml"));
  text = Replace(text, "  name: web\n", "  name: late\n");
  WriteFile(env.tmp / "late.yaml", text);
  MustRun(k, {"apply", "-f", (env.tmp / "late.yaml").string()});
  // (More lines follow as the controller adds its finalizer and status.)
  CHECK(WaitForOutput(
      *watch, [](const std::string& out) { return CountRowsNamed(out, "late") >= 1; }, 20s));
  // The header is printed once.
  CHECK(CountRowsNamed(watch->Stdout(), "NAME") == 1);
  // Other namespaces' changes do not show.
  MustRun(k, {"label", "vm", "db", "-n", "team-a", "watched=yes"});

  // Deleting api: a last line for it.
  MustRun(k, {"delete", "vm", "api"});
  CHECK(WaitForOutput(
      *watch, [](const std::string& out) { return CountRowsNamed(out, "api") >= 2; }, 20s));
  CHECK(CountRowsNamed(watch->Stdout(), "db") == 0);

  // Still running: a watch does not end by itself within the test.
  CHECK(watch->Running());
  CHECK(watch->Stderr() == "");
  watch->Signal(SIGTERM);
  CHECK(watch->Wait(10s).has_value());

  // The JSON form with event types.
  auto events = k.Start({"get", "vm", "web", "-w", "--output-watch-events", "-o", "json"});
  CHECK(WaitForOutput(
      *events, [](const std::string& out) { return Matches(out, R"("type":\s*"ADDED")"); }, 20s));
  MustRun(k, {"label", "vm", "web", "watched=again", "--overwrite"});
  CHECK(WaitForOutput(
      *events,
      [](const std::string& out) {
        return Matches(out, R"("type":\s*"MODIFIED")") && Matches(out, R"("watched":\s*"again")");
      },
      20s));
  events->Signal(SIGTERM);
  CHECK(events->Wait(10s).has_value());
}

}  // namespace
}  // namespace edgevirt::testing
