#include "api/kubevirt/yaml_json.h"

#include <regex>

#include <yaml-cpp/yaml.h>

namespace edgevirt::api::kubevirt {
namespace {

nlohmann::json Convert(const YAML::Node& node, int depth) {
  if (depth > 200) throw YAML::Exception(YAML::Mark::null_mark(), "nesting too deep");
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(Convert(item, depth + 1));
      return out;
    }
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& item : node) {
        out[item.first.as<std::string>()] = Convert(item.second, depth + 1);
      }
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() == "!") return s;  // quoted
      static const std::regex int_re("^[-+]?[0-9]+$");
      static const std::regex float_re("^[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?$");
      if (s == "null" || s == "Null" || s == "NULL" || s == "~" || s.empty()) return nullptr;
      if (s == "true" || s == "True" || s == "TRUE") return true;
      if (s == "false" || s == "False" || s == "FALSE") return false;
      if (s.size() < 19 && std::regex_match(s, int_re)) return std::stoll(s);
      if (s.size() < 64 && std::regex_match(s, float_re)) {
        nlohmann::json v = nlohmann::json::parse(s[0] == '.' ? "0" + s : s, nullptr, false);
        if (!v.is_discarded()) return v;
      }
      return s;
    }
  }
  return nullptr;
}

}  // namespace

std::optional<nlohmann::json> YamlToJson(std::string_view text, std::string* error) {
  try {
    return Convert(YAML::Load(std::string(text)), 0);
  } catch (const std::exception& e) {
    if (error != nullptr) *error = e.what();
    return std::nullopt;
  }
}

}  // namespace edgevirt::api::kubevirt
