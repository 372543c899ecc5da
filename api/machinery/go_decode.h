// Decoding a JSON body the way the apiserver's decoder (encoding/json into the Go types of a
// built-in kind) does, for the core/v1 kinds the machinery serves itself (PersistentVolumeClaim,
// Service): a kind describes its Go structs as `GoShape`s, and `GoDecoder` walks a body against
// them, reporting unknown fields (and removing them), removing nulls (omitempty), canonicalising
// quantities, and keeping the first type error in encoding/json's words ("json: cannot unmarshal
// string into Go struct field ServicePort.spec.ports.port of type int32").
#pragma once

#include <string>
#include <vector>

#include "api/resource.h"

namespace edgevirt::api::machinery {

enum class GoType {
  kOpaque,       // not decoded here (metadata: validated by the machinery)
  kString,       // string, *string and string enums
  kStringList,   // []string
  kStringMap,    // map[string]string
  kQuantityMap,  // v1.ResourceList: values parsed and rewritten in canonical form
  kInt32,
  kInt64,
  kBool,
  kIntOrString,  // intstr.IntOrString: a JSON string or an int32
  kStruct,
  kStructList,
};

struct GoShape;

struct GoField {
  const char* name;
  GoType type;
  const char* go_type;  // for "json: cannot unmarshal ... of type <go_type>"
  const GoShape* shape = nullptr;
};

struct GoShape {
  const char* go_name;  // "ServicePort"
  std::vector<GoField> fields;
};

class GoDecoder {
 public:
  // Unknown fields are appended to `*unknown` as JSON paths ("spec.ports[0].bogus").
  explicit GoDecoder(std::vector<std::string>* unknown) : unknown_(unknown) {}
  // The first type error, "" when none.
  const std::string& error() const { return error_; }

  // `path`: JSON path of `node` for unknown-field names ("spec.selector."); `go_path`: the
  // same without list indexes, for type errors ("spec.selector").
  void Struct(Json& node, const GoShape& shape, const std::string& path,
              const std::string& go_path);

 private:
  void Mistyped(const std::string& value, const GoShape& shape, const std::string& go_field,
                const std::string& go_type);
  void Value(Json& v, const GoField& f, const GoShape& shape, const std::string& path,
             const std::string& go_field);

  std::vector<std::string>* unknown_;
  std::string error_;
};

}  // namespace edgevirt::api::machinery
