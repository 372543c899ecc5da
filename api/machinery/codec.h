// How objects are stored and rendered, and request body decoding.
//
// Storage (store::Record::data): the object's JSON with the server-owned metadata the store keeps
// itself removed — metadata.uid, resourceVersion, generation and creationTimestamp (and
// selfLink, which the apiserver no longer sets) — and laid out as
//   {"apiVersion":"<v>","kind":"<k>","metadata":{<other metadata, sorted>},<other keys, sorted>}
// so that rendering an object for a client is a splice, not a parse: the four fields from the
// Record are inserted right after `"metadata":{`. Anything not in that layout (never written by
// this module) is rendered by parsing it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "api/resource.h"
#include "common/result.h"
#include "store/store.h"

namespace edgevirt::api::machinery {

// nlohmann dump that never throws (invalid UTF-8 is replaced).
std::string Dump(const Json& j);

// The storage form of `object` (server-owned metadata dropped, layout above). An update also
// records the labels of the version it replaces (`previous_labels`: that version's
// metadata.labels, or an empty object), so that a label-selected watch can tell an object that
// leaves or enters the selection (the apiserver's watch cache keeps the previous object for
// this). They travel in front of the JSON, invisible to clients:
//   0x1E <previous labels as JSON> 0x1E <object JSON>
// (0x1E never occurs in JSON text).
std::string EncodeForStore(const Json& object, const Json* previous_labels = nullptr);

// The object's JSON within the stored bytes (without the previous-labels prefix).
std::string_view ObjectBytes(const store::Record& record);
// The labels of the version this one replaced, when the write recorded them.
std::optional<Json> PreviousLabels(const store::Record& record);

// Appends the object as clients see it (server-owned metadata from `record`).
void AppendRendered(const store::Record& record, std::string* out);
inline std::string Render(const store::Record& record) {
  std::string out;
  AppendRendered(record, &out);
  return out;
}
// The object as clients see it, parsed. kInternal if the stored bytes do not parse.
Result<Json> DecodeRecord(const store::Record& record);
// Sets metadata.uid/resourceVersion/generation/creationTimestamp on `object` from `record`.
void SetServerFields(const store::Record& record, Json& object);

// Request bodies. kInvalid with a decoder-style message on a syntax error.
Result<Json> ParseJsonBody(std::string_view body);
// YAML 1.1 scalars as sigs.k8s.io/yaml resolves them; one document only.
Result<Json> ParseYamlBody(std::string_view body);

// Lower-cased media type without parameters ("application/json" from
// "application/json; charset=utf-8").
std::string MediaType(std::string_view content_type);

}  // namespace edgevirt::api::machinery
