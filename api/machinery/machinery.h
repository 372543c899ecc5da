// api/machinery — the public header of the generic Kubernetes API machinery of edgevirtd.
//
// Serves any set of ResourceTypes (api/resource.h) the way kube-apiserver serves custom
// resources, so that stock kubectl 1.32 and virtctl work against edgevirtd: discovery,
// OpenAPI v3, CRUD with optimistic concurrency, the status subresource, merge/JSON patch and
// server-side apply, finalizers and deletion propagation (with a garbage collector), label and
// field selectors, paging, Table output, watch streams with bookmarks, dry run, field
// validation, core/v1 Events with an EventRecorder for controllers, core/v1 Secrets
// (secrets.h) and PersistentVolumeClaims (pvc.h). See README.md.
//
//   Machinery::Create(store, {kubevirt::KubevirtV1(opts)}, options)  -> handler + GC + watches
//   machinery->Serve(request)           -> the HTTP answer, or nullopt for paths it does not own
//   machinery->registry()               -> in-process CRUD (controller), see registry.h
//   machinery->NewEventRecorder({...})  -> events for `kubectl describe`, see events.h
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "api/http_server.h"
#include "api/machinery/discovery.h"
#include "api/machinery/errors.h"
#include "api/machinery/events.h"
#include "api/machinery/gc.h"
#include "api/machinery/pvc.h"
#include "api/machinery/registry.h"
#include "api/machinery/secrets.h"
#include "api/machinery/watch.h"
#include "api/resource.h"
#include "common/result.h"
#include "store/store.h"

namespace edgevirt::api::machinery {

struct MachineryOptions {
  DiscoveryOptions discovery;
  WatchHubOptions watch;
  GarbageCollectorOptions gc;
  bool run_garbage_collector = true;
  // Wall clock for timestamps (managedFields, deletionTimestamp, events, table ages). Empty =
  // the system clock. Note: creationTimestamp comes from the store's own clock.
  std::function<WallClock::time_point()> clock;
};

class ApiHandler;

class Machinery {
 public:
  // `groups`: the served group-versions; core/v1 (Events, CoreV1()) is added unless a core
  // group-version is given. The store must outlive the Machinery. kInvalid for duplicate or
  // malformed resource types; kUnavailable if the GC cannot scan the store.
  static Result<std::unique_ptr<Machinery>> Create(store::Store& store,
                                                   std::vector<ApiGroupVersion> groups,
                                                   MachineryOptions options);
  ~Machinery();
  Machinery(const Machinery&) = delete;
  Machinery& operator=(const Machinery&) = delete;

  // Thread-safe; call from any io thread. Answers /version, /api..., /apis..., /openapi/...;
  // nullopt for every other path and for the subresources.kubevirt.io/v1/namespaces/... routes.
  std::optional<HttpResponse> Serve(const HttpRequest& request) const;

  Registry& registry() { return *registry_; }
  const Discovery& discovery() const { return *discovery_; }
  WatchHub& watches() { return *watches_; }
  // Null when run_garbage_collector is false.
  GarbageCollector* garbage_collector() { return gc_.get(); }

  // An event recorder writing through this machinery's registry (its own writer thread). It
  // must be destroyed before the Machinery (and so before the store closes).
  std::unique_ptr<EventRecorder> NewEventRecorder(EventRecorderOptions options);

  // Ends every watch stream and stops the GC; further Serve calls still work (watches end at
  // once). Idempotent; the destructor calls it. Call before the store closes.
  void Stop();

 private:
  Machinery() = default;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<Discovery> discovery_;
  std::unique_ptr<WatchHub> watches_;
  std::unique_ptr<GarbageCollector> gc_;
  std::unique_ptr<ApiHandler> handler_;
  std::function<WallClock::time_point()> clock_;
};

}  // namespace edgevirt::api::machinery
