// daemon_metrics_test: the Prometheus text renderer (escaping, value formatting, histogram
// buckets, family grouping), each exposition checked by the real promtool; the KubeVirt VMI
// collectors on given VMI objects and domain statistics (names, labels, units); the request
// classes of the latency histogram. The same collectors on a real guest:
// tests/integration/vm_network_test.cc.
#include "daemon/metrics.h"

#include <string>

#include "tests/support/catch.h"
#include "tests/support/promtool.h"

namespace edgevirt::daemon::metrics {
namespace {

using testing::PromtoolCheckMetrics;
using testing::PromtoolProblems;

TEST_CASE("escaping and value formatting") {
  CHECK(EscapeLabelValue("plain") == "plain");
  CHECK(EscapeLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
  CHECK(EscapeHelp("x \\ y\nz \"q\"") == "x \\\\ y\\nz \"q\"");
  CHECK(FormatValue(0) == "0");
  CHECK(FormatValue(42) == "42");
  CHECK(FormatValue(-7) == "-7");
  CHECK(FormatValue(0.25) == "0.25");
  CHECK(FormatValue(1e300) == "1e+300");
  CHECK(FormatValue(1.0 / 0.0) == "+Inf");
  CHECK(FormatValue(-1.0 / 0.0) == "-Inf");
  CHECK(FormatValue(0.0 / 0.0) == "NaN");
  CHECK(FormatValue(9007199254740993.0) == "9007199254740992");  // exact: 2^53
  CHECK(ValidMetricName("a:b_c9"));
  CHECK_FALSE(ValidMetricName("9a"));
  CHECK_FALSE(ValidMetricName("a-b"));
  CHECK(ValidLabelName("le"));
  CHECK_FALSE(ValidLabelName("__name__"));
  CHECK_FALSE(ValidLabelName("a:b"));
}

TEST_CASE("an exposition with hostile label values parses in promtool") {
  Exposition e;
  e.Declare("edgevirt_test_things", "Things.\nWith a \\ and a newline.", Type::kGauge);
  e.Declare("edgevirt_test_events_total", "Events.", Type::kCounter);
  // Interleaved: the renderer groups them by family.
  e.Add("edgevirt_test_things", {{"name", "a\"b"}, {"path", "C:\\x\ny"}}, 1.5);
  e.Add("edgevirt_test_events_total", {{"kind", "ünïcode ✓"}}, 3);
  e.Add("edgevirt_test_things", {{"name", ""}, {"bad-label", "dropped"}}, -2);
  e.Add("edgevirt_test_things", {}, 0.0 / 0.0);
  e.Declare("bad-name", "dropped", Type::kGauge);
  e.Add("bad-name", {}, 1);
  const std::string text = e.Text();
  CHECK(text ==
        "# HELP edgevirt_test_things Things.\\nWith a \\\\ and a newline.\n"
        "# TYPE edgevirt_test_things gauge\n"
        "edgevirt_test_things{name=\"a\\\"b\",path=\"C:\\\\x\\ny\"} 1.5\n"
        "edgevirt_test_things{name=\"\"} -2\n"
        "edgevirt_test_things NaN\n"
        "# HELP edgevirt_test_events_total Events.\n"
        "# TYPE edgevirt_test_events_total counter\n"
        "edgevirt_test_events_total{kind=\"ünïcode ✓\"} 3\n");
  const auto r = PromtoolCheckMetrics(text);
  INFO(r.output);
  CHECK(r.exit_code == 0);

  // The check can fail: an unescaped quote, and a family split in two blocks, are refused.
  CHECK(PromtoolCheckMetrics("# TYPE x gauge\nx{a=\"b\"c\"} 1\n").exit_code == 1);
  CHECK(PromtoolCheckMetrics("# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\n# TYPE x gauge\nx 2\n")
            .exit_code == 1);
}

TEST_CASE("histogram buckets are cumulative with le, sum and count") {
  Histogram h({0.1, 0.5, 1});
  const Labels get = {{"verb", "get"}};
  h.Observe(get, 0.05);
  h.Observe(get, 0.1);  // le is inclusive
  h.Observe(get, 0.3);
  h.Observe(get, 7);
  h.Observe({{"verb", "list"}}, 0.5);
  Exposition e;
  e.Declare("edgevirt_test_seconds", "Latency.", Type::kHistogram);
  h.Collect(e, "edgevirt_test_seconds");
  const std::string text = e.Text();
  CHECK(text ==
        "# HELP edgevirt_test_seconds Latency.\n"
        "# TYPE edgevirt_test_seconds histogram\n"
        "edgevirt_test_seconds_bucket{verb=\"get\",le=\"0.1\"} 2\n"
        "edgevirt_test_seconds_bucket{verb=\"get\",le=\"0.5\"} 3\n"
        "edgevirt_test_seconds_bucket{verb=\"get\",le=\"1\"} 3\n"
        "edgevirt_test_seconds_bucket{verb=\"get\",le=\"+Inf\"} 4\n"
        "edgevirt_test_seconds_sum{verb=\"get\"} 7.45\n"
        "edgevirt_test_seconds_count{verb=\"get\"} 4\n"
        "edgevirt_test_seconds_bucket{verb=\"list\",le=\"0.1\"} 0\n"
        "edgevirt_test_seconds_bucket{verb=\"list\",le=\"0.5\"} 1\n"
        "edgevirt_test_seconds_bucket{verb=\"list\",le=\"1\"} 1\n"
        "edgevirt_test_seconds_bucket{verb=\"list\",le=\"+Inf\"} 1\n"
        "edgevirt_test_seconds_sum{verb=\"list\"} 0.5\n"
        "edgevirt_test_seconds_count{verb=\"list\"} 1\n");
  const auto r = PromtoolCheckMetrics(text);
  INFO(r.output);
  CHECK(r.exit_code == 0);
}

nlohmann::json Vmi(const std::string& ns, const std::string& name, const std::string& phase) {
  return {{"metadata", {{"namespace", ns}, {"name", name}}},
          {"status", {{"phase", phase}, {"nodeName", "edge-1"}}}};
}

TEST_CASE("KubeVirt VMI metrics from VMIs and domain stats") {
  vmm::DomainStats s;
  s.name = "default_vm1";
  s.state = 1;
  s.cpu_time_ns = 2'700'000'000;
  s.balloon_rss_kib = 1000;
  s.balloon_maximum_kib = 524288;
  s.balloon_major_fault = 4;
  s.vcpus.push_back({0, vmm::VcpuState::kRunning, 1'250'000'000, std::nullopt});
  vmm::NetStats n;
  n.device = "tap0";
  n.alias = "default";
  n.rx_bytes = 1234;
  n.tx_drop = 0;
  s.nets.push_back(n);
  vmm::BlockStats b;
  b.target = "vda";
  b.alias = "root\"disk";
  b.rd_bytes = 4096;
  b.rd_times_ns = 2'500'000;
  s.blocks.push_back(b);

  Sources src;
  src.node = "edge-1";
  src.version = "1.2.3";
  src.vmis = [] {
    return Result<std::vector<nlohmann::json>>(std::vector<nlohmann::json>{
        Vmi("default", "vm1", "Running"), Vmi("default", "vm2", "Scheduling"),
        Vmi("other", "vm3", "Running"), [] {
          auto v = Vmi("other", "vm4", "Running");
          v["metadata"]["annotations"] = {{"vm.kubevirt.io/os", "fedora"},
                                          {"kubevirt.io/cluster-instancetype-name", "u1.small"}};
          return v;
        }()});
  };
  src.domain_stats = [s] { return Result<std::vector<vmm::DomainStats>>({s}); };
  src.queue_depth = [] { return size_t{3}; };
  Metrics m(src);
  m.ObserveRequest("get", "virtualmachineinstances", 200, 0.002);
  m.pull_bytes() += 4096;
  const std::string text = m.Render();
  INFO(text);
  auto has = [&](const std::string& line) { return text.find(line + "\n") != std::string::npos; };
  const std::string none =
      ",os=\"<none>\",workload=\"<none>\",flavor=\"<none>\",instance_type=\"<none>\","
      "preference=\"<none>\"}";
  CHECK(has("kubevirt_vmi_phase_count{node=\"edge-1\",phase=\"running\"" + none + " 2"));
  CHECK(has("kubevirt_vmi_phase_count{node=\"edge-1\",phase=\"scheduling\"" + none + " 1"));
  // Annotations as KubeVirt reads them; an instance type it cannot vouch for is "<other>".
  CHECK(
      has("kubevirt_vmi_phase_count{node=\"edge-1\",phase=\"running\",os=\"fedora\","
          "workload=\"<none>\",flavor=\"<none>\",instance_type=\"<other>\","
          "preference=\"<none>\"} 1"));
  const std::string vm1 = "node=\"edge-1\",namespace=\"default\",name=\"vm1\"";
  CHECK(has("kubevirt_vmi_memory_resident_bytes{" + vm1 + "} 1024000"));
  CHECK(has("kubevirt_vmi_memory_domain_bytes_total{" + vm1 + "} 536870912"));
  CHECK(has("kubevirt_vmi_memory_pgmajfault{" + vm1 + "} 4"));
  CHECK(has("kubevirt_vmi_cpu_usage_seconds{" + vm1 + "} 2"));
  CHECK(has("kubevirt_vmi_vcpu_seconds{" + vm1 + ",id=\"0\",state=\"running\"} 1.25"));
  CHECK(has("kubevirt_vmi_vcpu_seconds_total{" + vm1 + ",id=\"0\",state=\"running\"} 1.25"));
  CHECK(has("kubevirt_vmi_network_receive_bytes_total{" + vm1 + ",interface=\"default\"} 1234"));
  CHECK(has("kubevirt_vmi_network_transmit_packets_dropped_total{" + vm1 +
            ",interface=\"default\"} 0"));
  CHECK(has("kubevirt_vmi_storage_read_traffic_bytes_total{" + vm1 +
            ",drive=\"root\\\"disk\"} 4096"));
  CHECK(has("kubevirt_vmi_storage_read_times_ms_total{" + vm1 + ",drive=\"root\\\"disk\"} 2.5"));
  CHECK(text.find("kubevirt_vmi_memory_available_bytes{") == std::string::npos);  // not reported
  CHECK(text.find("name=\"vm3\"") == std::string::npos);  // no domain: no domain figures
  CHECK(has("edgevirt_reconcile_queue_depth 3"));
  CHECK(has("edgevirt_image_pull_bytes_total 4096"));
  CHECK(has("edgevirt_build_info{version=\"1.2.3\"} 1"));
  CHECK(has("edgevirt_metrics_source_up{source=\"domain_stats\"} 1"));
  CHECK(
      has("edgevirt_api_request_duration_seconds_bucket{verb=\"get\",resource="
          "\"virtualmachineinstances\",code=\"200\",le=\"0.005\"} 1"));
  const std::string problems = PromtoolProblems(text);
  INFO(problems);
  CHECK(problems.empty());

  // A failing source is reported, not fatal.
  src.domain_stats = [] {
    return Result<std::vector<vmm::DomainStats>>(Error(Code::kUnavailable, "libvirt gone"));
  };
  const std::string degraded = Metrics(src).Render();
  CHECK(degraded.find("edgevirt_metrics_source_up{source=\"domain_stats\"} 0\n") !=
        std::string::npos);
  CHECK(degraded.find("kubevirt_vmi_phase_count{") != std::string::npos);
  CHECK(PromtoolProblems(degraded).empty());
}

api::HttpRequest Req(std::string method, std::string path, std::string query = "") {
  api::HttpRequest r;
  r.method = std::move(method);
  r.path = path;
  r.target = path + (query.empty() ? "" : "?" + query);
  r.query = std::move(query);
  return r;
}

TEST_CASE("request classes are bounded") {
  using P = std::pair<std::string, std::string>;
  CHECK(RequestClass(Req("GET", "/healthz")) == P{"get", "/healthz"});
  CHECK(RequestClass(Req("GET", "/metrics")) == P{"get", "/metrics"});
  CHECK(RequestClass(Req("GET", "/apis/kubevirt.io/v1")) == P{"get", "discovery"});
  CHECK(RequestClass(Req("GET", "/api")) == P{"get", "discovery"});
  CHECK(RequestClass(Req("GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines")) ==
        P{"list", "virtualmachines"});
  CHECK(RequestClass(Req("GET", "/apis/kubevirt.io/v1/virtualmachineinstances", "watch=true")) ==
        P{"watch", "virtualmachineinstances"});
  CHECK(RequestClass(Req("GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1")) ==
        P{"get", "virtualmachines"});
  CHECK(RequestClass(Req("PUT",
                         "/apis/subresources.kubevirt.io/v1/namespaces/default/"
                         "virtualmachines/vm1/start")) == P{"update", "virtualmachines/start"});
  CHECK(RequestClass(Req("GET",
                         "/apis/subresources.kubevirt.io/v1/namespaces/default/"
                         "virtualmachineinstances/vm1/console")) ==
        P{"connect", "virtualmachineinstances/console"});
  CHECK(RequestClass(Req("DELETE", "/api/v1/namespaces/default/secrets/s")) ==
        P{"delete", "secrets"});
  CHECK(RequestClass(Req("DELETE", "/api/v1/namespaces/default/secrets")) ==
        P{"deletecollection", "secrets"});
  CHECK(RequestClass(Req("POST", "/api/v1/namespaces/default/persistentvolumeclaims")) ==
        P{"create", "persistentvolumeclaims"});
  CHECK(RequestClass(Req("GET", "/random/" + std::string(100, 'x'))) == P{"get", "other"});
  CHECK(RequestClass(Req("GET", "/apis/x/v1/a\"b")) == P{"get", "other"});
}

TEST_CASE("WithMetrics observes direct and deferred responses") {
  Metrics m(Sources{});
  api::Handler inner = [](const api::HttpRequest& r) {
    if (r.method == "POST") {
      return api::HttpResponse::Deferred(
          [](const api::HttpRequest&) { return api::HttpResponse::Text(201, "made"); });
    }
    return api::HttpResponse::Text(404, "no");
  };
  api::Handler h = WithMetrics(inner, m);
  CHECK(h(Req("GET", "/nothing")).status == 404);
  api::HttpResponse deferred = h(Req("POST", "/api/v1/namespaces/default/secrets"));
  REQUIRE(deferred.blocking);
  CHECK(m.Render().find("code=\"201\"") == std::string::npos);  // not finished yet
  CHECK(deferred.blocking(Req("POST", "/api/v1/namespaces/default/secrets")).status == 201);
  const std::string text = m.Render();
  INFO(text);
  CHECK(text.find("edgevirt_api_request_duration_seconds_count{verb=\"get\",resource=\"other\","
                  "code=\"404\"} 1\n") != std::string::npos);
  CHECK(text.find("edgevirt_api_request_duration_seconds_count{verb=\"create\",resource="
                  "\"secrets\",code=\"201\"} 1\n") != std::string::npos);
  CHECK(PromtoolProblems(text).empty());
}

}  // namespace
}  // namespace edgevirt::daemon::metrics
