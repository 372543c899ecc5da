// JSON merge patch (RFC 7386) and JSON patch (RFC 6902), applied to the object as the client
// sees it, as the apiserver's patch handler does.
#pragma once

#include <string>

#include "api/resource.h"
#include "common/result.h"

namespace edgevirt::api::machinery {

// RFC 7386. `patch` must be a JSON object (else kInvalid "Invalid JSON Patch", a 400).
Status ApplyMergePatch(Json& target, const Json& patch);

// RFC 6902: add, remove, replace, move, copy, test (paths are RFC 6901 pointers, "-" appends).
// kInvalid with the failing operation's reason (the apiserver answers 422 for these).
Status ApplyJsonPatch(Json& target, const Json& operations);

}  // namespace edgevirt::api::machinery
