// Private to store/: the byte layout of keys and values in the LMDB databases. See README.md
// ("On-disk layout") for the format; every value starts with a format byte so that it can be
// evolved without a dump/restore.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"
#include "store/store.h"

namespace edgevirt::store::internal {

// meta["schema"]. Bumped when a database is added or a key layout changes incompatibly.
inline constexpr uint32_t kSchemaVersion = 1;
// First byte of every objects/events value.
inline constexpr uint8_t kRecordFormat = 1;
inline constexpr uint8_t kEventFormat = 1;

// Component limits. Their sum plus three separators stays within LMDB's default maximum key
// size (511 bytes), so every valid ObjectKey is storable.
inline constexpr size_t kMaxGroupLen = 128;
inline constexpr size_t kMaxKindLen = 63;
inline constexpr size_t kMaxNamespaceLen = 63;
inline constexpr size_t kMaxNameLen = 253;
inline constexpr size_t kMaxSpaceLen = 64;
inline constexpr size_t kMaxRawKeyLen = 511 - kMaxSpaceLen - 1;
// Bodies above this are refused with kTooLarge (etcd's default limit is 1.5 MiB).
inline constexpr size_t kMaxDataLen = 8u << 20;
inline constexpr size_t kMaxRawValueLen = 64u << 20;

// kInvalid unless kind and name are non-empty, no component holds a NUL byte and every
// component is within its limit.
Status ValidateKey(const ObjectKey& key);
// kInvalid for an empty/oversized/NUL-holding space or an empty/oversized key.
Status ValidateRawKey(const std::string& space, const std::string& key);

// objects key: group \0 kind \0 ns \0 name. NUL sorts first, so keys sort by the tuple
// (group, kind, ns, name) and every (group, kind[, ns]) selection is one contiguous range.
std::string EncodeKey(const ObjectKey& key);
Status DecodeKey(std::string_view bytes, ObjectKey* key);
std::string KindPrefix(const std::string& group, const std::string& kind);
std::string NamespacePrefix(const std::string& group, const std::string& kind,
                            const std::string& ns);

// raw key: space \0 key.
std::string EncodeRawKey(const std::string& space, std::string_view key);

// Fixed-width big-endian integers: events keys (so that byte order is numeric order) and the
// integers inside values.
std::string EncodeU64(uint64_t v);
void AppendU64(uint64_t v, std::string* out);
uint64_t LoadU64(const char* p);
Status DecodeU64(std::string_view bytes, uint64_t* v);

// objects value: format(1) rv(8) generation(8) uid_len(1) uid ts_len(1) ts data...
// The key is not stored in the value. DecodeRecordValue leaves record->key untouched.
void EncodeRecordValue(const Record& record, std::string* out);
// With with_data false, record->data is left untouched (header-only decode, for scans).
Status DecodeRecordValue(std::string_view bytes, Record* record, bool with_data = true);
// Reads just the resourceVersion of an objects value.
Status DecodeRecordRv(std::string_view bytes, uint64_t* rv);

// events value: format(1) type(1) commit_unix_nanos(8) key_len(2) key record-value...
void EncodeEventValue(EventType type, int64_t commit_unix_nanos, std::string_view encoded_key,
                      const Record& record, std::string* out);
Status DecodeEventValue(std::string_view bytes, Event* event, int64_t* commit_unix_nanos,
                        bool with_data = true);
// Reads just the commit time of an events value (used by retention, which scans the oldest).
Status DecodeEventCommitNanos(std::string_view bytes, int64_t* commit_unix_nanos);

}  // namespace edgevirt::store::internal
