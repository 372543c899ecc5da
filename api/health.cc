#include "api/health.h"

#include <exception>
#include <string_view>

#include "api/http_internal.h"

namespace edgevirt::api {
namespace {

bool Passes(const HealthCheck& c) {
  if (!c.check) return false;
  try {
    return c.check();
  } catch (...) {
    return false;
  }
}

// Every "exclude" parameter of the query, decoded.
std::vector<std::string> Excluded(std::string_view query) {
  std::vector<std::string> out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    constexpr std::string_view kKey = "exclude=";
    if (pair.substr(0, kKey.size()) != kKey) continue;
    auto name = internal::PercentDecode(pair.substr(kKey.size()), /*plus_as_space=*/true);
    if (name) out.push_back(std::move(*name));
  }
  return out;
}

HttpResponse PlainText(int status, std::string body) {
  HttpResponse r = HttpResponse::Text(status, std::move(body));
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  r.headers.emplace_back("Cache-Control", "no-cache, private");
  return r;
}

}  // namespace

HealthCheck HealthCheck::Flag(std::string name, const std::atomic<bool>& flag) {
  return HealthCheck{std::move(name), [&flag] { return flag.load(std::memory_order_acquire); }};
}

std::optional<HttpResponse> ServeHealth(const HttpRequest& request, const HealthChecks& checks) {
  std::string_view endpoint;
  bool readiness = false;
  if (request.path == "/healthz") {
    endpoint = "healthz";
  } else if (request.path == "/livez") {
    endpoint = "livez";
  } else if (request.path == "/readyz") {
    endpoint = "readyz";
    readiness = true;
  } else {
    return std::nullopt;
  }
  if (request.method != "GET" && request.method != "HEAD") {
    HttpResponse r = HttpResponse::StatusError(
        405, "MethodNotAllowed", request.method + " is not supported on " + request.path);
    r.headers.emplace_back("Allow", "GET, HEAD");
    return r;
  }

  const bool verbose = request.QueryParam("verbose").has_value();
  const std::vector<std::string> excluded = Excluded(request.query);
  auto is_excluded = [&](const std::string& name) {
    for (const auto& e : excluded) {
      if (e == name) return true;
    }
    return false;
  };

  std::string lines;
  bool healthy = true;
  auto run = [&](const HealthCheck& c) {
    if (is_excluded(c.name)) {
      lines += "[+]" + c.name + " excluded: ok\n";
      return;
    }
    if (Passes(c)) {
      lines += "[+]" + c.name + " ok\n";
    } else {
      healthy = false;
      // kube-apiserver withholds the reason too: probes are often unauthenticated.
      lines += "[-]" + c.name + " failed: reason withheld\n";
    }
  };
  run(HealthCheck{"ping", [] { return true; }});
  for (const auto& c : checks.live) run(c);
  if (readiness) {
    for (const auto& c : checks.ready) run(c);
  }

  const int status = healthy ? 200 : 503;
  if (verbose) {
    return PlainText(
        status, lines + std::string(endpoint) + (healthy ? " check passed\n" : " check failed\n"));
  }
  if (healthy) return PlainText(200, "ok");
  return PlainText(503, readiness ? "not ready" : "not live");
}

}  // namespace edgevirt::api
