// The kubevirt.io/v1 schema model: KubeVirt v1.0.1's field structure (generated extract, compiled
// in), edgevirt's descriptions (compiled in), and which KubeVirt fields edgevirt implements.
// Provides the structural decoder (the CRD-schema step of the apiserver) and the OpenAPI v3
// component schemas. Private to api/kubevirt.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/resource.h"

namespace edgevirt::api::kubevirt {

using Json = nlohmann::json;

class SchemaModel {
 public:
  SchemaModel() = default;
  // The compiled tables point into `definitions_`.
  SchemaModel(const SchemaModel&) = delete;
  SchemaModel& operator=(const SchemaModel&) = delete;

  // A property of a definition as the decoder needs it, computed once by Load.
  struct Property {
    const Json* schema = nullptr;
    bool nullable = false;     // its "type" lists "null"
    bool implemented = false;  // Implemented(definition, property)
  };
  // A definition as the decoder needs it, computed once by Load.
  struct CompiledDefinition {
    const Json* definition = nullptr;
    bool has_properties = false;
    std::map<std::string, Property, std::less<>> properties;
    std::vector<std::string> required;
  };
  // The compiled form of Definition(name), or null.
  const CompiledDefinition* Compiled(std::string_view name) const;

  // Builds the model from the structure extract and the descriptions YAML. Returns null and sets
  // *error when either is malformed (a build-time mistake; tests catch it).
  static std::shared_ptr<const SchemaModel> Load(std::string_view structure_json,
                                                 std::string_view descriptions_yaml,
                                                 std::string* error);
  // The model from the compiled-in files; aborts on a malformed build.
  static std::shared_ptr<const SchemaModel> Embedded();

  // The definition named like the structure extract ("v1.Disk"), or null.
  const Json* Definition(std::string_view name) const;
  const Json& definitions() const { return definitions_; }

  // Whether edgevirt implements `property` of `definition` in object specs. Kubernetes metadata
  // types are always implemented. Status fields are accepted whether or not this is true.
  bool Implemented(std::string_view definition, std::string_view property) const;
  // "<definition>.<property>" for every implemented property of a KubeVirt or core type.
  const std::set<std::string>& implemented() const { return implemented_; }
  // Descriptions as written in descriptions.yaml: definition -> property ("" for the type).
  const std::map<std::string, std::map<std::string, std::string>>& descriptions() const {
    return descriptions_;
  }
  // Definitions reachable from VirtualMachine(List)/VirtualMachineInstance(List).
  const std::set<std::string>& published() const { return published_; }
  // Definitions reachable only through a status field.
  bool StatusOnly(std::string_view definition) const {
    return status_only_.count(std::string(definition)) != 0;
  }

  // The description published for a property or (property "") a type: ours when written,
  // otherwise a fixed sentence saying edgevirt does not implement or report it.
  std::string Description(std::string_view definition, std::string_view property) const;

  // OpenAPI v3 components.schemas for every published definition, keyed by OpenApiName().
  Json OpenApiSchemas() const;
  // "v1.Disk" -> "io.kubevirt.v1.Disk", "k8s.io.api.core.v1.X" -> "io.k8s.api.core.v1.X".
  static std::string OpenApiName(std::string_view definition);

 private:
  Json definitions_;
  std::set<std::string> implemented_;
  std::map<std::string, std::map<std::string, std::string>> descriptions_;
  std::set<std::string> published_;
  std::set<std::string> status_only_;
  std::map<std::string, CompiledDefinition, std::less<>> compiled_;
};

// What structural decoding found.
struct DecodeResult {
  std::vector<std::string> unknown_fields;  // "spec.template.spec.foo"
  std::vector<StatusCause> causes;          // CRD-style: type, required, enum, unsupported
};

struct DecodeOptions {
  // Decoding inside a status field: every KubeVirt field is accepted.
  bool status = false;
  // Rewrite quantities in canonical form, as KubeVirt's webhooks re-serialise specs.
  bool canonicalize_quantities = false;
};

// Checks `node` against `definition`, appending to *result. Unknown fields are removed from
// `node`; so are nulls of non-nullable fields (the apiserver drops those before validation).
// `path` is the JSON path of `node` ("" for the root).
void Decode(const SchemaModel& model, std::string_view definition, Json& node,
            const std::string& path, const DecodeOptions& options, DecodeResult* result);

}  // namespace edgevirt::api::kubevirt
