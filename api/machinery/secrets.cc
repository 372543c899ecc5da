#include "api/machinery/secrets.h"

#include <set>

#include "api/machinery/errors.h"
#include "api/machinery/meta.h"

namespace edgevirt::api::machinery {
namespace {

// k8s.io/api/core/v1 types.go.
constexpr char kTypeOpaque[] = "Opaque";
constexpr char kTypeServiceAccountToken[] = "kubernetes.io/service-account-token";
constexpr char kTypeDockercfg[] = "kubernetes.io/dockercfg";
constexpr char kTypeDockerConfigJson[] = "kubernetes.io/dockerconfigjson";
constexpr char kTypeBasicAuth[] = "kubernetes.io/basic-auth";
constexpr char kTypeSshAuth[] = "kubernetes.io/ssh-auth";
constexpr char kTypeTls[] = "kubernetes.io/tls";
constexpr size_t kMaxSecretSize = 1024 * 1024;  // core.MaxSecretSize

const std::set<std::string>& SecretFields() {
  static const std::set<std::string> k = {"apiVersion", "data",       "immutable", "kind",
                                          "metadata",   "stringData", "type"};
  return k;
}

int Base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

Error Corrupt(size_t at) {
  return Error{Code::kInvalid, "illegal base64 data at input byte " + std::to_string(at)};
}

// pkg/util/validation IsConfigMapKey.
std::vector<std::string> IsConfigKey(const std::string& key) {
  std::vector<std::string> errs;
  if (key.size() > 253) errs.push_back("must be no more than 253 characters");
  bool ok = !key.empty();
  for (char c : key) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      ok = false;
    }
  }
  if (!ok) {
    errs.push_back(
        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
        "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
        "'[-._a-zA-Z0-9]+')");
  }
  if (key == ".") {
    errs.push_back("must not be '.'");
  } else if (key == "..") {
    errs.push_back("must not be '..'");
  } else if (key.rfind("..", 0) == 0) {
    errs.push_back("must not start with '..'");
  }
  return errs;
}

// The Go type name json.Unmarshal names for a value it cannot put into a map.
std::string GoJsonType(const Json& j) {
  if (j.is_array()) return "array";
  if (j.is_string()) return "string";
  if (j.is_number()) return "number";
  if (j.is_boolean()) return "bool";
  return "null";
}

// json.Unmarshal(b, &map[string]interface{}{}); empty when it succeeds.
std::string JsonObjectError(const std::string& bytes) {
  Json j = Json::parse(bytes, nullptr, false);
  if (j.is_discarded()) return "invalid JSON";
  if (j.is_object() || j.is_null()) return "";
  return "json: cannot unmarshal " + GoJsonType(j) +
         " into Go value of type map[string]interface {}";
}

std::string Str(const Json& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->get<std::string>() : "";
}

// Decodes data/stringData/type/immutable; returns the decode error text or "".
std::string Decode(Json& s, std::map<std::string, std::string>* data) {
  if (auto it = s.find("data"); it != s.end() && !it->is_null()) {
    if (!it->is_object()) {
      return "json: cannot unmarshal " + GoJsonType(*it) +
             " into Go struct field Secret.data of type map[string][]uint8";
    }
    for (auto& [k, v] : it->items()) {
      if (v.is_null()) {
        (*data)[k] = "";
        continue;
      }
      if (!v.is_string()) {
        return "json: cannot unmarshal " + GoJsonType(v) +
               " into Go struct field Secret.data of type []uint8";
      }
      auto bytes = Base64Decode(v.get_ref<const std::string&>());
      if (!bytes) return bytes.error().message;
      (*data)[k] = std::move(*bytes);
    }
  }
  if (auto it = s.find("stringData"); it != s.end() && !it->is_null()) {
    if (!it->is_object()) {
      return "json: cannot unmarshal " + GoJsonType(*it) +
             " into Go struct field Secret.stringData of type map[string]string";
    }
    for (auto& [k, v] : it->items()) {
      if (!v.is_string() && !v.is_null()) {
        return "json: cannot unmarshal " + GoJsonType(v) +
               " into Go struct field Secret.stringData of type string";
      }
    }
  }
  if (auto it = s.find("type"); it != s.end() && !it->is_null() && !it->is_string()) {
    return "json: cannot unmarshal " + GoJsonType(*it) +
           " into Go struct field Secret.type of type v1.SecretType";
  }
  if (auto it = s.find("immutable"); it != s.end() && !it->is_null() && !it->is_boolean()) {
    return "json: cannot unmarshal " + GoJsonType(*it) +
           " into Go struct field Secret.immutable of type bool";
  }
  return "";
}

bool IsImmutable(const Json& s) {
  auto it = s.find("immutable");
  return it != s.end() && it->is_boolean() && it->get<bool>();
}

Json DataOf(const Json& s) {
  auto it = s.find("data");
  if (it == s.end() || it->is_null() || (it->is_object() && it->empty())) return Json::object();
  return *it;
}

AdmitResult AdmitSecret(const AdmitRequest& req) {
  AdmitResult r;
  if (req.object == nullptr || req.op == Operation::kDelete) return r;
  Json& s = *req.object;
  for (auto it = s.begin(); it != s.end();) {
    if (SecretFields().count(it.key())) {
      ++it;
      continue;
    }
    r.unknown_fields.push_back(it.key());
    it = s.erase(it);
  }
  if (req.field_validation == FieldValidation::kIgnore) r.unknown_fields.clear();

  std::map<std::string, std::string> data;
  r.decode_error = Decode(s, &data);
  if (!r.decode_error.empty()) return r;

  // The v1 → internal conversion: stringData wins over data and is never stored.
  if (auto it = s.find("stringData"); it != s.end()) {
    if (it->is_object()) {
      for (auto& [k, v] : it->items()) data[k] = v.is_string() ? v.get<std::string>() : "";
    }
    s.erase(it);
  }
  if (data.empty()) {
    s.erase("data");
  } else {
    Json encoded = Json::object();
    for (const auto& [k, v] : data) encoded[k] = Base64Encode(v);
    s["data"] = std::move(encoded);
  }
  if (auto it = s.find("immutable"); it != s.end() && it->is_null()) s.erase(it);
  std::string type = Str(s, "type");
  if (type.empty()) {
    type = kTypeOpaque;
    s["type"] = type;
  }

  // ValidateSecret.
  size_t total = 0;
  for (const auto& [k, v] : data) {
    for (const auto& msg : IsConfigKey(k)) {
      r.invalid.push_back(FieldInvalid("data[" + k + "]", Quote(k), msg));
    }
    total += v.size();
  }
  if (total > kMaxSecretSize) r.invalid.push_back(FieldTooLong("data", kMaxSecretSize));
  auto require = [&](const char* key) {
    r.invalid.push_back(FieldRequired("data[" + std::string(key) + "]"));
  };
  auto json_key = [&](const char* key) {
    auto it = data.find(key);
    if (it == data.end()) {
      require(key);
      return;
    }
    if (std::string err = JsonObjectError(it->second); !err.empty()) {
      r.invalid.push_back(
          FieldInvalid("data[" + std::string(key) + "]", "\"<secret contents redacted>\"", err));
    }
  };
  if (type == kTypeServiceAccountToken) {
    const Json* annotations = nullptr;
    if (auto m = s.find("metadata"); m != s.end() && m->is_object()) {
      if (auto a = m->find("annotations"); a != m->end() && a->is_object()) annotations = &*a;
    }
    if (annotations == nullptr || Str(*annotations, "kubernetes.io/service-account.name").empty()) {
      r.invalid.push_back(
          FieldRequired("metadata.annotations[kubernetes.io/service-account.name]"));
    }
  } else if (type == kTypeDockercfg) {
    json_key(".dockercfg");
  } else if (type == kTypeDockerConfigJson) {
    json_key(".dockerconfigjson");
  } else if (type == kTypeBasicAuth) {
    if (!data.count("username") && !data.count("password")) {
      require("username");
      require("password");
    }
  } else if (type == kTypeSshAuth) {
    if (auto it = data.find("ssh-privatekey"); it == data.end() || it->second.empty()) {
      require("ssh-privatekey");
    }
  } else if (type == kTypeTls) {
    if (!data.count("tls.crt")) require("tls.crt");
    if (!data.count("tls.key")) require("tls.key");
  }

  // ValidateSecretUpdate.
  if (req.op == Operation::kUpdate && req.old_object != nullptr) {
    const Json& old = *req.old_object;
    std::string old_type = Str(old, "type");
    if (old_type.empty()) old_type = kTypeOpaque;
    if (type != old_type) {
      r.invalid.push_back(FieldInvalid("type", Quote(type), "field is immutable"));
    }
    if (IsImmutable(old)) {
      if (!IsImmutable(s)) {
        r.invalid.push_back(
            FieldForbidden("immutable", "field is immutable when `immutable` is set"));
      }
      if (DataOf(s) != DataOf(old)) {
        r.invalid.push_back(FieldForbidden("data", "field is immutable when `immutable` is set"));
      }
    }
  }
  return r;
}

std::vector<Json> SecretCells(const Json& s, WallClock::time_point now) {
  std::string name, created;
  if (auto m = s.find("metadata"); m != s.end() && m->is_object()) {
    name = Str(*m, "name");
    created = Str(*m, "creationTimestamp");
  }
  auto d = s.find("data");
  int64_t count = d != s.end() && d->is_object() ? static_cast<int64_t>(d->size()) : 0;
  return {name, Str(s, "type"), count, HumanAge(created, now)};
}

std::optional<std::string> SecretField(const Json& s, const std::string& field) {
  if (field == "type") return Str(s, "type");
  return std::nullopt;
}

}  // namespace

std::string Base64Encode(std::string_view in) {
  static const char kTable[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += kTable[(n >> 6) & 63];
    out += kTable[n & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t n = uint8_t(in[i]) << 16;
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += kTable[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

// encoding/base64 (*Encoding).decodeQuantum with StdEncoding, error positions included.
Result<std::string> Base64Decode(std::string_view src) {
  std::string out;
  const size_t n = src.size();
  size_t si = 0;
  auto skip_newlines = [&] {
    while (si < n && (src[si] == '\n' || src[si] == '\r')) ++si;
  };
  while (true) {
    int dbuf[4] = {0, 0, 0, 0};
    int dlen = 4;
    for (int j = 0; j < 4; ++j) {
      if (si == n) {
        if (j == 0) return out;
        return Corrupt(si - static_cast<size_t>(j));
      }
      const char in = src[si++];
      if (int v = Base64Value(in); v >= 0) {
        dbuf[j] = v;
        continue;
      }
      if (in == '\n' || in == '\r') {
        --j;
        continue;
      }
      if (in != '=' || j < 2) return Corrupt(si - 1);
      if (j == 2) {  // "==" expected, the first '=' is consumed
        skip_newlines();
        if (si == n) return Corrupt(n);
        if (src[si] != '=') return Corrupt(si - 1);
        ++si;
      }
      skip_newlines();
      if (si < n) return Corrupt(si);  // trailing garbage
      dlen = j;
      break;
    }
    const uint32_t v = (dbuf[0] << 18) | (dbuf[1] << 12) | (dbuf[2] << 6) | dbuf[3];
    if (dlen >= 2) out += static_cast<char>((v >> 16) & 0xff);
    if (dlen >= 3) out += static_cast<char>((v >> 8) & 0xff);
    if (dlen >= 4) out += static_cast<char>(v & 0xff);
    if (dlen < 4) return out;
  }
}

ResourceType SecretResource() {
  ResourceType rt;
  rt.group = "";
  rt.version = "v1";
  rt.kind = "Secret";
  rt.list_kind = "SecretList";
  rt.plural = "secrets";
  rt.singular = "secret";
  rt.namespaced = true;
  rt.status_subresource = false;
  rt.verbs = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"};
  rt.admit = AdmitSecret;
  // pkg/printers/internalversion: secretColumnDefinitions.
  rt.default_columns = false;
  rt.columns = {
      {"Name", "string", "name", "Name must be unique within a namespace.", 0},
      {"Type", "string", "", "Used to facilitate programmatic handling of secret data.", 0},
      {"Data", "string", "", "Data contains the secret data.", 0},
      {"Age", "string", "",
       "CreationTimestamp is a timestamp representing the server time when this object was "
       "created.",
       0},
  };
  rt.timed_cells = SecretCells;
  rt.field_value = SecretField;
  rt.schema_name = "io.k8s.api.core.v1.Secret";
  return rt;
}

Json SecretSchemas() {
  const std::string meta = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.";
  Json schemas = Json::object();
  Json props = {
      {"apiVersion", {{"type", "string"}, {"description", "Always \"v1\"."}}},
      {"data",
       {{"type", "object"},
        {"additionalProperties", {{"type", "string"}, {"format", "byte"}}},
        {"description",
         "Secret data: keys of alphanumerics, '-', '_' or '.'; values base64-encoded."}}},
      {"immutable",
       {{"type", "boolean"},
        {"description", "When true, data cannot be changed (only metadata can)."}}},
      {"kind", {{"type", "string"}, {"description", "Always \"Secret\"."}}},
      {"metadata",
       {{"allOf", Json::array({{{"$ref", meta + "ObjectMeta"}}})},
        {"default", Json::object()},
        {"description", "Standard object's metadata."}}},
      {"stringData",
       {{"type", "object"},
        {"additionalProperties", {{"type", "string"}}},
        {"description",
         "Write-only convenience: merged into data (base64-encoded) on write, never read back."}}},
      {"type",
       {{"type", "string"},
        {"description",
         "Used to facilitate programmatic handling of secret data (default \"Opaque\")."}}},
  };
  schemas["io.k8s.api.core.v1.Secret"] = {
      {"type", "object"},
      {"description", "Secret holds secret data of a certain type."},
      {"properties", props},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "Secret"}, {"version", "v1"}}})}};
  schemas["io.k8s.api.core.v1.SecretList"] = {
      {"type", "object"},
      {"description", "SecretList is a list of Secret."},
      {"required", {"items"}},
      {"properties",
       {{"apiVersion", {{"type", "string"}}},
        {"items",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/io.k8s.api.core.v1.Secret"}}}}},
        {"kind", {{"type", "string"}}},
        {"metadata", {{"allOf", Json::array({{{"$ref", meta + "ListMeta"}}})}}}}},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "SecretList"}, {"version", "v1"}}})}};
  return schemas;
}

}  // namespace edgevirt::api::machinery
