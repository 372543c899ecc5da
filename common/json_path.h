// Read-only lookups into nlohmann::json objects by a path of keys, for code that inspects
// decoded API objects without a typed model (admission, the controller, the network planner).
// A missing key, or a non-object on the way, is "absent": nullptr / "" / an empty vector.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace edgevirt::jsonpath {

// The value at `path` below `j` (j itself for an empty path), or nullptr.
inline const nlohmann::json* At(const nlohmann::json& j, std::initializer_list<const char*> path) {
  const nlohmann::json* cur = &j;
  for (const char* key : path) {
    if (!cur->is_object()) return nullptr;
    auto it = cur->find(key);
    if (it == cur->end()) return nullptr;
    cur = &*it;
  }
  return cur;
}

// The string at `path`, or "" when absent or not a string.
inline std::string Str(const nlohmann::json& j, std::initializer_list<const char*> path) {
  const nlohmann::json* v = At(j, path);
  return v != nullptr && v->is_string() ? v->get<std::string>() : std::string();
}

// The elements of a JSON array as strings (non-strings become ""), or {} when `v` is not an array.
inline std::vector<std::string> Strings(const nlohmann::json* v) {
  std::vector<std::string> out;
  if (v == nullptr || !v->is_array()) return out;
  for (const nlohmann::json& e : *v) out.push_back(e.is_string() ? e.get<std::string>() : "");
  return out;
}

}  // namespace edgevirt::jsonpath
