#include "api/machinery/go_decode.h"

#include <cctype>
#include <cstdint>
#include <limits>

#include "common/quantity.h"

namespace edgevirt::api::machinery {
namespace {

constexpr char kQuantityFormatError[] =
    "quantities must match the regular expression "
    "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

// The Value of encoding/json's UnmarshalTypeError for a JSON value of the wrong kind.
std::string JsonTypeName(const Json& j) {
  if (j.is_object()) return "object";
  if (j.is_array()) return "array";
  if (j.is_string()) return "string";
  if (j.is_number()) return "number";
  if (j.is_boolean()) return "bool";
  return "null";
}

bool FitsInt(const Json& v, int64_t min, int64_t max) {
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(max);
  if (v.is_number_integer()) return v.get<int64_t>() >= min && v.get<int64_t>() <= max;
  return false;
}

// A number that does not convert (a fraction, out of range) is reported with its literal.
std::string IntErrorValue(const Json& v) {
  return v.is_number() ? "number " + v.dump() : JsonTypeName(v);
}

// The element type of a slice or map type name: "[]v1.X" → "v1.X", "map[a]b" → "b".
std::string ElementType(std::string_view go_type) {
  if (go_type.rfind("[]", 0) == 0) return std::string(go_type.substr(2));
  if (go_type.rfind("map[", 0) == 0) return std::string(go_type.substr(go_type.find(']') + 1));
  if (go_type == "v1.ResourceList") return "resource.Quantity";
  return std::string(go_type);
}

}  // namespace

void GoDecoder::Struct(Json& node, const GoShape& shape, const std::string& path,
                       const std::string& go_path) {
  for (auto it = node.begin(); it != node.end() && error_.empty();) {
    const GoField* f = nullptr;
    for (const auto& candidate : shape.fields) {
      if (it.key() == candidate.name) f = &candidate;
    }
    if (f == nullptr) {
      unknown_->push_back(path + it.key());
      it = node.erase(it);
      continue;
    }
    if (it->is_null()) {
      it = node.erase(it);
      continue;
    }
    const std::string go_field = go_path.empty() ? it.key() : go_path + "." + it.key();
    Value(*it, *f, shape, path + it.key(), go_field);
    ++it;
  }
}

void GoDecoder::Mistyped(const std::string& value, const GoShape& shape,
                         const std::string& go_field, const std::string& go_type) {
  if (!error_.empty()) return;
  error_ = "json: cannot unmarshal " + value + " into Go struct field " + shape.go_name + "." +
           go_field + " of type " + go_type;
}

void GoDecoder::Value(Json& v, const GoField& f, const GoShape& shape, const std::string& path,
                      const std::string& go_field) {
  constexpr int64_t kMin32 = std::numeric_limits<int32_t>::min();
  constexpr int64_t kMax32 = std::numeric_limits<int32_t>::max();
  switch (f.type) {
    case GoType::kOpaque:
      return;
    case GoType::kString:
      if (!v.is_string()) Mistyped(JsonTypeName(v), shape, go_field, f.go_type);
      return;
    case GoType::kBool:
      if (!v.is_boolean()) Mistyped(JsonTypeName(v), shape, go_field, f.go_type);
      return;
    case GoType::kInt32:
      if (!FitsInt(v, kMin32, kMax32)) Mistyped(IntErrorValue(v), shape, go_field, f.go_type);
      return;
    case GoType::kInt64:
      if (!FitsInt(v, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())) {
        Mistyped(IntErrorValue(v), shape, go_field, f.go_type);
      }
      return;
    case GoType::kIntOrString:
      // intstr.IntOrString.UnmarshalJSON: a JSON string, else json.Unmarshal into an int32.
      if (!v.is_string() && !FitsInt(v, kMin32, kMax32) && error_.empty()) {
        error_ = "json: cannot unmarshal " + IntErrorValue(v) + " into Go value of type int32";
      }
      return;
    case GoType::kStringList:
      if (!v.is_array()) return Mistyped(JsonTypeName(v), shape, go_field, f.go_type);
      for (Json& e : v) {
        if (e.is_null()) e = "";
        if (!e.is_string()) {
          return Mistyped(JsonTypeName(e), shape, go_field, ElementType(f.go_type));
        }
      }
      return;
    case GoType::kStringMap:
      if (!v.is_object()) return Mistyped(JsonTypeName(v), shape, go_field, f.go_type);
      for (auto& [k, e] : v.items()) {
        if (e.is_null()) e = "";
        if (!e.is_string()) {
          return Mistyped(JsonTypeName(e), shape, go_field, ElementType(f.go_type));
        }
      }
      return;
    case GoType::kQuantityMap:
      if (!v.is_object()) return Mistyped(JsonTypeName(v), shape, go_field, f.go_type);
      for (auto& [k, e] : v.items()) {
        // resource.Quantity.UnmarshalJSON: null is zero; a string or any other JSON text
        // goes through ParseQuantity.
        if (e.is_null()) {
          e = "0";
          continue;
        }
        std::string text = e.is_string() ? e.get<std::string>() : e.dump();
        while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
          text.pop_back();
        }
        size_t start = 0;
        while (start < text.size() && std::isspace(static_cast<unsigned char>(text[start]))) {
          ++start;
        }
        auto q = Quantity::Parse(std::string_view(text).substr(start));
        if (!q) {
          if (error_.empty()) error_ = kQuantityFormatError;
          return;
        }
        e = q->String();
      }
      return;
    case GoType::kStruct:
      if (!v.is_object()) return Mistyped(JsonTypeName(v), shape, go_field, f.go_type);
      Struct(v, *f.shape, path + ".", go_field);
      return;
    case GoType::kStructList:
      if (!v.is_array()) return Mistyped(JsonTypeName(v), shape, go_field, f.go_type);
      for (size_t i = 0; i < v.size() && error_.empty(); ++i) {
        Json& e = v[i];
        if (e.is_null()) e = Json::object();
        if (!e.is_object()) {
          return Mistyped(JsonTypeName(e), shape, go_field, ElementType(f.go_type));
        }
        Struct(e, *f.shape, path + "[" + std::to_string(i) + "].", go_field);
      }
      return;
  }
}

}  // namespace edgevirt::api::machinery
