// ObjectMeta rules (k8s.io/apimachinery/pkg/api/validation, pkg/util/validation) and small
// helpers shared by the machinery: name syntax, generateName, human durations.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "api/resource.h"
#include "common/clock.h"

namespace edgevirt::api::machinery {

// Messages of pkg/util/validation; empty when valid.
std::vector<std::string> IsDns1123Subdomain(std::string_view value);
std::vector<std::string> IsDns1123Label(std::string_view value);
std::vector<std::string> IsQualifiedName(std::string_view value);
std::vector<std::string> IsValidLabelValue(std::string_view value);
// path.IsValidPathSegmentName: not "." / "..", no '/' or '%'.
std::vector<std::string> IsValidPathSegmentName(std::string_view value);

// Names are DNS-1123 subdomains (as for every custom resource). With `prefix`, a trailing '-'
// is allowed (generateName).
std::vector<std::string> NameIsDnsSubdomain(std::string_view name, bool prefix);

inline constexpr size_t kTotalAnnotationSizeLimit = 256 * 1024;

// ValidateObjectMeta for a create (`old_metadata` null) or an update. `metadata` is the
// object's metadata (an object or absent/null). Appends field errors ("metadata.name: ...").
void ValidateObjectMeta(const Json* metadata, const Json* old_metadata, bool namespaced,
                        std::vector<StatusCause>* errors);

// Object field names metav1.ObjectMeta knows (for strict decoding of metadata).
bool IsObjectMetaField(std::string_view field);

// generateName: the prefix (cut to 58 bytes) plus 5 random characters from the apiserver's
// alphabet "bcdfghjklmnpqrstvwxz2456789".
std::string GenerateName(std::string_view prefix);

// duration.HumanDuration of the apiserver's Table Age column ("5m", "2d3h", "<invalid>").
std::string HumanDuration(std::chrono::nanoseconds d);
// Age of an RFC 3339 timestamp at `now` as the CRD table convertor renders a "date" cell:
// "<unknown>" for an empty value, "<invalid>" for an unparsable one.
std::string HumanAge(std::string_view timestamp, WallClock::time_point now);

// RFC 3339 with microseconds ("2025-01-02T03:04:05.123456Z"), as metav1.MicroTime.
std::string FormatMicroTime(WallClock::time_point t);

}  // namespace edgevirt::api::machinery
