#include "api/machinery/codec.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <yaml-cpp/yaml.h>

namespace edgevirt::api::machinery {
namespace {

bool IsServerField(std::string_view k) {
  return k == "uid" || k == "resourceVersion" || k == "generation" || k == "creationTimestamp" ||
         k == "selfLink";
}

// Consumes `lit` at *p.
bool Eat(std::string_view s, size_t* p, std::string_view lit) {
  if (s.compare(*p, lit.size(), lit) != 0) return false;
  *p += lit.size();
  return true;
}

// Consumes a JSON string without escapes at *p.
bool EatPlainString(std::string_view s, size_t* p) {
  if (*p >= s.size() || s[*p] != '"') return false;
  size_t end = s.find('"', *p + 1);
  if (end == std::string_view::npos) return false;
  if (s.substr(*p + 1, end - *p - 1).find('\\') != std::string_view::npos) return false;
  *p = end + 1;
  return true;
}

// The offset just after `"metadata":{` in the storage layout, or npos.
size_t MetadataBody(std::string_view s) {
  size_t p = 0;
  if (!Eat(s, &p, "{\"apiVersion\":") || !EatPlainString(s, &p) || !Eat(s, &p, ",\"kind\":") ||
      !EatPlainString(s, &p) || !Eat(s, &p, ",\"metadata\":{")) {
    return std::string_view::npos;
  }
  return p;
}

void AppendServerFields(const store::Record& r, std::string* out) {
  *out += "\"creationTimestamp\":";
  if (r.creation_timestamp.empty()) {
    *out += "null";
  } else {
    *out += '"';
    *out += r.creation_timestamp;
    *out += '"';
  }
  *out += ",\"generation\":";
  *out += std::to_string(r.generation);
  *out += ",\"resourceVersion\":\"";
  *out += std::to_string(r.resource_version);
  *out += "\",\"uid\":\"";
  *out += r.uid;
  *out += '"';
}

Json ConvertYaml(const YAML::Node& node, int depth) {
  if (depth > 256) throw YAML::Exception(YAML::Mark::null_mark(), "nesting too deep");
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const auto& item : node) out.push_back(ConvertYaml(item, depth + 1));
      return out;
    }
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& item : node) {
        const YAML::Node& key = item.first;
        if (!key.IsScalar()) {
          throw YAML::Exception(key.Mark(), "map keys must be strings");
        }
        out[key.Scalar()] = ConvertYaml(item.second, depth + 1);
      }
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str") return s;  // quoted
      if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
      static const char* kTrue[] = {"y",    "Y",    "yes", "Yes", "YES", "true",
                                    "True", "TRUE", "on",  "On",  "ON"};
      static const char* kFalse[] = {"n",     "N",     "no",  "No",  "NO", "false",
                                     "False", "FALSE", "off", "Off", "OFF"};
      for (const char* t : kTrue) {
        if (s == t) return true;
      }
      for (const char* f : kFalse) {
        if (s == f) return false;
      }
      // Integers (decimal, 0x hex, 0o/0 octal are rare in manifests: decimal only) and floats.
      const char* c = s.c_str();
      char* end = nullptr;
      errno = 0;
      long long i = std::strtoll(c, &end, 10);
      if (*end == '\0' && errno == 0 &&
          (std::isdigit(static_cast<unsigned char>(c[0])) ||
           ((c[0] == '-' || c[0] == '+') && c[1] != '\0'))) {
        return i;
      }
      bool numeric_chars = true;
      bool has_digit = false;
      for (char ch : s) {
        if (std::isdigit(static_cast<unsigned char>(ch))) {
          has_digit = true;
        } else if (ch != '.' && ch != 'e' && ch != 'E' && ch != '-' && ch != '+') {
          numeric_chars = false;
          break;
        }
      }
      if (numeric_chars && has_digit) {
        errno = 0;
        double d = std::strtod(c, &end);
        if (*end == '\0' && errno == 0) return d;
      }
      if (s == ".inf" || s == ".Inf" || s == ".INF" || s == ".nan" || s == ".NaN") return s;
      return s;
    }
  }
  return nullptr;
}

}  // namespace

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

namespace {
constexpr char kPrefixMark = '\x1e';
}  // namespace

std::string_view ObjectBytes(const store::Record& record) {
  std::string_view data = record.data;
  if (data.empty() || data.front() != kPrefixMark) return data;
  size_t end = data.find(kPrefixMark, 1);
  return end == std::string_view::npos ? std::string_view() : data.substr(end + 1);
}

std::optional<Json> PreviousLabels(const store::Record& record) {
  std::string_view data = record.data;
  if (data.empty() || data.front() != kPrefixMark) return std::nullopt;
  size_t end = data.find(kPrefixMark, 1);
  if (end == std::string_view::npos) return std::nullopt;
  Json labels = Json::parse(data.substr(1, end - 1), nullptr, false);
  if (labels.is_discarded()) return std::nullopt;
  return labels;
}

namespace {

// Appends JSON text to one string: Dump() without a string per value. Same output as Dump
// (nlohmann's own serializer, invalid UTF-8 replaced).
class Appender {
 public:
  explicit Appender(std::string* out)
      : out_(out),
        serializer_(nlohmann::detail::output_adapter<char, std::string>(*out), ' ',
                    Json::error_handler_t::replace) {}

  void Value(const Json& v) { serializer_.dump(v, false, false, 0); }

  // An object key: copied as is when nothing in it needs escaping (the common case).
  void Key(const std::string& k) {
    bool plain = true;
    for (char c : k) {
      auto u = static_cast<unsigned char>(c);
      if (u < 0x20 || u >= 0x7f || c == '"' || c == '\\') {
        plain = false;
        break;
      }
    }
    if (plain) {
      *out_ += '"';
      *out_ += k;
      *out_ += '"';
    } else {
      Value(Json(k));
    }
  }

 private:
  std::string* out_;
  nlohmann::detail::serializer<Json> serializer_;
};

}  // namespace

std::string EncodeForStore(const Json& object, const Json* previous_labels) {
  std::string out;
  out.reserve(2048);
  Appender append(&out);
  if (previous_labels != nullptr) {
    out += kPrefixMark;
    if (previous_labels->is_object()) {
      append.Value(*previous_labels);
    } else {
      out += "{}";
    }
    out += kPrefixMark;
  }
  out += "{\"apiVersion\":";
  auto av = object.find("apiVersion");
  if (av != object.end() && av->is_string()) {
    append.Value(*av);
  } else {
    out += "\"\"";
  }
  out += ",\"kind\":";
  auto kind = object.find("kind");
  if (kind != object.end() && kind->is_string()) {
    append.Value(*kind);
  } else {
    out += "\"\"";
  }
  out += ",\"metadata\":{";
  bool first = true;
  if (auto meta = object.find("metadata"); meta != object.end() && meta->is_object()) {
    for (const auto& [k, v] : meta->items()) {
      if (IsServerField(k)) continue;
      if (!first) out += ',';
      first = false;
      append.Key(k);
      out += ':';
      append.Value(v);
    }
  }
  out += '}';
  for (const auto& [k, v] : object.items()) {
    if (k == "apiVersion" || k == "kind" || k == "metadata") continue;
    out += ',';
    append.Key(k);
    out += ':';
    append.Value(v);
  }
  out += '}';
  return out;
}

void AppendRendered(const store::Record& record, std::string* out) {
  std::string_view data = ObjectBytes(record);
  size_t body = MetadataBody(data);
  if (body == std::string_view::npos) {
    auto parsed = DecodeRecord(record);
    if (parsed) *out += Dump(*parsed);
    return;
  }
  out->reserve(out->size() + data.size() + 160);
  out->append(data.data(), body);
  AppendServerFields(record, out);
  if (body < data.size() && data[body] != '}') *out += ',';
  out->append(data.data() + body, data.size() - body);
}

void SetServerFields(const store::Record& record, Json& object) {
  if (!object.is_object()) object = Json::object();
  Json& meta = object["metadata"];
  if (!meta.is_object()) meta = Json::object();
  if (record.creation_timestamp.empty()) {
    meta["creationTimestamp"] = nullptr;
  } else {
    meta["creationTimestamp"] = record.creation_timestamp;
  }
  meta["generation"] = record.generation;
  meta["resourceVersion"] = std::to_string(record.resource_version);
  meta["uid"] = record.uid;
}

Result<Json> DecodeRecord(const store::Record& record) {
  std::string_view bytes = ObjectBytes(record);
  Json j = Json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return MakeError(Code::kInternal, "stored object " + record.key.ToString() + " is not JSON");
  }
  SetServerFields(record, j);
  return j;
}

Result<Json> ParseJsonBody(std::string_view body) {
  Json j = Json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded()) {
    // Locate the error for the message, as encoding/json reports it.
    try {
      Json again = Json::parse(body.begin(), body.end());
      (void)again;
    } catch (const Json::parse_error& e) {
      std::string what = e.what();
      auto pos = what.find("syntax error");
      return MakeError(Code::kInvalid, "couldn't decode the request body: " +
                                           (pos == std::string::npos ? what : what.substr(pos)));
    } catch (...) {
    }
    return MakeError(Code::kInvalid, "couldn't decode the request body: invalid JSON");
  }
  return j;
}

Result<Json> ParseYamlBody(std::string_view body) {
  try {
    std::vector<YAML::Node> docs = YAML::LoadAll(std::string(body));
    if (docs.size() > 1) {
      return MakeError(Code::kInvalid, "the request body holds more than one YAML document");
    }
    if (docs.empty()) return Json(nullptr);
    return ConvertYaml(docs[0], 0);
  } catch (const std::exception& e) {
    return MakeError(Code::kInvalid, std::string("error converting YAML to JSON: ") + e.what());
  }
}

std::string MediaType(std::string_view content_type) {
  size_t semi = content_type.find(';');
  std::string_view t = content_type.substr(0, semi);
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.remove_suffix(1);
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.remove_prefix(1);
  std::string out(t);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace edgevirt::api::machinery
