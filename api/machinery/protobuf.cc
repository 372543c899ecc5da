#include "api/machinery/protobuf.h"

#include <cstdint>
#include <optional>
#include <string>

#include "api/machinery/secrets.h"

namespace edgevirt::api::machinery {
namespace {

// One field of a protobuf message (wire format: varint key = field << 3 | wire type).
struct Field {
  uint32_t number = 0;
  uint32_t wire = 0;
  uint64_t varint = 0;     // wire type 0
  std::string_view bytes;  // wire type 2
};

class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }

  Result<Field> Next() {
    Field f;
    ASSIGN_OR_RETURN(uint64_t key, Varint());
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire = static_cast<uint32_t>(key & 7);
    if (f.number == 0) return Malformed();
    switch (f.wire) {
      case 0: {
        ASSIGN_OR_RETURN(f.varint, Varint());
        break;
      }
      case 1:
        if (data_.size() - pos_ < 8) return Malformed();
        pos_ += 8;
        break;
      case 2: {
        ASSIGN_OR_RETURN(uint64_t len, Varint());
        if (len > data_.size() - pos_) return Malformed();
        f.bytes = data_.substr(pos_, len);
        pos_ += len;
        break;
      }
      case 5:
        if (data_.size() - pos_ < 4) return Malformed();
        pos_ += 4;
        break;
      default:
        return Malformed();
    }
    return f;
  }

 private:
  static Error Malformed() { return Error(Code::kInvalid, "malformed protobuf body"); }

  Result<uint64_t> Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return Malformed();
      const auto b = static_cast<uint8_t>(data_[pos_++]);
      v |= uint64_t(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    return Malformed();
  }

  std::string_view data_;
  size_t pos_ = 0;
};

// A map<string, string|bytes> entry: key = 1, value = 2.
Result<std::pair<std::string, std::string>> MapEntry(std::string_view bytes) {
  std::pair<std::string, std::string> kv;
  Reader r(bytes);
  while (!r.done()) {
    ASSIGN_OR_RETURN(Field f, r.Next());
    if (f.wire != 2) continue;
    if (f.number == 1) kv.first = std::string(f.bytes);
    if (f.number == 2) kv.second = std::string(f.bytes);
  }
  return kv;
}

// k8s.io/apimachinery ObjectMeta (generated.proto): the fields a client sets on create.
Result<Json> ObjectMeta(std::string_view bytes) {
  Json meta = Json::object();
  Reader r(bytes);
  while (!r.done()) {
    ASSIGN_OR_RETURN(Field f, r.Next());
    if (f.wire != 2) continue;
    switch (f.number) {
      case 1:
        meta["name"] = std::string(f.bytes);
        break;
      case 2:
        meta["generateName"] = std::string(f.bytes);
        break;
      case 3:
        meta["namespace"] = std::string(f.bytes);
        break;
      case 11:
      case 12: {
        ASSIGN_OR_RETURN(auto kv, MapEntry(f.bytes));
        meta[f.number == 11 ? "labels" : "annotations"][kv.first] = kv.second;
        break;
      }
      case 14:
        meta["finalizers"].push_back(std::string(f.bytes));
        break;
      default:
        break;  // server-owned or not settable on create
    }
  }
  for (const char* empty : {"name", "generateName", "namespace"}) {
    if (meta.contains(empty) && meta[empty].get_ref<const std::string&>().empty()) {
      meta.erase(empty);
    }
  }
  return meta;
}

// k8s.io/api/core/v1 Secret: metadata = 1, data = 2 (map<string, bytes>), type = 3,
// stringData = 4, immutable = 5.
Result<Json> Secret(std::string_view bytes) {
  Json secret = {{"apiVersion", "v1"}, {"kind", "Secret"}};
  Reader r(bytes);
  while (!r.done()) {
    ASSIGN_OR_RETURN(Field f, r.Next());
    switch (f.number) {
      case 1:
        if (f.wire == 2) {
          ASSIGN_OR_RETURN(secret["metadata"], ObjectMeta(f.bytes));
        }
        break;
      case 2:
      case 4:
        if (f.wire == 2) {
          ASSIGN_OR_RETURN(auto kv, MapEntry(f.bytes));
          if (f.number == 2) {
            secret["data"][kv.first] = Base64Encode(kv.second);
          } else {
            secret["stringData"][kv.first] = kv.second;
          }
        }
        break;
      case 3:
        if (f.wire == 2 && !f.bytes.empty()) secret["type"] = std::string(f.bytes);
        break;
      case 5:
        if (f.wire == 0) secret["immutable"] = f.varint != 0;
        break;
      default:
        break;
    }
  }
  return secret;
}

}  // namespace

Result<Json> ParseProtobufBody(std::string_view body) {
  static constexpr std::string_view kMagic("k8s\0", 4);
  if (body.substr(0, kMagic.size()) != kMagic) {
    return Error(Code::kInvalid, "protobuf body without the Kubernetes envelope prefix");
  }
  // runtime.Unknown: typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2, contentEncoding = 3.
  std::string api_version, kind, encoding;
  std::optional<std::string_view> raw;
  Reader r(body.substr(kMagic.size()));
  while (!r.done()) {
    ASSIGN_OR_RETURN(Field f, r.Next());
    if (f.wire != 2) continue;
    if (f.number == 1) {
      Reader t(f.bytes);
      while (!t.done()) {
        ASSIGN_OR_RETURN(Field tf, t.Next());
        if (tf.wire != 2) continue;
        if (tf.number == 1) api_version = std::string(tf.bytes);
        if (tf.number == 2) kind = std::string(tf.bytes);
      }
    } else if (f.number == 2) {
      raw = f.bytes;
    } else if (f.number == 3) {
      encoding = std::string(f.bytes);
    }
  }
  if (!encoding.empty()) {
    return Error(Code::kUnsupported, "protobuf body with content encoding " + encoding);
  }
  if (api_version == "v1" && kind == "Secret") return Secret(raw.value_or(std::string_view()));
  return Error(Code::kUnsupported, "protobuf bodies of " +
                                       (api_version.empty() ? "?" : api_version) + " " +
                                       (kind.empty() ? "?" : kind) + " are not supported");
}

}  // namespace edgevirt::api::machinery
