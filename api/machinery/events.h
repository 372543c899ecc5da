// core/v1 Events: the Event resource served under /api/v1 (so that `kubectl describe` shows
// them) and EventRecorder, the C++ API controllers use to record events about objects,
// aggregating repeats into `count`/`lastTimestamp` as client-go's recorder does.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "api/machinery/pvc.h"
#include "api/machinery/registry.h"
#include "api/machinery/services.h"
#include "api/resource.h"

namespace edgevirt::api::machinery {

struct CoreV1Options {
  PersistentVolumeClaimOptions claims;  // the default storage class
  ServiceOptions services;              // service_cidr, node_port_range
};

// The core/v1 group-version the machinery serves itself: Event (events, short name "ev",
// field selectors involvedObject.{kind,namespace,name,uid,apiVersion,resourceVersion,fieldPath},
// reason, reportingComponent, source, type; the apiserver's event printer columns), Secret
// (secrets.h), PersistentVolumeClaim (pvc.h) and Service (services.h).
ApiGroupVersion CoreV1(const CoreV1Options& options = {});

// What an event is about (core/v1 ObjectReference).
struct ObjectReference {
  std::string api_version;
  std::string kind;
  std::string ns;
  std::string name;
  std::string uid;
  std::string resource_version;
  std::string field_path;
};

// The reference to a full object (apiVersion, kind, namespace, name, uid, resourceVersion).
ObjectReference ReferenceTo(const Json& object);

enum class EventType { kNormal, kWarning };

struct EventRecorderOptions {
  std::string component;      // source.component and reportingComponent, e.g. "virt-controller"
  std::string host;           // source.host and reportingInstance; empty = none
  size_t queue_limit = 1000;  // events waiting to be written; more are dropped (and counted)
  size_t cache_size = 4096;   // remembered events for aggregation (LRU)
  // Per involved object: at most `burst` events, then one more per `refill` (client-go's spam
  // filter: 25 and 5 minutes).
  int burst = 25;
  std::chrono::seconds refill{300};
  std::function<WallClock::time_point()> clock;
};

// Records events asynchronously on its own writer thread: Record never blocks on the store (a
// reconcile must not wait for an fsync). An identical event (same object, type, reason, message
// and source) recorded again updates the existing Event: count + 1 and lastTimestamp = now.
class EventRecorder {
 public:
  EventRecorder(Registry& registry, EventRecorderOptions options);
  ~EventRecorder();  // writes what is queued, then stops
  EventRecorder(const EventRecorder&) = delete;
  EventRecorder& operator=(const EventRecorder&) = delete;

  void Record(const ObjectReference& object, EventType type, std::string reason,
              std::string message);
  // Waits until everything recorded before the call is written (tests, shutdown).
  void Flush();
  uint64_t dropped() const;

 private:
  struct Pending {
    ObjectReference object;
    EventType type;
    std::string reason;
    std::string message;
    WallClock::time_point time;
  };
  struct Cached {
    std::string ns;
    std::string name;
    int64_t count = 0;
    std::string first_timestamp;
  };
  struct Bucket {
    double tokens = 0;
    WallClock::time_point last;
  };
  void Run();
  void Write(const Pending& p);
  bool Allow(const Pending& p);
  WallClock::time_point Now() const;

  Registry& registry_;
  EventRecorderOptions options_;
  const ResourceType* events_ = nullptr;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<Pending> queue_;  // guarded by mu_
  uint64_t enqueued_ = 0;      // guarded by mu_
  uint64_t written_ = 0;       // guarded by mu_
  uint64_t dropped_ = 0;       // guarded by mu_
  bool stopping_ = false;      // guarded by mu_

  // Writer thread only.
  std::list<std::string> lru_;
  std::unordered_map<std::string, std::pair<Cached, std::list<std::string>::iterator>> cache_;
  std::map<std::string, Bucket> buckets_;
  std::thread thread_;
};

}  // namespace edgevirt::api::machinery
