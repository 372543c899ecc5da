#include "api/machinery/gc.h"

#include <algorithm>

#include "api/machinery/codec.h"
#include "common/log.h"

namespace edgevirt::api::machinery {
namespace {

constexpr auto kPoll = std::chrono::milliseconds(100);
constexpr auto kRetryInterval = std::chrono::seconds(1);

bool Contains(const std::string& data, std::string_view needle) {
  return data.find(needle) != std::string::npos;
}

std::vector<std::string> Finalizers(const Json& o) {
  std::vector<std::string> out;
  auto m = o.find("metadata");
  if (m == o.end() || !m->is_object()) return out;
  auto f = m->find("finalizers");
  if (f == m->end() || !f->is_array()) return out;
  for (const Json& s : *f) {
    if (s.is_string()) out.push_back(s.get<std::string>());
  }
  return out;
}

bool Deleting(const Json& o) {
  auto m = o.find("metadata");
  return m != o.end() && m->is_object() && m->contains("deletionTimestamp") &&
         !(*m)["deletionTimestamp"].is_null();
}

Status RemoveFinalizer(Json& o, const std::string& finalizer) {
  Json& f = o["metadata"]["finalizers"];
  if (!f.is_array()) return Ok();
  Json next = Json::array();
  for (const Json& s : f) {
    if (!(s.is_string() && s.get<std::string>() == finalizer)) next.push_back(s);
  }
  if (next.empty()) {
    o["metadata"].erase("finalizers");
  } else {
    f = std::move(next);
  }
  return Ok();
}

Status RemoveOwnerRefs(Json& o, const std::set<std::string>& uids) {
  Json& refs = o["metadata"]["ownerReferences"];
  if (!refs.is_array()) return Ok();
  Json next = Json::array();
  for (const Json& r : refs) {
    if (r.is_object() && uids.count(r.value("uid", ""))) continue;
    next.push_back(r);
  }
  if (next.empty()) {
    o["metadata"].erase("ownerReferences");
  } else {
    refs = std::move(next);
  }
  return Ok();
}

}  // namespace

GarbageCollector::GarbageCollector(Registry& registry, GarbageCollectorOptions options)
    : registry_(registry), options_(options) {
  write_options_.admit = false;
  write_options_.field_manager = "garbage-collector";
}

GarbageCollector::~GarbageCollector() { Stop(); }

Status GarbageCollector::Scan() {
  store::Store& store = registry_.store();
  nodes_.clear();
  dependents_.clear();
  watch_.reset();
  const uint64_t rv = store.CurrentResourceVersion();
  store::WatchOptions wo;
  wo.from_rv = rv;
  ASSIGN_OR_RETURN(watch_, store.StartWatch(wo));
  for (const auto& gv : registry_.groups()) {
    for (const auto& rt : gv.resources) {
      store::ListOptions lo;
      lo.group = rt.group;
      lo.kind = rt.kind;
      ASSIGN_OR_RETURN(store::ListResult list, store.List(lo));
      for (const auto& r : list.items) Observe(r, false);
    }
  }
  return Ok();
}

Status GarbageCollector::Start() {
  RETURN_IF_ERROR(Scan());
  thread_ = std::thread([this] { Run(); });
  return Ok();
}

void GarbageCollector::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool GarbageCollector::WaitIdle(std::chrono::milliseconds timeout) {
  const auto deadline = MonoClock::now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    const uint64_t target = registry_.store().CurrentResourceVersion();
    if (processed_rv_ >= target && !busy_) return true;
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      return processed_rv_ >= registry_.store().CurrentResourceVersion() && !busy_;
    }
  }
}

void GarbageCollector::Enqueue(const std::string& uid) {
  if (queued_.insert(uid).second) queue_.push_back(uid);
}

void GarbageCollector::Observe(const store::Record& record, bool deleted) {
  const std::string& uid = record.uid;
  auto drop_edges = [&](const Node& node) {
    for (const auto& o : node.owners) {
      auto it = dependents_.find(o.uid);
      if (it == dependents_.end()) continue;
      it->second.erase(uid);
      if (it->second.empty()) dependents_.erase(it);
    }
  };
  if (deleted) {
    if (auto it = nodes_.find(uid); it != nodes_.end()) {
      drop_edges(it->second);
      // Owners waiting in the foreground for this dependent may now finish.
      for (const auto& o : it->second.owners) Enqueue(o.uid);
      nodes_.erase(it);
    }
    if (auto it = dependents_.find(uid); it != dependents_.end()) {
      for (const auto& d : it->second) Enqueue(d);
    }
    return;
  }
  // Cheap filter: most writes touch objects with neither owners nor a pending deletion.
  const bool maybe_owned = Contains(record.data, "\"ownerReferences\"");
  const bool maybe_deleting = Contains(record.data, "\"deletionTimestamp\"");
  if (!maybe_owned && !maybe_deleting) {
    if (auto it = nodes_.find(uid); it != nodes_.end()) {
      drop_edges(it->second);
      nodes_.erase(it);
    }
    return;
  }
  std::string_view bytes = ObjectBytes(record);
  Json object = Json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (object.is_discarded()) return;
  Node node;
  node.rt = registry_.ByKind(record.key.group, record.key.kind);
  node.key = record.key;
  if (auto m = object.find("metadata"); m != object.end() && m->is_object()) {
    if (auto refs = m->find("ownerReferences"); refs != m->end() && refs->is_array()) {
      for (const Json& r : *refs) {
        if (!r.is_object()) continue;
        OwnerRef o;
        o.api_version = r.value("apiVersion", "");
        o.kind = r.value("kind", "");
        o.name = r.value("name", "");
        o.uid = r.value("uid", "");
        auto b = r.find("blockOwnerDeletion");
        o.block = b != r.end() && b->is_boolean() && b->get<bool>();
        if (!o.uid.empty()) node.owners.push_back(std::move(o));
      }
    }
  }
  if (auto it = nodes_.find(uid); it != nodes_.end()) drop_edges(it->second);
  for (const auto& o : node.owners) dependents_[o.uid].insert(uid);
  if (node.owners.empty() && !Deleting(object)) {
    nodes_.erase(uid);
    return;
  }
  nodes_[uid] = std::move(node);
  Enqueue(uid);
}

void GarbageCollector::Process(const std::string& uid) {
  auto it = nodes_.find(uid);
  if (it == nodes_.end() || it->second.rt == nullptr) return;
  const Node node = it->second;
  auto record = registry_.store().Get(node.key);
  if (!record || record->uid != uid) return;
  auto object = DecodeRecord(*record);
  if (!object) return;
  if (Deleting(*object)) {
    ProcessOwner(node, *object);
  } else if (!node.owners.empty()) {
    ProcessDependent(node, *object);
  }
}

void GarbageCollector::ProcessOwner(const Node& node, const Json& object) {
  const std::string uid = object["metadata"].value("uid", "");
  const std::vector<std::string> finalizers = Finalizers(object);
  const bool orphan =
      std::find(finalizers.begin(), finalizers.end(), kFinalizerOrphan) != finalizers.end();
  const bool foreground =
      std::find(finalizers.begin(), finalizers.end(), kFinalizerForeground) != finalizers.end();
  if (!orphan && !foreground) return;
  std::set<std::string> deps;
  if (auto d = dependents_.find(uid); d != dependents_.end()) deps = d->second;

  if (orphan) {
    for (const auto& dep : deps) {
      auto n = nodes_.find(dep);
      if (n == nodes_.end() || n->second.rt == nullptr) continue;
      auto r = registry_.Mutate(
          *n->second.rt, n->second.key.ns, n->second.key.name, false,
          [&](Json& o) { return RemoveOwnerRefs(o, {uid}); }, write_options_);
      if (!r && r.error().code != 404) {
        EV_LOG(kWarning) << "garbage collector: orphaning " << n->second.key.ToString() << ": "
                         << r.error().message;
        retry_.insert(uid);
        return;
      }
    }
    auto r = registry_.Mutate(
        *node.rt, node.key.ns, node.key.name, false,
        [&](Json& o) { return RemoveFinalizer(o, kFinalizerOrphan); }, write_options_);
    if (!r && r.error().code != 404) retry_.insert(uid);
    return;
  }

  bool blocking_left = false;
  for (const auto& dep : deps) {
    auto n = nodes_.find(dep);
    if (n == nodes_.end() || n->second.rt == nullptr) continue;
    bool block = false;
    for (const auto& o : n->second.owners) {
      if (o.uid == uid) block = block || o.block;
    }
    auto rec = registry_.store().Get(n->second.key);
    if (!rec) continue;
    auto dep_object = DecodeRecord(*rec);
    if (dep_object && Deleting(*dep_object)) {
      if (block) blocking_left = true;
      continue;
    }
    DeleteRequest req;
    req.propagation_policy = block ? "Foreground" : "Background";
    req.precondition_uid = dep;
    auto r =
        registry_.Delete(*n->second.rt, n->second.key.ns, n->second.key.name, req, write_options_);
    if (!r) {
      if (r.error().code == 404) continue;
      EV_LOG(kWarning) << "garbage collector: deleting " << n->second.key.ToString() << ": "
                       << r.error().message;
      retry_.insert(uid);
      blocking_left = true;
      continue;
    }
    if (block && !r->deleted) blocking_left = true;
  }
  if (blocking_left) return;
  auto r = registry_.Mutate(
      *node.rt, node.key.ns, node.key.name, false,
      [&](Json& o) { return RemoveFinalizer(o, kFinalizerForeground); }, write_options_);
  if (!r && r.error().code != 404) retry_.insert(uid);
}

void GarbageCollector::ProcessDependent(const Node& node, const Json& object) {
  const std::string uid = object["metadata"].value("uid", "");
  std::set<std::string> dangling;
  for (const auto& o : node.owners) {
    const ResourceType* owner_rt = registry_.ByApiVersionKind(o.api_version, o.kind);
    if (owner_rt == nullptr) continue;  // a kind this server does not serve: cannot judge
    store::ObjectKey key{owner_rt->group, owner_rt->kind,
                         owner_rt->namespaced ? node.key.ns : std::string(), o.name};
    auto owner = registry_.store().Get(key);
    if (!owner) {
      if (owner.error().code == Code::kNotFound) dangling.insert(o.uid);
      continue;
    }
    if (owner->uid != o.uid) dangling.insert(o.uid);
  }
  if (dangling.empty()) return;
  std::set<std::string> all;
  for (const auto& o : node.owners) all.insert(o.uid);
  if (dangling.size() == all.size()) {
    DeleteRequest req;
    req.propagation_policy = "Background";
    req.precondition_uid = uid;
    auto r = registry_.Delete(*node.rt, node.key.ns, node.key.name, req, write_options_);
    if (!r && r.error().code != 404) {
      EV_LOG(kWarning) << "garbage collector: deleting " << node.key.ToString() << ": "
                       << r.error().message;
      retry_.insert(uid);
    }
    return;
  }
  auto r = registry_.Mutate(
      *node.rt, node.key.ns, node.key.name, false,
      [&](Json& o) { return RemoveOwnerRefs(o, dangling); }, write_options_);
  if (!r && r.error().code != 404) retry_.insert(uid);
}

void GarbageCollector::SweepEvents() {
  const ResourceType* events = registry_.ByKind("", "Event");
  if (events == nullptr || options_.event_ttl.count() <= 0) return;
  const auto cutoff = registry_.Now() - options_.event_ttl;
  store::ListOptions lo;
  lo.group = events->group;
  lo.kind = events->kind;
  auto list = registry_.store().List(lo);
  if (!list) return;
  for (const auto& r : list->items) {
    std::string_view bytes = ObjectBytes(r);
    Json e = Json::parse(bytes.begin(), bytes.end(), nullptr, false);
    if (e.is_discarded()) continue;
    std::string last = e.value("lastTimestamp", "");
    if (last.empty()) last = r.creation_timestamp;
    auto t = ParseRfc3339(last);
    if (!t || *t >= cutoff) continue;
    (void)registry_.store().Delete(r.key, r.resource_version, r.uid);
  }
}

void GarbageCollector::Run() {
  auto next_sweep = MonoClock::now() + options_.sweep_interval;
  auto next_retry = MonoClock::now() + kRetryInterval;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    // Drain the watch, then the work it produced.
    bool broken = false;
    while (watch_) {
      auto next = watch_->TryNext();
      if (!next) {
        broken = true;
        break;
      }
      if (!next->has_value()) break;
      const store::Event& ev = **next;
      Observe(ev.object, ev.type == store::EventType::kDeleted);
    }
    if (broken || !watch_) {
      // Fell behind, or the log was trimmed under us: start over from a full scan. While the
      // store is closing this fails; wait for Stop.
      if (Status s = Scan(); !s) {
        watch_.reset();
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, kPoll, [&] { return stopping_; });
        continue;
      }
      EV_LOG(kWarning) << "garbage collector: watch broke; rescanned the store";
    }
    while (!queue_.empty()) {
      std::string uid = std::move(queue_.front());
      queue_.pop_front();
      queued_.erase(uid);
      Process(uid);
    }
    const auto now = MonoClock::now();
    if (now >= next_retry) {
      for (const auto& uid : retry_) Enqueue(uid);
      retry_.clear();
      next_retry = now + kRetryInterval;
    }
    if (now >= next_sweep) {
      SweepEvents();
      next_sweep = now + options_.sweep_interval;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = !queue_.empty();
      processed_rv_ = std::max(processed_rv_, watch_->last_rv());
    }
    cv_.notify_all();
    if (!queue_.empty()) continue;
    // Block for the next change (or the poll interval: retries, sweeps, Stop).
    auto next = watch_->Next(kPoll);
    if (next && next->has_value()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy_ = true;
      }
      const store::Event& ev = **next;
      Observe(ev.object, ev.type == store::EventType::kDeleted);
    }
  }
}

}  // namespace edgevirt::api::machinery
