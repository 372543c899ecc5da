// RFC 4122 helpers private to api/kubevirt.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace edgevirt::api::kubevirt {

// True if `text` is 8-4-4-4-12 hex digits; fills `out` (may be null) with the 16 bytes.
bool ParseUuid(std::string_view text, std::array<uint8_t, 16>* out);
// Version 5 UUID of `name` in `namespace_uuid` (empty string if the namespace is malformed).
std::string UuidV5(std::string_view namespace_uuid, std::string_view name);
// Version 4 UUID from getrandom(2) (common/clock.h NewUuid).
std::string RandomUuidV4();

}  // namespace edgevirt::api::kubevirt
