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

api::Handler MakeApiHandler(api::HealthChecks checks, const api::machinery::Machinery* machinery) {
  return [checks = std::move(checks),
          machinery](const api::HttpRequest& request) -> api::HttpResponse {
    if (auto health = api::ServeHealth(request, checks)) return std::move(*health);
    if (machinery != nullptr && request.method != "GET" && request.method != "HEAD") {
      // A write returns once its store commit is durable: wait on a blocking thread, where
      // concurrent writes share one commit, not on an io thread.
      return api::HttpResponse::Deferred([machinery](const api::HttpRequest& req) {
        if (auto answer = machinery->Serve(req)) return std::move(*answer);
        return NotFoundResponse();
      });
    }
    if (machinery != nullptr) {
      if (auto answer = machinery->Serve(request)) return std::move(*answer);
    }
    return NotFoundResponse();
  };
}

}  // namespace edgevirt::daemon
