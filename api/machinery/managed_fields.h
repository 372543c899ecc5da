// Field ownership (metadata.managedFields) and server-side apply, after
// sigs.k8s.io/structured-merge-diff as kube-apiserver runs it for custom resources without
// list-type annotations: maps merge key by key, lists and scalars are atomic.
//
// Simplifications (documented in README.md): every list is atomic (CRD default; also for
// metadata.finalizers and ownerReferences, which kube treats as set/map), ownership is recorded
// on leaves only (no "." entries for maps), and fields set by admission defaulting are owned by
// nobody (as with kube's mutating webhooks).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "api/resource.h"
#include "common/result.h"

namespace edgevirt::api::machinery {

// A set of paths, as a tree keyed by FieldsV1 path elements ("f:spec"). Paths decoded from
// client-supplied managedFields may carry other element kinds ("k:{…}", "v:…", "i:0"); they are
// kept and re-encoded but never produced here.
class FieldSet {
 public:
  using Path = std::vector<std::string>;

  bool Empty() const;
  void Insert(const Path& path);
  bool operator==(const FieldSet& other) const;
  // Every member path, in key order.
  std::vector<Path> Paths() const;
  // Adds every member of `other`.
  void Union(const FieldSet& other);
  // Removes members at or below any member of `other`, and members that are ancestors of a
  // member of `other` (a change inside an atomic value).
  void RemoveOverlapping(const FieldSet& other);
  // The members of *this that overlap `other` in the RemoveOverlapping sense.
  FieldSet Overlapping(const FieldSet& other) const;
  // Members of *this that are not members of `other` (exact paths).
  FieldSet Minus(const FieldSet& other) const;

  // {"f:spec":{"f:runStrategy":{}}, ...}; a member with children gets ".": {}.
  Json ToFieldsV1() const;
  static Result<FieldSet> FromFieldsV1(const Json& fields);

  // ".spec.runStrategy" (structured-merge-diff's Path.String()).
  static std::string PathString(const Path& path);

 private:
  bool member_ = false;
  std::map<std::string, FieldSet> children_;
};

struct ManagedFieldsEntry {
  std::string manager;
  std::string operation;  // "Apply" | "Update"
  std::string api_version;
  std::string time;         // RFC 3339
  std::string subresource;  // "" or "status"
  FieldSet fields;
};

// Parses metadata.managedFields (null/absent = empty). kInvalid on a malformed entry.
Result<std::vector<ManagedFieldsEntry>> DecodeManagedFields(const Json* managed_fields);
// Sorted as the apiserver sorts them (operation, time, manager, apiVersion, subresource);
// entries with no fields are dropped.
Json EncodeManagedFields(std::vector<ManagedFieldsEntry> entries);

// Which part of an object a write may touch (the strategy's reset fields).
enum class FieldScope {
  kAll,             // no status subresource: everything
  kMainWithStatus,  // the main resource of a kind with /status: everything but status
  kStatus,          // the /status subresource: status only
};

// The object without what field management never tracks (apiVersion, kind and
// metadata.{name,namespace,uid,resourceVersion,generation,creationTimestamp,selfLink,
// managedFields,deletionTimestamp,deletionGracePeriodSeconds}) and without the fields outside
// `scope`.
Json StripForFieldManagement(const Json& object, FieldScope scope);

// Paths set in `object` (leaves, atomic values and empty maps).
FieldSet LeafSet(const Json& object);

struct Comparison {
  FieldSet added, modified, removed;
  bool Empty() const { return added.Empty() && modified.Empty() && removed.Empty(); }
};
Comparison Compare(const Json& old_object, const Json& new_object);

// The Update operation of `manager`: fields changed from `old_object` to `new_object` (both
// full objects) become the manager's and stop being anyone else's; removed fields leave every
// set. Returns false when nothing changed (entries untouched).
bool RecordUpdate(std::vector<ManagedFieldsEntry>& entries, const Json& old_object,
                  const Json& new_object, FieldScope scope, const std::string& manager,
                  const std::string& api_version, const std::string& subresource,
                  const std::string& now);

// The managedFields of a create that arrived without entries: exactly what `RecordUpdate` on
// no entries from `{}` to `object` followed by `EncodeManagedFields` gives (an empty array when
// `object` holds no managed field), built straight from `object` without copying it.
Json CreateManagedFields(const Json& object, FieldScope scope, const std::string& manager,
                         const std::string& api_version, const std::string& subresource,
                         const std::string& now);

struct ApplyConflict {
  std::string manager_text;  // `"kubectl-client-side-apply" using kubevirt.io/v1`
  std::string path;          // ".spec.runStrategy"
};

struct ApplyResult {
  Json object;  // live merged with the configuration (full object, metadata untouched)
  std::vector<ManagedFieldsEntry> entries;
  std::vector<ApplyConflict> conflicts;  // non-empty only when !force
  bool changed = false;                  // object or ownership changed
};

// Server-side apply of `config` by `manager` onto `live` (the full current object; an empty
// object when creating) whose ownership is `entries`. With `force`, conflicting fields are taken
// from their owners; otherwise the conflicts are returned and nothing else is meaningful.
ApplyResult ServerSideApply(const Json& live, std::vector<ManagedFieldsEntry> entries,
                            const Json& config, FieldScope scope, const std::string& manager,
                            const std::string& api_version, const std::string& subresource,
                            bool force, const std::string& now);

// "Apply failed with 1 conflict: conflict with \"x\" using v1: .spec.a" (several: grouped by
// manager, one "- path" line each), as structured-merge-diff words it.
std::string ConflictMessage(const std::vector<ApplyConflict>& conflicts);

}  // namespace edgevirt::api::machinery
