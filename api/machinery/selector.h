// Label selectors (k8s.io/apimachinery/pkg/labels: =, ==, !=, in, notin, exists, !key, gt, lt)
// and field selectors (pkg/fields: =, ==, != joined by ',', with '\' escapes).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/resource.h"
#include "common/result.h"

namespace edgevirt::api::machinery {

class LabelSelector {
 public:
  // Parses the `labelSelector` query syntax. kInvalid with the apiserver's wording
  // ("unable to parse requirement: ...", "found '…', expected: …") on a syntax error.
  static Result<LabelSelector> Parse(std::string_view text);
  bool Empty() const { return requirements_.empty(); }
  // `labels` is metadata.labels (an object, null or absent).
  bool Matches(const Json* labels) const;

 private:
  enum class Op {
    kEquals,
    kNotEquals,
    kIn,
    kNotIn,
    kExists,
    kDoesNotExist,
    kGreaterThan,
    kLessThan
  };
  struct Requirement {
    std::string key;
    Op op = Op::kExists;
    std::vector<std::string> values;
  };
  std::vector<Requirement> requirements_;
};

class FieldSelector {
 public:
  struct Term {
    std::string field;
    std::string value;
    bool negate = false;
  };
  // Parses the `fieldSelector` query syntax; kInvalid on a syntax error.
  static Result<FieldSelector> Parse(std::string_view text);
  bool Empty() const { return terms_.empty(); }
  const std::vector<Term>& terms() const { return terms_; }
  // The value a `metadata.name=X` term requires, if there is one (a watch/list on one name).
  std::optional<std::string> RequiredValue(std::string_view field) const;
  // Checks every field is selectable for `rt` (metadata.name, metadata.namespace, or one its
  // field_value hook knows): kInvalid "field label not supported: <field>" otherwise.
  Status Validate(const ResourceType& rt) const;
  // Evaluates against an object (metadata.name/namespace from `name`/`ns`, others through
  // rt.field_value on `object`, which may be null only when no such term exists).
  bool Matches(const ResourceType& rt, std::string_view ns, std::string_view name,
               const Json* object) const;
  // True if some term needs the object body (not only name/namespace).
  bool NeedsObject() const;

 private:
  std::vector<Term> terms_;
};

}  // namespace edgevirt::api::machinery
