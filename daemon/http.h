// The daemon's HTTP handler: health endpoints, and Kubernetes' 404 for everything else until
// the API machinery serves more.
#pragma once

#include "api/api.h"

namespace edgevirt::daemon {

// The 404 a kube-apiserver sends for a path it does not serve:
// {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
//  "message":"the server could not find the requested resource","reason":"NotFound",
//  "details":{},"code":404}
api::HttpResponse NotFoundResponse();

// Answers /healthz, /livez and /readyz from `checks` (api::ServeHealth) and everything else with
// NotFoundResponse(). Thread-safe if the checks are.
api::Handler MakeApiHandler(api::HealthChecks checks);

}  // namespace edgevirt::daemon
