#include "store/codec.h"

#include <cstring>

namespace edgevirt::store::internal {
namespace {

Status CheckComponent(std::string_view what, const std::string& v, size_t max, bool required) {
  if (required && v.empty()) return MakeError(Code::kInvalid, std::string(what) + " is empty");
  if (v.size() > max) {
    return MakeError(Code::kInvalid,
                     std::string(what) + " is longer than " + std::to_string(max) + " bytes");
  }
  if (v.find('\0') != std::string::npos) {
    return MakeError(Code::kInvalid, std::string(what) + " contains a NUL byte");
  }
  return Ok();
}

Error Corrupt(std::string_view what) {
  return MakeError(Code::kInternal, "corrupt " + std::string(what));
}

// Reads a one-byte length and that many bytes.
bool ReadShortString(std::string_view* in, std::string* out) {
  if (in->empty()) return false;
  size_t n = static_cast<unsigned char>((*in)[0]);
  if (in->size() < 1 + n) return false;
  out->assign(in->data() + 1, n);
  in->remove_prefix(1 + n);
  return true;
}

void AppendShortString(std::string_view s, std::string* out) {
  out->push_back(static_cast<char>(static_cast<unsigned char>(s.size())));
  out->append(s);
}

}  // namespace

Status ValidateKey(const ObjectKey& key) {
  RETURN_IF_ERROR(CheckComponent("group", key.group, kMaxGroupLen, false));
  RETURN_IF_ERROR(CheckComponent("kind", key.kind, kMaxKindLen, true));
  RETURN_IF_ERROR(CheckComponent("namespace", key.ns, kMaxNamespaceLen, false));
  RETURN_IF_ERROR(CheckComponent("name", key.name, kMaxNameLen, true));
  return Ok();
}

Status ValidateRawKey(const std::string& space, const std::string& key) {
  RETURN_IF_ERROR(CheckComponent("raw space", space, kMaxSpaceLen, true));
  if (key.empty()) return MakeError(Code::kInvalid, "raw key is empty");
  if (key.size() > kMaxRawKeyLen) {
    return MakeError(Code::kInvalid,
                     "raw key is longer than " + std::to_string(kMaxRawKeyLen) + " bytes");
  }
  return Ok();
}

std::string EncodeKey(const ObjectKey& key) {
  std::string out;
  out.reserve(key.group.size() + key.kind.size() + key.ns.size() + key.name.size() + 3);
  out.append(key.group).push_back('\0');
  out.append(key.kind).push_back('\0');
  out.append(key.ns).push_back('\0');
  out.append(key.name);
  return out;
}

Status DecodeKey(std::string_view bytes, ObjectKey* key) {
  std::string* parts[] = {&key->group, &key->kind, &key->ns};
  for (std::string* part : parts) {
    size_t nul = bytes.find('\0');
    if (nul == std::string_view::npos) return Corrupt("object key");
    part->assign(bytes.data(), nul);
    bytes.remove_prefix(nul + 1);
  }
  if (bytes.find('\0') != std::string_view::npos) return Corrupt("object key");
  key->name.assign(bytes.data(), bytes.size());
  return Ok();
}

std::string KindPrefix(const std::string& group, const std::string& kind) {
  std::string out = group;
  out.push_back('\0');
  out.append(kind).push_back('\0');
  return out;
}

std::string NamespacePrefix(const std::string& group, const std::string& kind,
                            const std::string& ns) {
  std::string out = KindPrefix(group, kind);
  out.append(ns).push_back('\0');
  return out;
}

std::string EncodeRawKey(const std::string& space, std::string_view key) {
  std::string out = space;
  out.push_back('\0');
  out.append(key);
  return out;
}

void AppendU64(uint64_t v, std::string* out) {
  char b[8];
  for (int i = 7; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  out->append(b, 8);
}

std::string EncodeU64(uint64_t v) {
  std::string out;
  AppendU64(v, &out);
  return out;
}

uint64_t LoadU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

Status DecodeU64(std::string_view bytes, uint64_t* v) {
  if (bytes.size() != 8) return Corrupt("integer");
  *v = LoadU64(bytes.data());
  return Ok();
}

void EncodeRecordValue(const Record& record, std::string* out) {
  out->push_back(static_cast<char>(kRecordFormat));
  AppendU64(record.resource_version, out);
  AppendU64(static_cast<uint64_t>(record.generation), out);
  AppendShortString(record.uid, out);
  AppendShortString(record.creation_timestamp, out);
  out->append(record.data);
}

Status DecodeRecordRv(std::string_view bytes, uint64_t* rv) {
  if (bytes.size() < 17 || static_cast<uint8_t>(bytes[0]) != kRecordFormat) {
    return Corrupt("object header");
  }
  *rv = LoadU64(bytes.data() + 1);
  return Ok();
}

Status DecodeRecordValue(std::string_view bytes, Record* record, bool with_data) {
  RETURN_IF_ERROR(DecodeRecordRv(bytes, &record->resource_version));
  record->generation = static_cast<int64_t>(LoadU64(bytes.data() + 9));
  bytes.remove_prefix(17);
  if (!ReadShortString(&bytes, &record->uid) ||
      !ReadShortString(&bytes, &record->creation_timestamp)) {
    return Corrupt("object header");
  }
  if (with_data) record->data.assign(bytes.data(), bytes.size());
  return Ok();
}

void EncodeEventValue(EventType type, int64_t commit_unix_nanos, std::string_view encoded_key,
                      const Record& record, std::string* out) {
  out->push_back(static_cast<char>(kEventFormat));
  out->push_back(static_cast<char>(type));
  AppendU64(static_cast<uint64_t>(commit_unix_nanos), out);
  out->push_back(static_cast<char>((encoded_key.size() >> 8) & 0xff));
  out->push_back(static_cast<char>(encoded_key.size() & 0xff));
  out->append(encoded_key);
  EncodeRecordValue(record, out);
}

Status DecodeEventCommitNanos(std::string_view bytes, int64_t* commit_unix_nanos) {
  if (bytes.size() < 12 || static_cast<uint8_t>(bytes[0]) != kEventFormat) {
    return Corrupt("event header");
  }
  *commit_unix_nanos = static_cast<int64_t>(LoadU64(bytes.data() + 2));
  return Ok();
}

Status DecodeEventValue(std::string_view bytes, Event* event, int64_t* commit_unix_nanos,
                        bool with_data) {
  RETURN_IF_ERROR(DecodeEventCommitNanos(bytes, commit_unix_nanos));
  uint8_t type = static_cast<uint8_t>(bytes[1]);
  if (type > static_cast<uint8_t>(EventType::kDeleted)) return Corrupt("event type");
  event->type = static_cast<EventType>(type);
  size_t key_len = (static_cast<size_t>(static_cast<unsigned char>(bytes[10])) << 8) |
                   static_cast<unsigned char>(bytes[11]);
  bytes.remove_prefix(12);
  if (bytes.size() < key_len) return Corrupt("event key");
  RETURN_IF_ERROR(DecodeKey(bytes.substr(0, key_len), &event->object.key));
  bytes.remove_prefix(key_len);
  return DecodeRecordValue(bytes, &event->object, with_data);
}

}  // namespace edgevirt::store::internal
