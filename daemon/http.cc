#include "daemon/http.h"

#include <nlohmann/json.hpp>

namespace edgevirt::daemon {

api::HttpResponse NotFoundResponse() {
  // Field order as kube-apiserver writes it (nlohmann::ordered_json keeps insertion order).
  static const std::string body =
      nlohmann::ordered_json{
          {"kind", "Status"},
          {"apiVersion", "v1"},
          {"metadata", nlohmann::ordered_json::object()},
          {"status", "Failure"},
          {"message", "the server could not find the requested resource"},
          {"reason", "NotFound"},
          {"details", nlohmann::ordered_json::object()},
          {"code", 404},
      }
          .dump();
  return api::HttpResponse::Json(404, body);
}

api::Handler MakeApiHandler(api::HealthChecks checks) {
  return [checks = std::move(checks)](const api::HttpRequest& request) -> api::HttpResponse {
    if (auto health = api::ServeHealth(request, checks)) return std::move(*health);
    return NotFoundResponse();
  };
}

}  // namespace edgevirt::daemon
