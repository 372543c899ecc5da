// core/v1 Service through the machinery: what `virtctl expose`, `kubectl apply -f svc.yaml`,
// `kubectl get svc` and `kubectl delete svc` send and expect; kube-apiserver's defaulting,
// validation and clusterIP/nodePort allocation (including exhaustion, conflicts and concurrent
// creates); and garbage collection with an owning VirtualMachine.
#include "api/machinery/services.h"

#include <arpa/inet.h>

#include <set>
#include <thread>

#include "api/machinery/machinery.h"
#include "api/machinery/testing.h"
#include "tests/support/catch.h"

namespace edgevirt::api::machinery {
namespace {

using namespace std::chrono_literals;

const std::string kServices = "/api/v1/namespaces/default/services";
const std::string kVms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

ResourceType FakeVmType() {
  ResourceType rt;
  rt.group = "kubevirt.io";
  rt.version = "v1";
  rt.kind = "VirtualMachine";
  rt.list_kind = "VirtualMachineList";
  rt.plural = "virtualmachines";
  rt.singular = "virtualmachine";
  rt.verbs = {"create", "delete", "get", "list", "patch", "update", "watch"};
  rt.schema_name = "io.kubevirt.v1.VirtualMachine";
  rt.cells = [](const Json&) { return std::vector<Json>{}; };
  return rt;
}

std::vector<ApiGroupVersion> Groups(const ServiceOptions& options) {
  ApiGroupVersion kv;
  kv.group = "kubevirt.io";
  kv.version = "v1";
  kv.resources = {FakeVmType()};
  CoreV1Options core;
  core.services = options;
  return {kv, CoreV1(core)};
}

struct SvcEnv : testing::Env {
  explicit SvcEnv(const ServiceOptions& options = {}) : testing::Env({}, {}, Groups(options)) {}
};

std::string Svc(const std::string& name, const std::string& spec) {
  return R"({"apiVersion":"v1","kind":"Service","metadata":{"name":")" + name + R"("},"spec":{)" +
         spec + "}}";
}

std::string NodePortSvc(const std::string& name, int node_port = 0) {
  return Svc(name, R"("type":"NodePort","selector":{"app":"web"},"ports":[{"port":80)" +
                       (node_port ? ",\"nodePort\":" + std::to_string(node_port) : "") + "}]");
}

std::vector<std::string> Causes(const Json& status) {
  std::vector<std::string> out;
  for (const auto& c : status["details"]["causes"]) {
    out.push_back(c["field"].get<std::string>() + ": " + c["message"].get<std::string>());
  }
  return out;
}

uint32_t Ip(const std::string& text) {
  in_addr a{};
  REQUIRE(::inet_pton(AF_INET, text.c_str(), &a) == 1);
  return ntohl(a.s_addr);
}

TEST_CASE("services: options", "[services]") {
  auto r = ParseServiceOptions({});
  REQUIRE(r);
  CHECK(r->network == Ip("10.96.0.0"));
  CHECK(r->prefix == 16);
  CHECK(r->first_port == 30000);
  CHECK(r->last_port == 32767);
  for (const char* bad : {"10.96.0.0", "10.96.0.1/16", "10.96.0.0/8", "10.96.0.0/31", "fd00::/64",
                          "10.96.0.0/x", ""}) {
    INFO(bad);
    auto e = ParseServiceOptions({bad, "30000-32767"});
    REQUIRE_FALSE(e);
    CHECK(e.error().code == Code::kInvalid);
    CHECK(e.error().message.find("service CIDR") != std::string::npos);
  }
  for (const char* bad : {"30000", "0-10", "32767-30000", "30000-70000", "a-b", "30000-"}) {
    INFO(bad);
    auto e = ParseServiceOptions({"10.96.0.0/16", bad});
    REQUIRE_FALSE(e);
    CHECK(e.error().message.find("node port range") != std::string::npos);
  }
}

TEST_CASE("services: discovery and OpenAPI", "[services]") {
  SvcEnv env;
  auto core = env.Call("GET", "/api/v1");
  REQUIRE(core.status == 200);
  Json svc, status;
  for (const auto& r : core.json["resources"]) {
    if (r["name"] == "services") svc = r;
    if (r["name"] == "services/status") status = r;
  }
  REQUIRE(svc.is_object());
  CHECK(svc["kind"] == "Service");
  CHECK(svc["namespaced"] == true);
  CHECK(svc["shortNames"] == Json::array({"svc"}));
  CHECK(svc["categories"] == Json::array({"all"}));
  CHECK(svc["verbs"] == Json::array({"create", "delete", "deletecollection", "get", "list", "patch",
                                     "update", "watch"}));
  CHECK(status.is_object());
  auto doc = env.Call("GET", "/openapi/v3/api/v1");
  REQUIRE(doc.status == 200);
  CHECK(doc.json["paths"].contains("/api/v1/namespaces/{namespace}/services"));
  const Json& schemas = doc.json["components"]["schemas"];
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

TEST_CASE("services: create defaults and allocates as kube-apiserver", "[services]") {
  SvcEnv env;
  auto c =
      env.Call("POST", kServices, Svc("web", R"("selector":{"app":"web"},"ports":[{"port":80}])"));
  INFO(c.body);
  REQUIRE(c.status == 201);
  const Json& spec = c.json["spec"];
  CHECK(spec["type"] == "ClusterIP");
  CHECK(spec["ports"] == Json::parse(R"([{"port":80,"protocol":"TCP","targetPort":80}])"));
  CHECK(spec["sessionAffinity"] == "None");
  CHECK(spec["ipFamilies"] == Json::array({"IPv4"}));
  CHECK(spec["ipFamilyPolicy"] == "SingleStack");
  CHECK(spec["internalTrafficPolicy"] == "Cluster");
  CHECK_FALSE(spec.contains("externalTrafficPolicy"));
  const std::string ip = spec["clusterIP"];
  CHECK(spec["clusterIPs"] == Json::array({ip}));
  CHECK(Ip(ip) >= Ip("10.96.0.2"));
  CHECK(Ip(ip) <= Ip("10.96.255.254"));
  CHECK(c.json["status"] == Json::parse(R"({"loadBalancer":{}})"));
  CHECK(env.Call("GET", kServices + "/web").json == c.json);

  auto np = env.Call("POST", kServices, NodePortSvc("np"));
  INFO(np.body);
  REQUIRE(np.status == 201);
  CHECK(np.json["spec"]["externalTrafficPolicy"] == "Cluster");
  const int64_t port = np.json["spec"]["ports"][0]["nodePort"];
  CHECK(port >= 30000);
  CHECK(port <= 32767);

  // A named targetPort is kept; ClientIP affinity gets its timeout; headless gets no address.
  auto named = env.Call(
      "POST", kServices,
      Svc("named", R"("clusterIP":"None","sessionAffinity":"ClientIP","selector":{"a":"b"},)"
                   R"("ports":[{"name":"ssh","port":22,"targetPort":"ssh"}])"));
  INFO(named.body);
  REQUIRE(named.status == 201);
  CHECK(named.json["spec"]["ports"][0]["targetPort"] == "ssh");
  CHECK(named.json["spec"]["clusterIPs"] == Json::array({"None"}));
  CHECK(named.json["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800);
  auto selectorless = env.Call("POST", kServices, Svc("bare", R"("clusterIP":"None")"));
  REQUIRE(selectorless.status == 201);
  CHECK(selectorless.json["spec"]["ipFamilyPolicy"] == "RequireDualStack");

  // A given address inside the CIDR and a given nodePort are used as is.
  auto given = env.Call(
      "POST", kServices,
      Svc("given", R"("type":"NodePort","clusterIP":"10.96.7.7","ports":[{"port":80,)"
                   R"("nodePort":30080},{"name":"b","port":81,"protocol":"UDP","nodePort":30080}],)"
                   R"("selector":{"a":"b"})"));
  INFO(given.body);
  REQUIRE(given.status == 422);  // two ports need names
  given = env.Call("POST", kServices,
                   Svc("given", R"("type":"NodePort","clusterIP":"10.96.7.7","ports":[)"
                                R"({"name":"a","port":80,"nodePort":30080},)"
                                R"({"name":"b","port":80,"protocol":"UDP","nodePort":30080}])"));
  INFO(given.body);
  REQUIRE(given.status == 201);
  CHECK(given.json["spec"]["clusterIPs"] == Json::array({"10.96.7.7"}));
  CHECK(ServicePortsString(given.json["spec"]["ports"]) == "80:30080/TCP,80:30080/UDP");
}

TEST_CASE("services: validation answers 422 with field causes", "[services]") {
  SvcEnv env;
  struct Case {
    std::string body;
    std::vector<std::string> causes;
  };
  const std::vector<Case> cases = {
      {Svc("1web", R"("ports":[{"port":80}])"),
       {"metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case "
        "alphanumeric characters or '-', start with an alphabetic character, and end with an "
        "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
        "'[a-z]([-a-z0-9]*[a-z0-9])?')"}},
      {Svc("web", R"("selector":{"a":"b"})"), {"spec.ports: Required value"}},
      {Svc("web", R"("ports":[{"port":0}])"),
       {"spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive"}},
      {Svc("web", R"("ports":[{"port":80,"protocol":"SCTP"}])"),
       {"spec.ports[0].protocol: Unsupported value: \"SCTP\": supported values: \"TCP\", "
        "\"UDP\""}},
      {Svc("web", R"("ports":[{"port":80},{"port":81}])"),
       {"spec.ports[0].name: Required value", "spec.ports[1].name: Required value"}},
      {Svc("web", R"("ports":[{"name":"a","port":80},{"name":"a","port":81}])"),
       {"spec.ports[1].name: Duplicate value: \"a\""}},
      {Svc("web", R"("ports":[{"port":80,"targetPort":"not--ok"}])"),
       {"spec.ports[0].targetPort: Invalid value: \"not--ok\": must not contain consecutive "
        "hyphens"}},
      {Svc("web", R"("ports":[{"port":80,"targetPort":"http_alt"}])"),
       {"spec.ports[0].targetPort: Invalid value: \"http_alt\": must contain only "
        "alpha-numeric characters (a-z, 0-9), and hyphens (-)"}},
      {Svc("web", R"("ports":[{"port":80,"nodePort":30080}])"),
       {"spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"}},
      {Svc("web", R"("ports":[{"port":80}],"selector":{"app":"a b"})"),
       {"spec.selector: Invalid value: \"a b\": a valid label must be an empty string or consist "
        "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
        "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
        "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"}},
      {Svc("web", R"("type":"LoadBalancer","ports":[{"port":80}])"),
       {"spec.type: Unsupported value: \"LoadBalancer\": edgevirt does not serve LoadBalancer "
        "services (there is no load balancer on a single host): use \"NodePort\" or "
        "\"ClusterIP\""}},
      {Svc("web", R"("type":"ExternalName","externalName":"example.com")"),
       {"spec.type: Unsupported value: \"ExternalName\": edgevirt does not serve ExternalName "
        "services (there is no cluster DNS): use \"NodePort\" or \"ClusterIP\""}},
      {Svc("web", R"("type":"NodePort","clusterIP":"None","ports":[{"port":80}])"),
       {"spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort "
        "services"}},
      {Svc("web", R"("ports":[{"port":80}],"ipFamilies":["IPv6"])"),
       {"spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"}},
      {Svc("web", R"("ports":[{"port":80}],"ipFamilyPolicy":"RequireDualStack")"),
       {"spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not "
        "configured for dual-stack services"}},
      {Svc("web", R"("ports":[{"port":80}],"externalTrafficPolicy":"Local")"),
       {"spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for "
        "externally-accessible services"}},
      {Svc("web", R"("ports":[{"port":80}],"clusterIP":"10.96.0.300")"),
       {"spec.clusterIPs[0]: Invalid value: \"10.96.0.300\": must be a valid IP address, (e.g. "
        "10.9.8.7 or 2001:db8::ffff)"}},
  };
  for (const auto& c : cases) {
    auto r = env.Call("POST", kServices, c.body);
    INFO(c.body);
    INFO(r.body);
    REQUIRE(r.status == 422);
    CHECK(r.json["reason"] == "Invalid");
    CHECK(r.json["details"]["kind"] == "Service");
    CHECK(Causes(r.json) == c.causes);
  }
  auto lb =
      env.Call("POST", kServices, Svc("web", R"("type":"LoadBalancer","ports":[{"port":80}])"));
  CHECK(lb.json["message"].get<std::string>().rfind("Service \"web\" is invalid: spec.type:", 0) ==
        0);
  // Mistyped values are decode errors (400), as from the apiserver's decoder.
  auto mistyped = env.Call("POST", kServices, Svc("web", R"("ports":[{"port":"80"}])"));
  REQUIRE(mistyped.status == 400);
  CHECK(mistyped.json["message"] ==
        "Service in version \"v1\" cannot be handled as a Service: json: cannot unmarshal string "
        "into Go struct field ServicePort.spec.ports.port of type int32");
  auto fraction = env.Call("POST", kServices, Svc("web", R"("ports":[{"port":1.5}])"));
  REQUIRE(fraction.status == 400);
  CHECK(fraction.json["message"] ==
        "Service in version \"v1\" cannot be handled as a Service: json: cannot unmarshal number "
        "1.5 into Go struct field ServicePort.spec.ports.port of type int32");
  auto number_type = env.Call("POST", kServices, Svc("web", R"("type":5,"ports":[{"port":80}])"));
  REQUIRE(number_type.status == 400);
  CHECK(number_type.json["message"] ==
        "Service in version \"v1\" cannot be handled as a Service: json: cannot unmarshal number "
        "into Go struct field ServiceSpec.spec.type of type v1.ServiceType");
  auto unknown = env.Call("POST", kServices + "?fieldValidation=Strict",
                          Svc("web", R"("ports":[{"port":80,"bogus":1}])"));
  REQUIRE(unknown.status == 400);
  CHECK(unknown.json["message"].get<std::string>().find("unknown field \"spec.ports[0].bogus\"") !=
        std::string::npos);
  // Nothing was written.
  CHECK(env.Call("GET", kServices).json["items"].empty());
}

TEST_CASE("services: nodePort and clusterIP conflicts, ranges and exhaustion", "[services]") {
  ServiceOptions small;
  small.service_cidr = "10.100.0.0/29";  // .2 .. .6 allocatable
  small.node_port_range = "30000-30002";
  SvcEnv env(small);
  auto first = env.Call("POST", kServices, NodePortSvc("a", 30001));
  INFO(first.body);
  REQUIRE(first.status == 201);

  auto taken = env.Call("POST", kServices, NodePortSvc("b", 30001));
  REQUIRE(taken.status == 422);
  CHECK(taken.json["message"] ==
        "Service \"b\" is invalid: spec.ports[0].nodePort: Invalid "
        "value: 30001: provided port is already allocated");
  auto outside = env.Call("POST", kServices, NodePortSvc("b", 31000));
  REQUIRE(outside.status == 422);
  CHECK(Causes(outside.json) ==
        std::vector<std::string>{"spec.ports[0].nodePort: Invalid value: 31000: provided port is "
                                 "not in the valid range. The range of valid ports is "
                                 "30000-30002"});
  auto ip_outside =
      env.Call("POST", kServices, Svc("b", R"("clusterIP":"10.96.0.10","ports":[{"port":80}])"));
  REQUIRE(ip_outside.status == 422);
  CHECK(Causes(ip_outside.json) ==
        std::vector<std::string>{
            "spec.clusterIPs: Invalid value: []string{\"10.96.0.10\"}: failed to allocate IP "
            "10.96.0.10: the provided IP (10.96.0.10) is not in the valid range. The range of "
            "valid IPs is 10.100.0.0/29"});
  const std::string a_ip = first.json["spec"]["clusterIP"];
  for (const std::string& ip : {a_ip, std::string("10.100.0.1")}) {
    auto ip_taken = env.Call("POST", kServices,
                             Svc("b", R"("clusterIP":")" + ip + R"(","ports":[{"port":80}])"));
    REQUIRE(ip_taken.status == 422);
    CHECK(Causes(ip_taken.json) ==
          std::vector<std::string>{"spec.clusterIPs: Invalid value: []string{\"" + ip +
                                   "\"}: failed to allocate IP " + ip +
                                   ": provided IP is already allocated"});
  }

  // Node ports run out first (3), then addresses (5).
  std::set<int64_t> ports = {30001};
  for (const char* name : {"b", "c"}) {
    auto r = env.Call("POST", kServices, NodePortSvc(name));
    REQUIRE(r.status == 201);
    ports.insert(r.json["spec"]["ports"][0]["nodePort"].get<int64_t>());
  }
  CHECK(ports == std::set<int64_t>{30000, 30001, 30002});
  auto full = env.Call("POST", kServices, NodePortSvc("d"));
  REQUIRE(full.status == 500);
  CHECK(full.json["message"] ==
        "Internal error occurred: failed to allocate a nodePort: range is full");
  std::set<std::string> ips;
  const Json list = env.Call("GET", kServices).json;
  for (const auto& item : list["items"]) {
    ips.insert(item["spec"]["clusterIP"].get<std::string>());
  }
  for (const char* name : {"d", "e"}) {
    auto r = env.Call("POST", kServices, Svc(name, R"("ports":[{"port":80}])"));
    REQUIRE(r.status == 201);
    ips.insert(r.json["spec"]["clusterIP"].get<std::string>());
  }
  CHECK(ips == std::set<std::string>{"10.100.0.2", "10.100.0.3", "10.100.0.4", "10.100.0.5",
                                     "10.100.0.6"});
  auto no_ip = env.Call("POST", kServices, Svc("f", R"("ports":[{"port":80}])"));
  REQUIRE(no_ip.status == 500);
  CHECK(no_ip.json["message"] ==
        "Internal error occurred: failed to allocate a serviceIP: range is full");
  // A headless service needs no address.
  CHECK(
      env.Call("POST", kServices, Svc("f", R"("clusterIP":"None","selector":{"a":"b"})")).status ==
      201);

  // Deleting frees both.
  REQUIRE(env.Call("DELETE", kServices + "/a").status == 200);
  auto again = env.Call("POST", kServices, NodePortSvc("g", 30001));
  INFO(again.body);
  REQUIRE(again.status == 201);
  CHECK(again.json["spec"]["clusterIP"] == a_ip);
}

TEST_CASE("services: updates keep allocated values", "[services]") {
  SvcEnv env;
  auto c = env.Call("POST", kServices, NodePortSvc("web"));
  REQUIRE(c.status == 201);
  const Json ip = c.json["spec"]["clusterIP"];
  const Json np = c.json["spec"]["ports"][0]["nodePort"];

  // kubectl replace of the original manifest (no clusterIP, no nodePort) keeps both.
  Json body = Json::parse(NodePortSvc("web"));
  body["metadata"]["resourceVersion"] = c.json["metadata"]["resourceVersion"];
  body["spec"]["ports"][0]["targetPort"] = 8080;
  auto put = env.Call("PUT", kServices + "/web", body.dump());
  INFO(put.body);
  REQUIRE(put.status == 200);
  CHECK(put.json["spec"]["clusterIP"] == ip);
  CHECK(put.json["spec"]["clusterIPs"] == Json::array({ip}));
  CHECK(put.json["spec"]["ports"][0]["nodePort"] == np);
  CHECK(put.json["spec"]["ports"][0]["targetPort"] == 8080);

  // The clusterIP is immutable.
  auto moved = env.Call("PATCH", kServices + "/web",
                        R"({"spec":{"clusterIP":"10.96.1.1","clusterIPs":["10.96.1.1"]}})",
                        "application/merge-patch+json");
  REQUIRE(moved.status == 422);
  CHECK(Causes(moved.json) ==
        std::vector<std::string>{"spec.clusterIP: Invalid value: \"10.96.1.1\": field is "
                                 "immutable"});

  // A nodePort changed explicitly is checked and taken; the old one is free again.
  auto other = env.Call("POST", kServices, NodePortSvc("other", 31000));
  REQUIRE(other.status == 201);
  auto clash =
      env.Call("PATCH", kServices + "/web", R"({"spec":{"ports":[{"port":80,"nodePort":31000}]}})",
               "application/merge-patch+json");
  REQUIRE(clash.status == 422);
  CHECK(Causes(clash.json) ==
        std::vector<std::string>{"spec.ports[0].nodePort: Invalid value: "
                                 "31000: provided port is already allocated"});
  auto ok =
      env.Call("PATCH", kServices + "/web", R"({"spec":{"ports":[{"port":80,"nodePort":31001}]}})",
               "application/merge-patch+json");
  INFO(ok.body);
  REQUIRE(ok.status == 200);
  CHECK(ok.json["spec"]["ports"][0]["nodePort"] == 31001);

  // NodePort → ClusterIP drops the nodePorts and the external traffic policy.
  auto to_cluster = env.Call("PATCH", kServices + "/web", R"({"spec":{"type":"ClusterIP"}})",
                             "application/merge-patch+json");
  INFO(to_cluster.body);
  REQUIRE(to_cluster.status == 200);
  CHECK_FALSE(to_cluster.json["spec"]["ports"][0].contains("nodePort"));
  CHECK_FALSE(to_cluster.json["spec"].contains("externalTrafficPolicy"));
  CHECK(to_cluster.json["spec"]["clusterIP"] == ip);
  CHECK(env.Call("POST", kServices, NodePortSvc("reuse", 31001)).status == 201);
}

TEST_CASE("services: concurrent creates never share a nodePort or an address", "[services]") {
  ServiceOptions opts;
  opts.service_cidr = "10.100.0.0/25";  // 125 addresses
  opts.node_port_range = "30000-30059";
  SvcEnv env(opts);
  constexpr int kThreads = 6, kEach = 10;
  std::vector<std::thread> threads;
  std::vector<std::vector<Json>> created(kThreads);
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto r = env.Call("POST", kServices,
                          NodePortSvc("s" + std::to_string(t) + "-" + std::to_string(i)));
        if (r.status == 201) {
          created[t].push_back(r.json);
        } else {
          ++failures[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<int64_t> ports;
  std::set<std::string> ips;
  size_t n = 0;
  for (int t = 0; t < kThreads; ++t) {
    CHECK(failures[t] == 0);
    for (const Json& s : created[t]) {
      ++n;
      ports.insert(s["spec"]["ports"][0]["nodePort"].get<int64_t>());
      ips.insert(s["spec"]["clusterIP"].get<std::string>());
    }
  }
  CHECK(n == kThreads * kEach);
  CHECK(ports.size() == n);  // all 60 ports of the range, each once
  CHECK(ips.size() == n);
  CHECK(env.Call("POST", kServices, NodePortSvc("one-too-many")).status == 500);
}

TEST_CASE("services: kubectl get svc columns", "[services]") {
  SvcEnv env;
  REQUIRE(env.Call("POST", kServices,
                   Svc("web", R"("type":"NodePort","selector":{"b":"2","a":"1"},)"
                              R"("clusterIP":"10.96.0.50","ports":[{"name":"http","port":80,)"
                              R"("nodePort":30080},{"name":"dns","port":53,"protocol":"UDP"}])"))
              .status == 201);
  REQUIRE(env.Call("POST", kServices, Svc("headless", R"("clusterIP":"None")")).status == 201);
  auto table = env.Call("GET", kServices, "", "",
                        {{"accept", "application/json;as=Table;v=v1;g=meta.k8s.io"}});
  REQUIRE(table.status == 200);
  std::vector<std::string> cols;
  for (const auto& c : table.json["columnDefinitions"]) cols.push_back(c["name"]);
  CHECK(cols == std::vector<std::string>{"Name", "Type", "Cluster-IP", "External-IP", "Port(s)",
                                         "Age", "Selector"});
  CHECK(table.json["columnDefinitions"][6]["priority"] == 1);
  REQUIRE(table.json["rows"].size() == 2);
  Json headless = table.json["rows"][0]["cells"];
  CHECK(headless[0] == "headless");
  CHECK(headless[2] == "None");
  CHECK(headless[4] == "<none>");
  CHECK(headless[6] == "<none>");
  Json web = table.json["rows"][1]["cells"];
  CHECK(web[0] == "web");
  CHECK(web[1] == "NodePort");
  CHECK(web[2] == "10.96.0.50");
  CHECK(web[3] == "<none>");
  const std::string udp = web[4].get<std::string>();
  CHECK(udp.rfind("80:30080/TCP,53:", 0) == 0);
  CHECK(udp.substr(udp.size() - 4) == "/UDP");
  CHECK(web[5].is_string());
  CHECK(web[6] == "a=1,b=2");
  // Field selectors kube-apiserver offers for Services.
  auto by_type = env.Call("GET", kServices + "?fieldSelector=spec.type%3DNodePort");
  REQUIRE(by_type.status == 200);
  REQUIRE(by_type.json["items"].size() == 1);
  CHECK(by_type.json["items"][0]["metadata"]["name"] == "web");
}

TEST_CASE("services: deleted with the VirtualMachine that owns them", "[services][gc]") {
  SvcEnv env;
  auto vm = env.Call("POST", kVms,
                     R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine",)"
                     R"("metadata":{"name":"vm1"},"spec":{}})");
  REQUIRE(vm.status == 201);
  Json svc = Json::parse(NodePortSvc("vm1-ssh"));
  svc["metadata"]["ownerReferences"] = Json::array({{{"apiVersion", "kubevirt.io/v1"},
                                                     {"kind", "VirtualMachine"},
                                                     {"name", "vm1"},
                                                     {"uid", vm.json["metadata"]["uid"]}}});
  REQUIRE(env.Call("POST", kServices, svc.dump()).status == 201);
  REQUIRE(env.Call("DELETE", kVms + "/vm1").status == 200);
  auto* gc = env.machinery().garbage_collector();
  REQUIRE(gc != nullptr);
  REQUIRE(gc->WaitIdle(5s));
  CHECK(env.Call("GET", kServices + "/vm1-ssh").status == 404);
}

}  // namespace
}  // namespace edgevirt::api::machinery
