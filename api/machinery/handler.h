// HTTP routing of the resource paths (/api/v1/..., /apis/<group>/<version>/...): query
// parameters, content negotiation (JSON, Table, PartialObjectMetadata), request bodies and
// Status errors, on top of Registry and WatchHub.
#pragma once

#include <optional>

#include "api/http_server.h"
#include "api/machinery/discovery.h"
#include "api/machinery/registry.h"
#include "api/machinery/watch.h"

namespace edgevirt::api::machinery {

class ApiHandler {
 public:
  ApiHandler(Registry& registry, const Discovery& discovery, WatchHub& watches);

  // Discovery/OpenAPI/version paths and every resource path of a served group-version (404
  // Status for unknown resources under /api and /apis). nullopt for other paths, and for
  // /apis/subresources.kubevirt.io/v1/namespaces/... (virt-api's subresources, routed
  // elsewhere).
  std::optional<HttpResponse> Serve(const HttpRequest& request) const;

 private:
  Registry& registry_;
  const Discovery& discovery_;
  WatchHub& watches_;
};

}  // namespace edgevirt::api::machinery
