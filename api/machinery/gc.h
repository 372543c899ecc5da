// The garbage collector: ownerReferences and the deletion propagation policies, as
// kube-controller-manager's garbagecollector does it, on one thread.
//
//  - Background (the default): once an owner is gone, its dependents are deleted (a dependent
//    with another owner that still exists only loses the dangling reference).
//  - Foreground: the owner carries the `foregroundDeletion` finalizer; its dependents are
//    deleted (those with blockOwnerDeletion in the foreground themselves) and the finalizer is
//    removed once no blocking dependent is left, which deletes the owner.
//  - Orphan: the owner carries the `orphan` finalizer; its dependents lose their ownerReference
//    to it, then the finalizer is removed.
// It also deletes Events older than `event_ttl` (the apiserver's --event-ttl).
//
// Level-triggered: it keeps an in-memory index (uid -> object, owner uid -> dependents) built
// from a full scan at start and kept current from a store watch on every kind; each event
// queues the objects whose state it may change, and processing re-reads them from the store.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/machinery/registry.h"

namespace edgevirt::api::machinery {

struct GarbageCollectorOptions {
  std::chrono::milliseconds event_ttl{3'600'000};
  std::chrono::milliseconds sweep_interval{60'000};  // event TTL sweeps and retries
};

class GarbageCollector {
 public:
  GarbageCollector(Registry& registry, GarbageCollectorOptions options);
  ~GarbageCollector();
  GarbageCollector(const GarbageCollector&) = delete;
  GarbageCollector& operator=(const GarbageCollector&) = delete;

  // Scans the store, then starts the thread. kUnavailable if the store is closing.
  Status Start();
  void Stop();
  // Waits until every store change up to now has been processed and no work is queued
  // (tests). False on timeout.
  bool WaitIdle(std::chrono::milliseconds timeout);

 private:
  struct OwnerRef {
    std::string api_version;
    std::string kind;
    std::string name;
    std::string uid;
    bool block = false;
  };
  struct Node {
    const ResourceType* rt = nullptr;
    store::ObjectKey key;
    std::vector<OwnerRef> owners;
  };

  Status Scan();
  void Run();
  void Observe(const store::Record& record, bool deleted);
  void Process(const std::string& uid);
  void ProcessOwner(const Node& node, const Json& object);
  void ProcessDependent(const Node& node, const Json& object);
  void SweepEvents();
  void Enqueue(const std::string& uid);

  Registry& registry_;
  GarbageCollectorOptions options_;
  WriteOptions write_options_;

  // Collector thread only.
  std::map<std::string, Node> nodes_;                        // uid -> node
  std::map<std::string, std::set<std::string>> dependents_;  // owner uid -> dependents
  std::deque<std::string> queue_;
  std::set<std::string> queued_;
  std::set<std::string> retry_;
  std::unique_ptr<store::Watch> watch_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;      // guarded by mu_
  uint64_t processed_rv_ = 0;  // guarded by mu_: store RV the collector has caught up with
  bool busy_ = false;          // guarded by mu_
  std::thread thread_;
};

}  // namespace edgevirt::api::machinery
