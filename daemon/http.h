// The daemon's HTTP handler: health endpoints, the Kubernetes API (api/machinery), and
// Kubernetes' 404 for everything else.
#pragma once

#include "api/api.h"
#include "api/machinery/machinery.h"

namespace edgevirt::daemon {

// The 404 a kube-apiserver sends for a path it does not serve:
// {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
//  "message":"the server could not find the requested resource","reason":"NotFound",
//  "details":{},"code":404}
api::HttpResponse NotFoundResponse();

// Answers /healthz, /livez and /readyz from `checks` (api::ServeHealth), then every path the
// API machinery serves (when `machinery` is not null; it must outlive the handler), and
// everything else with NotFoundResponse(). Writes (every method but GET and HEAD) are deferred
// to the server's blocking threads, since they wait for a durable commit. Thread-safe if the
// checks are.
api::Handler MakeApiHandler(api::HealthChecks checks,
                            const api::machinery::Machinery* machinery = nullptr);

}  // namespace edgevirt::daemon
