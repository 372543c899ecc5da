// The generic registry: create/get/list/update/patch/delete of any ResourceType on top of the
// store, with the apiserver's semantics for custom resources (k8s.io/apiserver
// pkg/registry/generic/registry/store.go plus apiextensions' customresource strategy).
//
// Used by the HTTP handler and, in process, by the controller, the garbage collector and the
// event recorder. Thread-safe and lock-free: every write is one store operation with an
// expected resourceVersion; patches retry on a concurrent write as the apiserver does. The one
// exception: creates and updates of kinds with ResourceType::serialize_writes (Service) take
// one mutex from admission to the store write, so values allocated at admission stay unique.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "api/machinery/errors.h"
#include "api/machinery/selector.h"
#include "api/resource.h"
#include "common/clock.h"
#include "store/store.h"

namespace edgevirt::api::machinery {

struct WriteOptions {
  bool dry_run = false;
  FieldValidation field_validation = FieldValidation::kWarn;  // the apiserver's default
  // Who makes the change (metadata.managedFields). Empty: "unknown".
  std::string field_manager;
  // Run ResourceType::admit (defaulting, schema and webhook validation). In-process callers
  // (controller, GC) write trusted objects and turn it off.
  bool admit = true;
};

struct WriteResult {
  store::Record record;  // the state written (dry run: what would have been, resourceVersion 0)
  std::vector<std::string> warnings;  // for `Warning: 299` headers
  bool created = false;
  bool deleted = false;  // the object is gone (delete, or an update removed the last finalizer)
  // Dry-run creates have no RV: the rendered form then comes from here.
  std::optional<Json> dry_run_object;

  // The object as the client sees it.
  std::string Body() const;
};

enum class PatchType { kJson, kMerge, kApply };

struct DeleteRequest {
  std::optional<std::string> propagation_policy;  // "Orphan" | "Background" | "Foreground"
  std::optional<bool> orphan_dependents;          // deprecated form of the same
  std::optional<int64_t> grace_period_seconds;
  std::optional<std::string> precondition_uid;
  std::optional<std::string> precondition_resource_version;
};

struct ListQuery {
  std::string ns;  // "" = all namespaces
  LabelSelector labels;
  FieldSelector fields;
  size_t limit = 0;  // 0 = everything
  std::string continue_token;
};

struct ListPage {
  std::vector<store::Record> items;
  uint64_t resource_version = 0;
  std::string continue_token;  // non-empty when `limit` cut the list
};

// The apiserver's finalizers for dependents (metav1.FinalizerOrphanDependents, ...).
inline constexpr char kFinalizerOrphan[] = "orphan";
inline constexpr char kFinalizerForeground[] = "foregroundDeletion";

class Registry {
 public:
  // `clock` (may be empty: system clock) stamps managedFields and deletionTimestamp.
  Registry(store::Store& store, std::vector<ApiGroupVersion> groups,
           std::function<WallClock::time_point()> clock = {});

  const std::vector<ApiGroupVersion>& groups() const { return groups_; }
  store::Store& store() const { return store_; }
  WallClock::time_point Now() const;

  // Lookups; null when not served.
  const ResourceType* ByPlural(std::string_view group, std::string_view version,
                               std::string_view plural) const;
  const ResourceType* ByKind(std::string_view group, std::string_view kind) const;
  // By "apiVersion" as written in objects ("kubevirt.io/v1", "v1") and kind.
  const ResourceType* ByApiVersionKind(std::string_view api_version, std::string_view kind) const;

  Outcome<store::Record> Get(const ResourceType& rt, const std::string& ns,
                             const std::string& name) const;
  // The same, decoded: the object as clients see it (server-owned metadata set).
  Outcome<Json> GetObject(const ResourceType& rt, const std::string& ns,
                          const std::string& name) const;
  // Items in (namespace, name) order. Pages are read at the latest state; every page reports
  // the first page's resourceVersion, so a watch started from it misses nothing.
  Outcome<ListPage> List(const ResourceType& rt, const ListQuery& query) const;

  // Read access to every served kind (ResourceType::delete_guard's `list`).
  ObjectLister Lister() const;

  // POST. `object` is the decoded body; `ns` the namespace from the URL.
  Outcome<WriteResult> Create(const ResourceType& rt, const std::string& ns, Json object,
                              const WriteOptions& options);
  // PUT of the main resource or (status=true) of /status; requires metadata.resourceVersion.
  Outcome<WriteResult> Update(const ResourceType& rt, const std::string& ns,
                              const std::string& name, Json object, bool status,
                              const WriteOptions& options);
  // PATCH. kApply creates the object when it is missing (not for /status).
  Outcome<WriteResult> Patch(const ResourceType& rt, const std::string& ns, const std::string& name,
                             PatchType type, const Json& patch, bool status, bool force,
                             const WriteOptions& options);
  // DELETE with finalizers, propagation policy and preconditions; the kind's delete_guard may
  // refuse it (409 Conflict).
  Outcome<WriteResult> Delete(const ResourceType& rt, const std::string& ns,
                              const std::string& name, const DeleteRequest& request,
                              const WriteOptions& options);
  // DELETE of a collection: every object the query selects; returns the deleted (or
  // being-deleted) objects.
  Outcome<std::vector<WriteResult>> DeleteCollection(const ResourceType& rt, const ListQuery& query,
                                                     const DeleteRequest& request,
                                                     const WriteOptions& options);

  // Read-modify-write for in-process callers: `mutate` edits the current object (full JSON,
  // server fields included); its write is retried on a concurrent change (up to 16 times). An
  // error from `mutate` aborts and is returned as 500 unless it is kNotFound/kConflict/...
  // (mapped with FromError). `status` writes through /status semantics.
  Outcome<WriteResult> Mutate(const ResourceType& rt, const std::string& ns,
                              const std::string& name, bool status,
                              const std::function<Status(Json&)>& mutate,
                              const WriteOptions& options);

 private:
  struct UpdateContext;
  Outcome<WriteResult> CommitUpdate(const ResourceType& rt, const store::Record& old_record,
                                    const Json& old_object, Json object, const UpdateContext& ctx);
  Outcome<WriteResult> CreateObject(const ResourceType& rt, const std::string& ns, Json object,
                                    const WriteOptions& options,
                                    const Json* precomputed_managed_fields);

  store::Store& store_;
  std::vector<ApiGroupVersion> groups_;
  std::function<WallClock::time_point()> clock_;
  // Held from admission to the store write of kinds with ResourceType::serialize_writes.
  std::mutex serialized_writes_;
};

// The field manager the apiserver derives when a request names none: the User-Agent up to the
// first '/' ("kubectl-edit/v1.32.0 (linux/amd64)" -> "kubectl-edit"), or "unknown".
std::string DefaultFieldManager(std::string_view user_agent);

}  // namespace edgevirt::api::machinery
