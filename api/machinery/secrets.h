// core/v1 Secret, served by the machinery under /api/v1 (CoreV1() in events.h adds it), with
// kube-apiserver's decoding, defaulting and validation (k8s.io/kubernetes pkg/apis/core: the
// []byte decoding of `data`, SetDefaults_Secret, the stringData conversion, ValidateSecret and
// ValidateSecretUpdate) and the apiserver's printer columns (NAME TYPE DATA AGE).
#pragma once

#include "api/resource.h"

namespace edgevirt::api::machinery {

// The Secret resource (secrets, no short name, namespaced, no status subresource, the Event
// verbs). Admission, per write:
//  - decode: `data` an object of base64 strings (Go's StdEncoding; CR/LF ignored), `stringData`
//    an object of strings, `type` a string, `immutable` a boolean; else 400 `Secret in version
//    "v1" cannot be handled as a Secret: ...` (AdmitResult::decode_error), e.g. `illegal base64
//    data at input byte 3`.
//  - `stringData` is merged into `data` (base64-encoded, winning over `data`) and removed;
//    `data` values are stored in canonical base64; `type` defaults to "Opaque".
//  - 422 Invalid (`Secret "x" is invalid: ...`): keys that are not config keys
//    (`data[k]: Invalid value: "k": a valid config key must consist of ...`), more than 1 MiB of
//    data, the per-type required keys (kubernetes.io/dockerconfigjson needs `.dockerconfigjson`
//    holding a JSON object, ...); on update a changed `type`, and for a Secret stored with
//    `immutable: true` any change of `data` or unsetting `immutable`.
ResourceType SecretResource();

// OpenAPI v3 components of Secret and SecretList (io.k8s.api.core.v1.*).
Json SecretSchemas();

// Go's base64.StdEncoding: encoding, and decoding with the error text of
// base64.CorruptInputError ("illegal base64 data at input byte N"); '\r' and '\n' are skipped.
std::string Base64Encode(std::string_view in);
Result<std::string> Base64Decode(std::string_view in);

}  // namespace edgevirt::api::machinery
