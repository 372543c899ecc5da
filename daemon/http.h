// The daemon's HTTP handler: health endpoints, the Kubernetes API (api/machinery), KubeVirt's
// subresources (api/subresources), and Kubernetes' 404 for everything else.
#pragma once

#include "api/api.h"
#include "api/machinery/machinery.h"
#include "api/subresources/subresources.h"

namespace edgevirt::daemon {

namespace metrics {
class Metrics;
}

// The 404 a kube-apiserver sends for a path it does not serve:
// {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
//  "message":"the server could not find the requested resource","reason":"NotFound",
//  "details":{},"code":404}
api::HttpResponse NotFoundResponse();

// Answers /healthz, /livez and /readyz from `checks` (api::ServeHealth), then the
// subresources.kubevirt.io namespaced routes (when `subresources` is not null), then every path
// the API machinery serves (when `machinery` is not null), and everything else with
// NotFoundResponse(). GET /metrics is answered from `metrics` (when not null; rendered on a
// blocking thread: it asks libvirt). `machinery`, `subresources` and `metrics` must outlive the
// handler. Writes (every
// method but GET and HEAD) and every subresource request are deferred to the server's blocking
// threads: they wait for a durable commit or for libvirt. Thread-safe if the checks are.
api::Handler MakeApiHandler(api::HealthChecks checks,
                            const api::machinery::Machinery* machinery = nullptr,
                            api::subresources::Subresources* subresources = nullptr,
                            const metrics::Metrics* metrics = nullptr);

}  // namespace edgevirt::daemon
