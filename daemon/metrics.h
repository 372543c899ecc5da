// /metrics: the Prometheus text exposition format (version 0.0.4), rendered without a client
// library, and the daemon's collectors: KubeVirt's VMI metrics under KubeVirt v1.0's names,
// types and labels (from the store's VMIs and libvirt's domain statistics), and edgevirt's own
// (API request latency, reconcile queue depth, image pull bytes, build info). See README.md.
//
// Thread rules: Histogram and Counter are thread-safe (one mutex each); Exposition is a value
// built by one thread per scrape.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/api.h"
#include "common/result.h"
#include "vmm/vmm.h"

namespace edgevirt::daemon::metrics {

enum class Type { kCounter, kGauge, kHistogram, kUntyped };
using Labels = std::vector<std::pair<std::string, std::string>>;

// "Content-Type" of the text format.
inline constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// A label value with '\\', '"' and newline escaped (the format's three escapes).
std::string EscapeLabelValue(std::string_view value);
// HELP text with '\\' and newline escaped.
std::string EscapeHelp(std::string_view help);
// A sample value as the format writes it: integers (|v| < 2^53) without a fraction or
// exponent, others in the shortest form that reads back exactly, "+Inf", "-Inf", "NaN".
std::string FormatValue(double value);
// [a-zA-Z_:][a-zA-Z0-9_:]* ; label names: [a-zA-Z_][a-zA-Z0-9_]* and not starting with "__".
bool ValidMetricName(std::string_view name);
bool ValidLabelName(std::string_view name);

// One scrape's worth of samples, grouped by family: every family is written as one block
// (# HELP, # TYPE, then its samples in the order added; a family without samples is left
// out), families in the order declared, so
// collectors may add samples of several families interleaved (per VMI) and still produce a
// valid exposition.
class Exposition {
 public:
  // Declares a family; a second Declare of the same name is ignored. An invalid name is a
  // programming error: the family is dropped (and its samples with it).
  void Declare(std::string_view name, std::string_view help, Type type);
  // A sample of family `family` (declared before; else it is declared untyped with no help).
  // `suffix` is "" or, for histograms, "_bucket", "_sum" or "_count". Labels with an invalid
  // name are dropped.
  void Add(std::string_view family, const Labels& labels, double value,
           std::string_view suffix = "");
  std::string Text() const;

 private:
  struct Family {
    std::string help;
    Type type = Type::kUntyped;
    bool valid = true;
    std::string samples;
  };
  std::vector<std::string> order_;
  std::map<std::string, Family, std::less<>> families_;
};

// A histogram with fixed upper bounds (sorted ascending; +Inf is implicit), per label set.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(const Labels& labels, double value);
  // Adds _bucket (cumulative, with le), _sum and _count samples of every label set to `out`
  // under family `name` (which the caller declared as kHistogram).
  void Collect(Exposition& out, std::string_view name) const;

 private:
  struct Series {
    std::vector<uint64_t> counts;  // per bucket, not cumulative; the last one is +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::map<Labels, Series> series_;  // guarded by mu_
};

// Where the daemon's collectors read. Every source may be empty (then its metrics are left out).
struct Sources {
  std::string node;     // the node label (the host name, as VMIs' status.nodeName)
  std::string version;  // edgevirt_build_info
  // Every VirtualMachineInstance object, as clients see it.
  std::function<Result<std::vector<nlohmann::json>>()> vmis;
  // Statistics of the active domains (vmm::Hypervisor::AllDomainStats).
  std::function<Result<std::vector<vmm::DomainStats>>()> domain_stats;
  // Keys waiting in the controller's work queue.
  std::function<size_t()> queue_depth;
};

// The daemon's metrics: owns the API histogram and the pull byte counter, reads the rest from
// `sources` on each scrape.
class Metrics {
 public:
  explicit Metrics(Sources sources);

  // Feeds edgevirt_api_request_duration_seconds. `path_class` is RequestClass(request).
  void ObserveRequest(std::string_view verb, std::string_view resource, int code, double seconds);
  // Bytes downloaded from registries (edgevirt_image_pull_bytes_total); for the image puller.
  std::atomic<uint64_t>& pull_bytes() { return pull_bytes_; }

  // The whole exposition.
  std::string Render() const;

 private:
  void CollectVmis(Exposition& out) const;
  Sources sources_;
  Histogram api_latency_;
  std::atomic<uint64_t> pull_bytes_{0};
};

// Kubernetes' request verb of a request (get, list, watch, create, update, patch, delete,
// deletecollection, connect for subresources opened as streams), and a bounded resource class
// for the latency histogram's labels: the resource (plural, "/subresource" appended) for API
// paths, the path itself for /healthz, /livez, /readyz, /metrics, /version, /openapi/v2|v3,
// "discovery" for /api, /apis and group/version lists, "other" for everything else (so a
// client cannot grow the label set without bound).
std::pair<std::string, std::string> RequestClass(const api::HttpRequest& request);

// GET or HEAD /metrics: metrics.Render() as text/plain; version=0.0.4, on a blocking thread
// (the domain statistics wait for libvirt). Other methods: 405.
api::HttpResponse Serve(const api::HttpRequest& request, const Metrics& metrics);

// Wraps `handler`: every response (including deferred ones, measured until the deferred
// function returned; streams until their headers are handed back) is observed in `metrics`,
// measured from the call to the handler.
api::Handler WithMetrics(api::Handler handler, Metrics& metrics);

}  // namespace edgevirt::daemon::metrics
