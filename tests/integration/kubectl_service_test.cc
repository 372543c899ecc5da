// core/v1 Services end to end: the real edgevirtd (VMs disabled: only the API runs) with the
// real kubectl, and the request `virtctl expose` (v1.0) sends, byte for byte: `kubectl apply -f
// examples/service.yaml`, `kubectl get svc` (and -o wide) columns, `kubectl describe svc`,
// 422 for a nodePort another Service holds and for type LoadBalancer, `kubectl delete svc`.
#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

namespace fs = std::filesystem;

const std::string kServices = "/api/v1/namespaces/default/services";

struct ServiceFixture {
  ServiceFixture()
      : tmp("ev-kubectl-svc"),
        daemon(tmp.path() / "daemon", "", "vms:\n  enabled: false\n"),
        kubectl(tmp.path() / "kubectl") {
    daemon.Start();
    kubectl.SetServer(daemon.url());
  }
  ~ServiceFixture() {
    if (daemon.Running()) daemon.Stop();
  }
  KubectlResult Create(const std::string& yaml, const std::string& file) {
    WriteFile(tmp.path() / file, yaml);
    return kubectl.Run({"create", "-f", (tmp.path() / file).string()});
  }

  TempDir tmp;
  EdgevirtDaemon daemon;
  Kubectl kubectl;
};

const fs::path kExample = fs::path(EDGEVIRT_SOURCE_DIR) / "examples" / "service.yaml";

TEST_CASE("kubectl apply examples/service.yaml; get svc, -o wide, describe, delete") {
  ServiceFixture f;
  auto applied = MustRun(f.kubectl, {"apply", "-f", kExample.string()});
  CHECK(applied.out == "service/web-http created\n");

  auto table = MustRun(f.kubectl, {"get", "svc"});
  auto lines = Lines(table.out);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] ==
        std::vector<std::string>{"NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"});
  auto row = RowOf(table.out, "web-http");
  REQUIRE(row);
  REQUIRE(row->size() == 6);
  CHECK((*row)[1] == "NodePort");
  CHECK((*row)[2].rfind("10.96.", 0) == 0);
  CHECK((*row)[3] == "<none>");
  CHECK((*row)[4] == "80:30080/TCP");

  auto wide = MustRun(f.kubectl, {"get", "services", "-o", "wide"});
  CHECK(Lines(wide.out)[0].back() == "SELECTOR");
  CHECK(RowOf(wide.out, "web-http")->back() == "kubevirt.io/domain=web");

  auto json = ParseJson(MustRun(f.kubectl, {"get", "svc", "web-http", "-o", "json"}).out);
  CHECK(json["spec"]["clusterIPs"] == Json::array({(*row)[2]}));
  CHECK(json["spec"]["ipFamilies"] == Json::array({"IPv4"}));
  CHECK(json["spec"]["externalTrafficPolicy"] == "Cluster");
  CHECK(json["status"] == Json::parse(R"({"loadBalancer":{}})"));
  CHECK(
      json["metadata"]["annotations"].contains("kubectl.kubernetes.io/last-applied-configuration"));

  auto described = MustRun(f.kubectl, {"describe", "svc", "web-http"});
  INFO(described.out);
  CHECK(described.out.find("Type:") != std::string::npos);
  CHECK(described.out.find("NodePort:") != std::string::npos);
  CHECK(described.out.find("30080/TCP") != std::string::npos);
  CHECK(described.out.find("kubevirt.io/domain=web") != std::string::npos);

  // The same nodePort for another Service: 422 from the allocator; nothing is created.
  const std::string clash =
      "apiVersion: v1\nkind: Service\nmetadata:\n  name: clash\nspec:\n  type: NodePort\n"
      "  selector:\n    app: x\n  ports:\n  - port: 8080\n    nodePort: 30080\n";
  auto refused = f.Create(clash, "clash.yaml");
  CHECK(refused.code != 0);
  CHECK(refused.err.find("The Service \"clash\" is invalid: spec.ports[0].nodePort: Invalid "
                         "value: 30080: provided port is already allocated") != std::string::npos);
  CHECK(Http(f.daemon.url(), "GET", kServices + "/clash").status == 404);

  // LoadBalancer: a clear refusal.
  auto lb = f.Create(
      "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\nspec:\n  type: LoadBalancer\n"
      "  ports:\n  - port: 80\n",
      "lb.yaml");
  CHECK(lb.code != 0);
  CHECK(lb.err.find("edgevirt does not serve LoadBalancer services") != std::string::npos);

  // Delete frees the port: the clash now goes through.
  auto deleted = MustRun(f.kubectl, {"delete", "svc", "web-http"});
  CHECK(deleted.out == "service \"web-http\" deleted\n");
  auto gone = f.kubectl.Run({"get", "svc", "web-http"});
  CHECK(gone.code != 0);
  CHECK(gone.err.find("NotFound") != std::string::npos);
  auto again = f.Create(clash, "clash.yaml");
  INFO(Describe(again));
  CHECK(again.code == 0);
}

TEST_CASE("virtctl v1.0 expose: GET /version, then the Service POST it sends") {
  ServiceFixture f;
  auto version = Http(f.daemon.url(), "GET", "/version");
  REQUIRE(version.ok);
  CHECK(version.status == 200);

  // k8s.io/api core/v1 Service as encoding/json marshals what expose.go builds for
  // `virtctl expose vmi vm1 --name=vm1-ssh --type=NodePort --port=22` (TypeMeta set by the
  // client's encoder; an empty --target-port is intstr.Parse("") = the string "").
  const std::string body =
      R"({"kind":"Service","apiVersion":"v1","metadata":{"name":"vm1-ssh","namespace":"default",)"
      R"("creationTimestamp":null},"spec":{"ports":[{"protocol":"TCP","port":22,"targetPort":""}],)"
      R"("selector":{"kubevirt.io/domain":"vm1","kubevirt.io/size":"small"},"type":"NodePort"},)"
      R"("status":{"loadBalancer":{}}})";
  auto r =
      Http(f.daemon.url(), "POST", kServices, body, "application/json", std::chrono::seconds(10),
           {"Accept: application/json, */*",
            "User-Agent: virtctl/v1.0.0 (linux/amd64) kubernetes/$Format"});
  REQUIRE(r.ok);
  INFO(r.body);
  REQUIRE(r.status == 201);
  Json svc = ParseJson(r.body);
  CHECK(svc["spec"]["ports"][0]["targetPort"] == 22);
  const int64_t node_port = svc["spec"]["ports"][0]["nodePort"];
  CHECK(node_port >= 30000);
  CHECK(node_port <= 32767);
  CHECK(svc["metadata"]["managedFields"][0]["manager"] == "virtctl");

  auto row = RowOf(MustRun(f.kubectl, {"get", "svc"}).out, "vm1-ssh");
  REQUIRE(row);
  CHECK((*row)[4] == "22:" + std::to_string(node_port) + "/TCP");

  // The same expose again: 409 AlreadyExists, as virtctl reports it.
  auto again = Http(f.daemon.url(), "POST", kServices, body);
  CHECK(again.status == 409);
  CHECK(ParseJson(again.body)["reason"] == "AlreadyExists");
}

}  // namespace
}  // namespace edgevirt::testing
