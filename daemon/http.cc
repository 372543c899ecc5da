#include "daemon/http.h"

#include <string_view>

#include <nlohmann/json.hpp>

#include "daemon/metrics.h"

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

namespace {

bool IsSubresourceRoute(std::string_view path) {
  for (std::string_view prefix : {"/apis/subresources.kubevirt.io/v1/namespaces/",
                                  "/apis/subresources.kubevirt.io/v1alpha3/namespaces/"}) {
    if (path.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

}  // namespace

api::Handler MakeApiHandler(api::HealthChecks checks, const api::machinery::Machinery* machinery,
                            api::subresources::Subresources* subresources,
                            const metrics::Metrics* metrics) {
  return [checks = std::move(checks), machinery, subresources,
          metrics](const api::HttpRequest& request) -> api::HttpResponse {
    if (auto health = api::ServeHealth(request, checks)) return std::move(*health);
    if (metrics != nullptr && request.path == "/metrics") return metrics::Serve(request, *metrics);
    if (subresources != nullptr && IsSubresourceRoute(request.path)) {
      // start/stop write to the store; pause, reset and the guest agent talk to libvirt.
      return api::HttpResponse::Deferred([machinery, subresources](const api::HttpRequest& req) {
        if (auto answer = subresources->Serve(req)) return std::move(*answer);
        if (machinery != nullptr) {
          if (auto answer = machinery->Serve(req)) return std::move(*answer);
        }
        return NotFoundResponse();
      });
    }
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
