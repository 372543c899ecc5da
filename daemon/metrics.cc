#include "daemon/metrics.h"

#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <set>

#include "common/json_path.h"

namespace edgevirt::daemon::metrics {

using jsonpath::Str;

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    return std::to_string(static_cast<int64_t>(value));
  }
  char buf[64];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, value);
  return std::string(buf, ec == std::errc() ? ptr : buf);
}

namespace {
bool NameChar(char c, bool first, bool colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (colon && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}
}  // namespace

bool ValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!NameChar(name[i], i == 0, true)) return false;
  }
  return true;
}

bool ValidLabelName(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!NameChar(name[i], i == 0, false)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------

void Exposition::Declare(std::string_view name, std::string_view help, Type type) {
  if (families_.find(name) != families_.end()) return;
  Family f;
  f.help = help;
  f.type = type;
  f.valid = ValidMetricName(name);
  families_.emplace(std::string(name), std::move(f));
  order_.emplace_back(name);
}

void Exposition::Add(std::string_view family, const Labels& labels, double value,
                     std::string_view suffix) {
  auto it = families_.find(family);
  if (it == families_.end()) {
    Declare(family, "", Type::kUntyped);
    it = families_.find(family);
  }
  Family& f = it->second;
  if (!f.valid) return;
  std::string& s = f.samples;
  s += family;
  s += suffix;
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!ValidLabelName(k)) continue;
    s += first ? '{' : ',';
    first = false;
    s += k;
    s += "=\"";
    s += EscapeLabelValue(v);
    s += '"';
  }
  if (!first) s += '}';
  s += ' ';
  s += FormatValue(value);
  s += '\n';
}

std::string Exposition::Text() const {
  std::string out;
  for (const auto& name : order_) {
    const Family& f = families_.find(name)->second;
    // A family without samples (no VMI reports it) is left out, as client libraries do.
    if (!f.valid || f.samples.empty()) continue;
    if (!f.help.empty()) out += "# HELP " + name + " " + EscapeHelp(f.help) + "\n";
    out += "# TYPE " + name + " ";
    switch (f.type) {
      case Type::kCounter:
        out += "counter\n";
        break;
      case Type::kGauge:
        out += "gauge\n";
        break;
      case Type::kHistogram:
        out += "histogram\n";
        break;
      case Type::kUntyped:
        out += "untyped\n";
        break;
    }
    out += f.samples;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)) {}

void Histogram::Observe(const Labels& labels, double value) {
  // The first bucket whose upper bound is >= value (le is inclusive); NaN counts only in +Inf.
  size_t bucket = bounds_.size();
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (value <= bounds_[i]) {
      bucket = i;
      break;
    }
  }
  std::lock_guard lock(mu_);
  Series& s = series_[labels];
  if (s.counts.empty()) s.counts.assign(bounds_.size() + 1, 0);
  ++s.counts[bucket];
  s.sum += value;
  ++s.count;
}

void Histogram::Collect(Exposition& out, std::string_view name) const {
  std::lock_guard lock(mu_);
  for (const auto& [labels, s] : series_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= bounds_.size(); ++i) {
      cumulative += s.counts[i];
      Labels with_le = labels;
      with_le.emplace_back("le", i < bounds_.size() ? FormatValue(bounds_[i]) : "+Inf");
      out.Add(name, with_le, double(cumulative), "_bucket");
    }
    out.Add(name, labels, s.sum, "_sum");
    out.Add(name, labels, double(s.count), "_count");
  }
}

// ---------------------------------------------------------------------------------------------

namespace {

// Kubernetes' apiserver_request_duration_seconds buckets, up to 60 s.
std::vector<double> ApiBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0,
          1.25,  1.5,  2,     3,    4,   5,   10,  30,  60};
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

Metrics::Metrics(Sources sources) : sources_(std::move(sources)), api_latency_(ApiBuckets()) {}

void Metrics::ObserveRequest(std::string_view verb, std::string_view resource, int code,
                             double seconds) {
  api_latency_.Observe({{"verb", std::string(verb)},
                        {"resource", std::string(resource)},
                        {"code", std::to_string(code)}},
                       seconds);
}

std::string Metrics::Render() const {
  Exposition out;
  out.Declare("edgevirt_build_info",
              "A metric with a constant '1' value labeled by the edgevirtd version.", Type::kGauge);
  out.Add("edgevirt_build_info", {{"version", sources_.version}}, 1);
  out.Declare("edgevirt_api_request_duration_seconds",
              "Latency of API requests in seconds, by verb, resource (or path class) and HTTP "
              "status code. Streams (watch, console) are measured until their headers.",
              Type::kHistogram);
  api_latency_.Collect(out, "edgevirt_api_request_duration_seconds");
  if (sources_.queue_depth) {
    out.Declare("edgevirt_reconcile_queue_depth",
                "Keys waiting in the controller's reconcile work queue.", Type::kGauge);
    out.Add("edgevirt_reconcile_queue_depth", {}, double(sources_.queue_depth()));
  }
  out.Declare("edgevirt_image_pull_bytes_total",
              "Bytes of containerDisk image layers downloaded from registries.", Type::kCounter);
  out.Add("edgevirt_image_pull_bytes_total", {}, double(pull_bytes_.load()));
  CollectVmis(out);
  return out.Text();
}

void Metrics::CollectVmis(Exposition& out) const {
  if (!sources_.vmis) return;
  auto vmis = sources_.vmis();
  out.Declare("edgevirt_metrics_source_up",
              "1 when this scrape could read the source (vmis: the store, domain_stats: "
              "libvirt), else 0 (and its metrics are missing).",
              Type::kGauge);
  out.Add("edgevirt_metrics_source_up", {{"source", "vmis"}}, vmis ? 1 : 0);
  if (!vmis) return;

  // kubevirt_vmi_phase_count (virt-controller's pkg/monitoring/vmistats in v1.0): VMIs per node
  // and phase, the phase lower-cased as it is (an unset phase is ""), "<none>" for an absent
  // annotation. instance_type/preference: KubeVirt names only instance types whose object carries
  // a whitelisted vendor label (kubevirt.io, redhat.com) and reports "<other>" for the rest;
  // edgevirt serves no instancetype objects, so a VMI that names one reports "<other>".
  std::map<Labels, double> phases;
  for (const auto& vmi : *vmis) {
    const std::string phase = Lower(Str(vmi, {"status", "phase"}));
    const std::string node = Str(vmi, {"status", "nodeName"});
    const auto& ann = vmi["metadata"].value("annotations", nlohmann::json::object());
    auto annotation = [&](const char* key) {
      auto it = ann.find(key);
      return it != ann.end() && it->is_string() ? it->get<std::string>() : std::string("<none>");
    };
    auto named = [&](const char* key, const char* cluster_key) {
      return ann.contains(key) || ann.contains(cluster_key) ? std::string("<other>")
                                                            : std::string("<none>");
    };
    phases[{{"node", node},
            {"phase", phase},
            {"os", annotation("vm.kubevirt.io/os")},
            {"workload", annotation("vm.kubevirt.io/workload")},
            {"flavor", annotation("vm.kubevirt.io/flavor")},
            {"instance_type",
             named("kubevirt.io/instancetype-name", "kubevirt.io/cluster-instancetype-name")},
            {"preference",
             named("kubevirt.io/preference-name", "kubevirt.io/cluster-preference-name")}}] += 1;
  }
  out.Declare("kubevirt_vmi_phase_count", "Sum of VMIs per phase and node.", Type::kGauge);
  for (const auto& [labels, n] : phases) out.Add("kubevirt_vmi_phase_count", labels, n);

  if (!sources_.domain_stats) return;
  auto stats = sources_.domain_stats();
  out.Add("edgevirt_metrics_source_up", {{"source", "domain_stats"}}, stats ? 1 : 0);
  if (!stats) return;
  std::map<std::string, const vmm::DomainStats*> by_domain;
  for (const auto& s : *stats) by_domain[s.name] = &s;

  // KubeVirt v1.0's virt-handler domain stats: names, types, help and units as it exposes
  // them (memory in bytes from libvirt's KiB, times in seconds or ms as KubeVirt converts).
  const Type C = Type::kCounter, G = Type::kGauge;
  out.Declare("kubevirt_vmi_memory_resident_bytes",
              "Resident set size of the process running the domain.", G);
  out.Declare("kubevirt_vmi_memory_available_bytes",
              "Amount of usable memory as seen by the domain. This value may not be accurate if "
              "a balloon driver is in use or if the guest OS does not initialize all assigned "
              "pages",
              G);
  out.Declare("kubevirt_vmi_memory_unused_bytes",
              "The amount of memory left completely unused by the system.", G);
  out.Declare("kubevirt_vmi_memory_cached_bytes",
              "The amount of memory that is being used to cache I/O and is available to be "
              "reclaimed.",
              G);
  out.Declare("kubevirt_vmi_memory_usable_bytes",
              "The amount of memory which can be reclaimed by balloon without pushing the guest "
              "system to swap.",
              G);
  out.Declare("kubevirt_vmi_memory_actual_balloon_bytes", "Current balloon size in bytes.", G);
  out.Declare("kubevirt_vmi_memory_domain_bytes_total",
              "The amount of memory in bytes allocated to the domain. The `memory` value in "
              "domain xml file.",
              G);
  out.Declare("kubevirt_vmi_memory_swap_in_traffic_bytes_total",
              "The total amount of data read from swap space of the guest in bytes.", G);
  out.Declare("kubevirt_vmi_memory_swap_out_traffic_bytes_total",
              "The total amount of memory written out to swap space of the guest in bytes.", G);
  out.Declare("kubevirt_vmi_memory_pgmajfault",
              "The number of page faults when disk IO was required.", C);
  out.Declare("kubevirt_vmi_memory_pgminfault",
              "The number of other page faults, when disk IO was not required.", C);
  out.Declare("kubevirt_vmi_cpu_usage_seconds",
              "Total CPU time spent in all modes (sum of both vcpu and hypervisor usage).", G);
  out.Declare("kubevirt_vmi_cpu_user_usage_seconds", "Total CPU time spent in user mode.", G);
  out.Declare("kubevirt_vmi_cpu_system_usage_seconds", "Total CPU time spent in system mode.", G);
  out.Declare("kubevirt_vmi_vcpu_seconds",
              "Total amount of time spent in each state by each vcpu (cpu_time excluding "
              "hypervisor time). Where `id` is the vcpu identifier and `state` can be one of the "
              "following: [`OFFLINE`, `RUNNING`, `BLOCKED`].",
              C);
  out.Declare("kubevirt_vmi_vcpu_seconds_total",
              "The same as kubevirt_vmi_vcpu_seconds, under the name KubeVirt uses from v1.1 on.",
              C);
  out.Declare("kubevirt_vmi_vcpu_wait_seconds",
              "Amount of time spent by each vcpu while waiting on I/O.", C);
  out.Declare("kubevirt_vmi_network_receive_bytes_total",
              "Total network traffic received in bytes.", C);
  out.Declare("kubevirt_vmi_network_transmit_bytes_total",
              "Total network traffic transmitted in bytes.", C);
  out.Declare("kubevirt_vmi_network_receive_packets_total",
              "Total network traffic received packets.", C);
  out.Declare("kubevirt_vmi_network_transmit_packets_total",
              "Total network traffic transmitted packets.", C);
  out.Declare("kubevirt_vmi_network_receive_errors_total", "Total network received error packets.",
              C);
  out.Declare("kubevirt_vmi_network_transmit_errors_total",
              "Total network transmitted error packets.", C);
  out.Declare("kubevirt_vmi_network_receive_packets_dropped_total",
              "The total number of rx packets dropped on vNIC interfaces.", C);
  out.Declare("kubevirt_vmi_network_transmit_packets_dropped_total",
              "The total number of tx packets dropped on vNIC interfaces.", C);
  out.Declare("kubevirt_vmi_storage_iops_read_total", "Total number of I/O read operations.", C);
  out.Declare("kubevirt_vmi_storage_iops_write_total", "Total number of I/O write operations.", C);
  out.Declare("kubevirt_vmi_storage_read_traffic_bytes_total",
              "Total number of bytes read from storage.", C);
  out.Declare("kubevirt_vmi_storage_write_traffic_bytes_total", "Total number of written bytes.",
              C);
  out.Declare("kubevirt_vmi_storage_read_times_ms_total",
              "Total time (ms) spent on read operations.", C);
  out.Declare("kubevirt_vmi_storage_write_times_ms_total",
              "Total time (ms) spent on write operations.", C);
  out.Declare("kubevirt_vmi_storage_flush_requests_total", "Total storage flush requests.", C);
  out.Declare("kubevirt_vmi_storage_flush_times_ms_total",
              "Total time (ms) spent on cache flushing.", C);

  for (const auto& vmi : *vmis) {
    const std::string ns = Str(vmi, {"metadata", "namespace"});
    const std::string name = Str(vmi, {"metadata", "name"});
    auto it = by_domain.find(ns + "_" + name);
    if (it == by_domain.end()) continue;  // not running here: no domain figures
    const vmm::DomainStats& s = *it->second;
    const Labels base = {
        {"node", Str(vmi, {"status", "nodeName"})}, {"namespace", ns}, {"name", name}};
    auto with = [&base](std::initializer_list<std::pair<std::string, std::string>> extra) {
      Labels l = base;
      l.insert(l.end(), extra.begin(), extra.end());
      return l;
    };
    auto kib = [&](const char* family, const std::optional<uint64_t>& v) {
      if (v) out.Add(family, base, double(*v) * 1024);
    };
    auto plain = [&](const char* family, const std::optional<uint64_t>& v) {
      if (v) out.Add(family, base, double(*v));
    };
    kib("kubevirt_vmi_memory_resident_bytes", s.balloon_rss_kib);
    kib("kubevirt_vmi_memory_available_bytes", s.balloon_available_kib);
    kib("kubevirt_vmi_memory_unused_bytes", s.balloon_unused_kib);
    kib("kubevirt_vmi_memory_cached_bytes", s.balloon_disk_caches_kib);
    kib("kubevirt_vmi_memory_usable_bytes", s.balloon_usable_kib);
    kib("kubevirt_vmi_memory_actual_balloon_bytes", s.balloon_current_kib);
    kib("kubevirt_vmi_memory_domain_bytes_total", s.balloon_maximum_kib);
    kib("kubevirt_vmi_memory_swap_in_traffic_bytes_total", s.balloon_swap_in_kib);
    kib("kubevirt_vmi_memory_swap_out_traffic_bytes_total", s.balloon_swap_out_kib);
    plain("kubevirt_vmi_memory_pgmajfault", s.balloon_major_fault);
    plain("kubevirt_vmi_memory_pgminfault", s.balloon_minor_fault);
    // KubeVirt v1.0 truncates CPU times to whole seconds; so does this, to match dashboards.
    auto seconds = [](uint64_t ns_value) { return double(ns_value / 1'000'000'000); };
    if (s.cpu_time_ns) out.Add("kubevirt_vmi_cpu_usage_seconds", base, seconds(*s.cpu_time_ns));
    if (s.cpu_user_ns) {
      out.Add("kubevirt_vmi_cpu_user_usage_seconds", base, seconds(*s.cpu_user_ns));
    }
    if (s.cpu_system_ns) {
      out.Add("kubevirt_vmi_cpu_system_usage_seconds", base, seconds(*s.cpu_system_ns));
    }
    for (const auto& v : s.vcpus) {
      const std::string id = std::to_string(v.id);
      if (v.time_ns) {
        const char* state = v.state == vmm::VcpuState::kOffline   ? "offline"
                            : v.state == vmm::VcpuState::kRunning ? "running"
                            : v.state == vmm::VcpuState::kBlocked ? "blocked"
                                                                  : "unknown";
        // Fractional seconds: a TCG guest's first seconds would otherwise read 0.
        const double secs = double(*v.time_ns) / 1e9;
        out.Add("kubevirt_vmi_vcpu_seconds", with({{"id", id}, {"state", state}}), secs);
        out.Add("kubevirt_vmi_vcpu_seconds_total", with({{"id", id}, {"state", state}}), secs);
      }
      if (v.wait_ns) {
        out.Add("kubevirt_vmi_vcpu_wait_seconds", with({{"id", id}}), double(*v.wait_ns) / 1e9);
      }
    }
    for (const auto& n : s.nets) {
      const Labels l = with({{"interface", n.alias.empty() ? n.device : n.alias}});
      auto add = [&](const char* family, const std::optional<uint64_t>& v) {
        if (v) out.Add(family, l, double(*v));
      };
      add("kubevirt_vmi_network_receive_bytes_total", n.rx_bytes);
      add("kubevirt_vmi_network_transmit_bytes_total", n.tx_bytes);
      add("kubevirt_vmi_network_receive_packets_total", n.rx_pkts);
      add("kubevirt_vmi_network_transmit_packets_total", n.tx_pkts);
      add("kubevirt_vmi_network_receive_errors_total", n.rx_errs);
      add("kubevirt_vmi_network_transmit_errors_total", n.tx_errs);
      add("kubevirt_vmi_network_receive_packets_dropped_total", n.rx_drop);
      add("kubevirt_vmi_network_transmit_packets_dropped_total", n.tx_drop);
    }
    for (const auto& b : s.blocks) {
      const Labels l = with({{"drive", b.alias.empty() ? b.target : b.alias}});
      auto add = [&](const char* family, const std::optional<uint64_t>& v, double scale) {
        if (v) out.Add(family, l, double(*v) / scale);
      };
      add("kubevirt_vmi_storage_iops_read_total", b.rd_reqs, 1);
      add("kubevirt_vmi_storage_iops_write_total", b.wr_reqs, 1);
      add("kubevirt_vmi_storage_read_traffic_bytes_total", b.rd_bytes, 1);
      add("kubevirt_vmi_storage_write_traffic_bytes_total", b.wr_bytes, 1);
      add("kubevirt_vmi_storage_read_times_ms_total", b.rd_times_ns, 1e6);
      add("kubevirt_vmi_storage_write_times_ms_total", b.wr_times_ns, 1e6);
      add("kubevirt_vmi_storage_flush_requests_total", b.fl_reqs, 1);
      add("kubevirt_vmi_storage_flush_times_ms_total", b.fl_times_ns, 1e6);
    }
  }
}

// ---------------------------------------------------------------------------------------------

std::pair<std::string, std::string> RequestClass(const api::HttpRequest& request) {
  const std::string& path = request.path;
  const std::string& m = request.method;
  // Path segments.
  std::vector<std::string_view> seg;
  std::string_view rest = path;
  while (!rest.empty()) {
    if (rest.front() == '/') {
      rest.remove_prefix(1);
      continue;
    }
    const size_t slash = rest.find('/');
    seg.push_back(rest.substr(0, slash));
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash);
  }
  static const std::set<std::string, std::less<>> kFixed = {
      "/healthz", "/livez", "/readyz", "/metrics", "/version", "/openapi/v2", "/openapi/v3"};
  std::string resource = "other";
  bool named = false;
  bool subresource_stream = false;
  if (kFixed.count(path)) {
    resource = path;
  } else if (path.starts_with("/openapi/")) {
    resource = "/openapi/v3";
  } else if (!seg.empty() && (seg[0] == "api" || seg[0] == "apis")) {
    // /api/v1/..., /apis/<group>/<version>/...
    const size_t base = seg[0] == "api" ? 2 : 3;
    if (seg.size() <= base) {
      resource = "discovery";
    } else {
      size_t i = base;
      if (seg[i] == "namespaces" && seg.size() > i + 2) i += 2;  // namespaced resource
      resource = std::string(seg[i]);
      named = seg.size() > i + 1;
      if (seg.size() > i + 2) {
        resource += "/" + std::string(seg[i + 2]);
        subresource_stream = seg[i + 2] == "console" || seg[i + 2] == "vnc" ||
                             seg[i + 2] == "portforward" || seg[i + 2] == "exec";
      }
      if (resource.size() > 64) resource = "other";
      for (char c : resource) {
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '.' || c == '-')) {
          resource = "other";
          break;
        }
      }
    }
  }
  std::string verb;
  const auto watch = request.QueryParam("watch");
  if (m == "GET" || m == "HEAD") {
    if (subresource_stream || api::IsWebSocketUpgrade(request)) {
      verb = "connect";
    } else if (watch && (*watch == "true" || *watch == "1")) {
      verb = "watch";
    } else {
      verb = named || resource.starts_with("/") ? "get" : "list";
      if (resource == "discovery" || resource == "other") verb = "get";
    }
  } else if (m == "POST") {
    verb = "create";
  } else if (m == "PUT") {
    verb = "update";
  } else if (m == "PATCH") {
    verb = "patch";
  } else if (m == "DELETE") {
    verb = named ? "delete" : "deletecollection";
  } else {
    verb = "other";
  }
  return {verb, resource};
}

namespace {
double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

api::HttpResponse Serve(const api::HttpRequest& request, const Metrics& metrics) {
  if (request.method != "GET" && request.method != "HEAD") {
    api::HttpResponse r = api::HttpResponse::StatusError(
        405, "MethodNotAllowed", "the server does not allow this method on /metrics");
    r.headers.emplace_back("Allow", "GET, HEAD");
    return r;
  }
  return api::HttpResponse::Deferred([&metrics](const api::HttpRequest&) {
    api::HttpResponse r;
    r.status = 200;
    r.headers.emplace_back("Content-Type", kContentType);
    r.body = metrics.Render();
    return r;
  });
}

api::Handler WithMetrics(api::Handler handler, Metrics& metrics) {
  return [handler = std::move(handler), &metrics](const api::HttpRequest& request) {
    const auto start = std::chrono::steady_clock::now();
    api::HttpResponse response = handler(request);
    auto [verb, resource] = RequestClass(request);
    if (response.blocking) {
      response.blocking = [inner = std::move(response.blocking), &metrics, start,
                           verb = std::move(verb),
                           resource = std::move(resource)](const api::HttpRequest& req) {
        api::HttpResponse r = inner(req);
        metrics.ObserveRequest(verb, resource, r.websocket ? 101 : r.status, SecondsSince(start));
        return r;
      };
      return response;
    }
    metrics.ObserveRequest(verb, resource, response.websocket ? 101 : response.status,
                           SecondsSince(start));
    return response;
  };
}

}  // namespace edgevirt::daemon::metrics
