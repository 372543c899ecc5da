// metav1.Table output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), as the CRD
// table convertor and the apiserver's response writer build it.
#pragma once

#include <string>
#include <vector>

#include "api/resource.h"
#include "common/clock.h"

namespace edgevirt::api::machinery {

struct TableOptions {
  std::string api_version = "meta.k8s.io/v1";  // or meta.k8s.io/v1beta1
  enum class Include { kNone, kMetadata, kObject };
  Include include = Include::kMetadata;  // `includeObject` query parameter
  bool no_headers = false;               // watch events after the first: columnDefinitions null
};

// The column definitions: Name, Age and the kind's columns (or only the kind's when
// !rt.default_columns).
Json ColumnDefinitions(const ResourceType& rt);
// The same, serialized in the apiserver's field order.
std::string ColumnDefinitionsJson(const ResourceType& rt);

// One row for a full object.
Json TableRow(const ResourceType& rt, const Json& object, const TableOptions& options,
              WallClock::time_point now);

// A whole Table (`metadata` carries resourceVersion/continue when non-empty).
std::string RenderTable(const ResourceType& rt, const std::vector<Json>& objects,
                        const std::string& resource_version, const std::string& continue_token,
                        const TableOptions& options, WallClock::time_point now);

}  // namespace edgevirt::api::machinery
