// Discovery (/api, /apis, /apis/<g>[/<v>]), version endpoints and OpenAPI v3 documents, built
// once from the served group-versions and answered from memory.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api/http_server.h"
#include "api/resource.h"

namespace edgevirt::api::machinery {

struct DiscoveryOptions {
  // gitVersion of GET /apis/subresources.kubevirt.io/v1/version (virtctl compares its
  // major.minor with its own). Must be semver.
  std::string kubevirt_version = "v1.0.0";
  // Served as /apis/subresources.kubevirt.io (virtctl's version check and subresource routes).
  bool subresources_group = true;
  // The entries of /apis/subresources.kubevirt.io/v1 (KubeVirt v1.0's virt-api list; names
  // only, namespaced, no kind or verbs, as KubeVirt lists them).
  std::vector<std::string> subresources = {"virtualmachineinstances/vnc",
                                           "virtualmachineinstances/vnc/screenshot",
                                           "virtualmachineinstances/console",
                                           "virtualmachineinstances/portforward",
                                           "virtualmachineinstances/pause",
                                           "virtualmachineinstances/unpause",
                                           "virtualmachineinstances/freeze",
                                           "virtualmachineinstances/unfreeze",
                                           "virtualmachineinstances/softreboot",
                                           "virtualmachines/start",
                                           "virtualmachines/stop",
                                           "virtualmachines/restart",
                                           "virtualmachines/migrate",
                                           "virtualmachines/expand-spec",
                                           "virtualmachineinstances/guestosinfo",
                                           "virtualmachineinstances/userlist",
                                           "virtualmachineinstances/filesystemlist",
                                           "virtualmachineinstances/addvolume",
                                           "virtualmachineinstances/removevolume",
                                           "virtualmachines/addvolume",
                                           "virtualmachines/removevolume",
                                           "virtualmachines/portforward"};
  // The Kubernetes version GET /version reports (kubectl prints it; virtctl v1.0 `expose`
  // reads major/minor).
  std::string kubernetes_major = "1";
  std::string kubernetes_minor = "32";
  std::string kubernetes_git_version = "v1.32.0";
  std::string build_date;  // RFC 3339; empty = unknown
};

inline constexpr char kSubresourcesGroup[] = "subresources.kubevirt.io";

class Discovery {
 public:
  Discovery(const std::vector<ApiGroupVersion>& groups, DiscoveryOptions options);

  // Answers the discovery, version and OpenAPI paths; nullopt for every other path.
  std::optional<HttpResponse> Serve(const HttpRequest& request) const;

  // The OpenAPI v3 document of "apis/kubevirt.io/v1" or "api/v1" (empty if not served).
  const std::string& OpenApiDocument(const std::string& gv_path) const;

 private:
  std::map<std::string, std::string> documents_;  // path -> JSON body
  std::map<std::string, std::string> openapi_;    // "apis/kubevirt.io/v1" -> JSON
  std::string openapi_index_;
};

}  // namespace edgevirt::api::machinery
