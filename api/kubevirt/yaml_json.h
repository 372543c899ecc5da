// YAML manifest to JSON, as kubectl-style YAML bodies are read (plain scalars typed as YAML 1.2
// core: null, booleans, integers, floats; quoted scalars stay strings). Used by the tests and the
// fuzz target to feed manifests to admit; the API server's own YAML body decoding belongs to
// api/machinery.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace edgevirt::api::kubevirt {

// Parses one YAML document; nullopt (and *error) on malformed input. Never throws.
std::optional<nlohmann::json> YamlToJson(std::string_view text, std::string* error);

}  // namespace edgevirt::api::kubevirt
