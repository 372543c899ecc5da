// Time and identity helpers shared by every component.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/result.h"

namespace edgevirt {

using WallClock = std::chrono::system_clock;
using MonoClock = std::chrono::steady_clock;

// RFC 3339 UTC with second precision, as Kubernetes writes creationTimestamp:
// "2025-01-02T03:04:05Z".
std::string FormatRfc3339(WallClock::time_point t);
// Parses the form above (also accepts fractional seconds and a numeric offset).
Result<WallClock::time_point> ParseRfc3339(const std::string& s);

// A random (version 4) UUID in the canonical 8-4-4-4-12 lower-case form, from getrandom(2).
std::string NewUuid();

// Nanoseconds since the Unix epoch.
int64_t UnixNanos(WallClock::time_point t);

}  // namespace edgevirt
