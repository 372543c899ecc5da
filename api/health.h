// /healthz, /livez and /readyz as kube-apiserver serves them, for systemd, load balancers and
// `kubectl get --raw /readyz?verbose`.
#pragma once

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "api/http_server.h"

namespace edgevirt::api {

struct HealthCheck {
  std::string name;  // shown by ?verbose as "[+]store ok" / "[-]store failed: reason withheld"
  // True when healthy. Called on an io thread for every probe: must be cheap and never block.
  // An exception counts as a failure.
  std::function<bool()> check;

  // A check that reads `flag` (which must outlive every server using the check).
  static HealthCheck Flag(std::string name, const std::atomic<bool>& flag);
};

struct HealthChecks {
  std::vector<HealthCheck> live;   // /livez and /healthz: the process works
  std::vector<HealthCheck> ready;  // /readyz: the live checks plus these (e.g. "startup done")
};

// Answers GET/HEAD /healthz, /livez and /readyz; nullopt for every other path, which is the
// caller's to route. All pass: 200 "ok". Any fails: 503 "not ready" (/readyz) or "not live"
// (/livez, /healthz). With `?verbose` the body lists every check and ends with
// "readyz check passed" (or "... failed"), as kube-apiserver does; `?exclude=NAME` (repeatable)
// skips a check. Every endpoint includes the always-passing "ping" check. Other methods: 405.
std::optional<HttpResponse> ServeHealth(const HttpRequest& request, const HealthChecks& checks);

}  // namespace edgevirt::api
