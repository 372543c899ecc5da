// Validation helpers shared by the domain and disk XML writers. Private to vmm/.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace edgevirt::vmm {

inline Error Invalid(std::string message) { return MakeError(Code::kInvalid, std::move(message)); }

// True when every byte of non-empty `s` is an ASCII letter or digit or one of `extra`.
bool AllOf(std::string_view s, std::string_view extra);

// Quotes a user string for an error message (only called on XML-safe strings).
std::string Quote(std::string_view s);

// An absolute host path that XML can carry. Paths are never interpreted by a shell; ".."
// components are refused so that a path means what it says to whoever reads the XML.
Status CheckPath(std::string_view field, const std::string& path);

}  // namespace edgevirt::vmm
