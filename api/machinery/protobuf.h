// Kubernetes protobuf request bodies (application/vnd.kubernetes.protobuf), decoded into the
// JSON form the rest of the machinery works on. kubectl sends protobuf for built-in kinds
// through its typed clients (`kubectl create secret ...`); only the kinds listed here are
// understood, everything else stays 415 as for custom resources.
#pragma once

#include <string_view>

#include "api/resource.h"
#include "common/result.h"

namespace edgevirt::api::machinery {

inline constexpr std::string_view kProtobufMediaType = "application/vnd.kubernetes.protobuf";

// Decodes the apiserver's protobuf envelope ("k8s\0" + runtime.Unknown{typeMeta, raw}) and the
// object inside it. Understood: core/v1 Secret (ObjectMeta name, generateName, namespace,
// labels, annotations, finalizers; data, stringData, type, immutable). kUnsupported for any other
// kind, kInvalid for malformed bytes.
Result<Json> ParseProtobufBody(std::string_view body);

}  // namespace edgevirt::api::machinery
