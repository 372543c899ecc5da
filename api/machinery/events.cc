#include "api/machinery/events.h"

#include <cstdio>
#include <set>

#include "api/machinery/codec.h"
#include "api/machinery/meta.h"
#include "api/machinery/secrets.h"
#include "common/log.h"

namespace edgevirt::api::machinery {
namespace {

std::string Str(const Json& o, std::initializer_list<const char*> path) {
  const Json* v = &o;
  for (const char* k : path) {
    if (!v->is_object()) return "";
    auto it = v->find(k);
    if (it == v->end()) return "";
    v = &*it;
  }
  if (v->is_string()) return v->get<std::string>();
  if (v->is_number()) return v->dump();
  return "";
}

const std::set<std::string>& EventFields() {
  static const std::set<std::string> k = {"action",
                                          "apiVersion",
                                          "count",
                                          "eventTime",
                                          "firstTimestamp",
                                          "involvedObject",
                                          "kind",
                                          "lastTimestamp",
                                          "message",
                                          "metadata",
                                          "reason",
                                          "related",
                                          "reportingComponent",
                                          "reportingInstance",
                                          "series",
                                          "source",
                                          "type"};
  return k;
}

const std::set<std::string>& ReferenceFields() {
  static const std::set<std::string> k = {"apiVersion", "fieldPath",       "kind", "name",
                                          "namespace",  "resourceVersion", "uid"};
  return k;
}

AdmitResult AdmitEvent(const AdmitRequest& req) {
  AdmitResult r;
  if (req.object == nullptr || req.op == Operation::kDelete) return r;
  Json& e = *req.object;
  auto check = [&](Json& node, const std::set<std::string>& known, const std::string& prefix) {
    if (!node.is_object()) return;
    for (auto it = node.begin(); it != node.end();) {
      if (known.count(it.key())) {
        ++it;
        continue;
      }
      r.unknown_fields.push_back(prefix + it.key());
      it = node.erase(it);
    }
  };
  check(e, EventFields(), "");
  if (auto it = e.find("involvedObject"); it != e.end()) {
    check(*it, ReferenceFields(), "involvedObject.");
  }
  if (auto it = e.find("related"); it != e.end()) check(*it, ReferenceFields(), "related.");
  if (auto it = e.find("source"); it != e.end()) {
    check(*it, {"component", "host"}, "source.");
  }
  if (auto it = e.find("series"); it != e.end()) {
    check(*it, {"count", "lastObservedTime"}, "series.");
  }
  if (req.field_validation == FieldValidation::kIgnore) r.unknown_fields.clear();

  const std::string ns = Str(e, {"metadata", "namespace"});
  const std::string involved_ns = Str(e, {"involvedObject", "namespace"});
  if (!involved_ns.empty() && involved_ns != ns) {
    r.invalid.push_back({"FieldValueInvalid",
                         "involvedObject.namespace: Invalid value: " + Quote(involved_ns) +
                             ": does not match event.namespace",
                         "involvedObject.namespace"});
  }
  const std::string type = Str(e, {"type"});
  if (!type.empty() && type != "Normal" && type != "Warning") {
    r.invalid.push_back(
        {"FieldValueNotSupported",
         "type: Unsupported value: " + Quote(type) + ": supported values: \"Normal\", \"Warning\"",
         "type"});
  }
  if (auto c = e.find("count"); c != e.end() && !c->is_null() && !c->is_number_integer()) {
    r.invalid.push_back({"FieldValueTypeInvalid",
                         "count: Invalid value: " + Dump(*c) + ": count must be an integer",
                         "count"});
  }
  return r;
}

std::string Age(const std::string& t, WallClock::time_point now) {
  if (t.empty()) return "<unknown>";
  return HumanAge(t, now);
}

std::vector<Json> EventCells(const Json& e, WallClock::time_point now) {
  std::string first = Str(e, {"firstTimestamp"});
  std::string first_age = first.empty() ? Age(Str(e, {"eventTime"}), now) : Age(first, now);
  std::string last = Str(e, {"lastTimestamp"});
  std::string last_age = last.empty() ? first_age : Age(last, now);
  int64_t count = 0;
  if (auto c = e.find("count"); c != e.end() && c->is_number_integer()) count = c->get<int64_t>();
  if (auto s = e.find("series"); s != e.end() && s->is_object()) {
    last_age = Age(Str(*s, {"lastObservedTime"}), now);
    if (auto c = s->find("count"); c != s->end() && c->is_number_integer()) {
      count = c->get<int64_t>();
    }
  } else if (count == 0) {
    count = 1;
  }
  if (count > 1) {
    last_age += " (x" + std::to_string(count) + " over " + first_age + ")";
  }
  std::string kind = Str(e, {"involvedObject", "kind"});
  for (char& c : kind) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string target = kind;
  std::string involved_name = Str(e, {"involvedObject", "name"});
  if (!involved_name.empty()) target += "/" + involved_name;
  std::string source = Str(e, {"source", "component"});
  std::string host = Str(e, {"source", "host"});
  if (source.empty()) source = Str(e, {"reportingComponent"});
  if (host.empty()) host = Str(e, {"reportingInstance"});
  if (!host.empty()) source += ", " + host;
  std::string message = Str(e, {"message"});
  while (!message.empty() && std::isspace(static_cast<unsigned char>(message.back()))) {
    message.pop_back();
  }
  while (!message.empty() && std::isspace(static_cast<unsigned char>(message.front()))) {
    message.erase(0, 1);
  }
  return {last_age,
          Str(e, {"type"}),
          Str(e, {"reason"}),
          target,
          Str(e, {"involvedObject", "fieldPath"}),
          source,
          message,
          first_age,
          count,
          Str(e, {"metadata", "name"})};
}

std::optional<std::string> EventField(const Json& e, const std::string& field) {
  static const std::map<std::string, std::vector<const char*>> kFields = {
      {"involvedObject.kind", {"involvedObject", "kind"}},
      {"involvedObject.namespace", {"involvedObject", "namespace"}},
      {"involvedObject.name", {"involvedObject", "name"}},
      {"involvedObject.uid", {"involvedObject", "uid"}},
      {"involvedObject.apiVersion", {"involvedObject", "apiVersion"}},
      {"involvedObject.resourceVersion", {"involvedObject", "resourceVersion"}},
      {"involvedObject.fieldPath", {"involvedObject", "fieldPath"}},
      {"reason", {"reason"}},
      {"reportingComponent", {"reportingComponent"}},
      {"source", {"source", "component"}},
      {"type", {"type"}},
  };
  auto it = kFields.find(field);
  if (it == kFields.end()) return std::nullopt;
  const Json* v = &e;
  for (const char* k : it->second) {
    if (!v->is_object()) return std::string();
    auto f = v->find(k);
    if (f == v->end()) return std::string();
    v = &*f;
  }
  return v->is_string() ? v->get<std::string>() : std::string();
}

Json ObjectReferenceSchema() {
  Json props = Json::object();
  for (const char* f :
       {"apiVersion", "fieldPath", "kind", "name", "namespace", "resourceVersion", "uid"}) {
    props[f] = {{"type", "string"}};
  }
  return {{"type", "object"},
          {"description",
           "ObjectReference contains enough information to let you inspect or "
           "modify the referred object."},
          {"properties", props},
          {"x-kubernetes-map-type", "atomic"}};
}

Json EventSchemas() {
  const std::string meta = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.";
  Json schemas = Json::object();
  schemas["io.k8s.api.core.v1.ObjectReference"] = ObjectReferenceSchema();
  schemas["io.k8s.api.core.v1.EventSource"] = {
      {"type", "object"},
      {"description", "EventSource contains information for an event."},
      {"properties",
       {{"component",
         {{"type", "string"}, {"description", "Component from which the event is generated."}}},
        {"host",
         {{"type", "string"}, {"description", "Node name on which the event is generated."}}}}}};
  schemas["io.k8s.api.core.v1.EventSeries"] = {
      {"type", "object"},
      {"description", "EventSeries contain information on series of events."},
      {"properties",
       {{"count", {{"type", "integer"}, {"format", "int32"}}},
        {"lastObservedTime", {{"allOf", Json::array({{{"$ref", meta + "MicroTime"}}})}}}}}};
  Json props = {
      {"action",
       {{"type", "string"},
        {"description", "What action was taken/failed regarding to the Regarding object."}}},
      {"apiVersion", {{"type", "string"}, {"description", "Always \"v1\"."}}},
      {"count",
       {{"type", "integer"},
        {"format", "int32"},
        {"description", "The number of times this event has occurred."}}},
      {"eventTime",
       {{"allOf", Json::array({{{"$ref", meta + "MicroTime"}}})},
        {"description", "Time when this Event was first observed."}}},
      {"firstTimestamp",
       {{"allOf", Json::array({{{"$ref", meta + "Time"}}})},
        {"description", "The time at which the event was first recorded."}}},
      {"involvedObject",
       {{"allOf",
         Json::array({{{"$ref", "#/components/schemas/io.k8s.api.core.v1.ObjectReference"}}})},
        {"default", Json::object()},
        {"description", "The object that this event is about."}}},
      {"kind", {{"type", "string"}, {"description", "Always \"Event\"."}}},
      {"lastTimestamp",
       {{"allOf", Json::array({{{"$ref", meta + "Time"}}})},
        {"description",
         "The time at which the most recent occurrence of this event was recorded."}}},
      {"message",
       {{"type", "string"},
        {"description", "A human-readable description of the status of this operation."}}},
      {"metadata",
       {{"allOf", Json::array({{{"$ref", meta + "ObjectMeta"}}})},
        {"default", Json::object()},
        {"description", "Standard object's metadata."}}},
      {"reason",
       {{"type", "string"},
        {"description",
         "A short, machine understandable string that gives the reason for the transition into the "
         "object's current status."}}},
      {"related",
       {{"allOf",
         Json::array({{{"$ref", "#/components/schemas/io.k8s.api.core.v1.ObjectReference"}}})},
        {"description", "Optional secondary object for more complex actions."}}},
      {"reportingComponent",
       {{"type", "string"},
        {"default", ""},
        {"description", "Name of the controller that emitted this Event."}}},
      {"reportingInstance",
       {{"type", "string"}, {"default", ""}, {"description", "ID of the controller instance."}}},
      {"series",
       {{"allOf", Json::array({{{"$ref", "#/components/schemas/io.k8s.api.core.v1.EventSeries"}}})},
        {"description", "Data about the Event series this event represents."}}},
      {"source",
       {{"allOf", Json::array({{{"$ref", "#/components/schemas/io.k8s.api.core.v1.EventSource"}}})},
        {"default", Json::object()},
        {"description", "The component reporting this event."}}},
      {"type", {{"type", "string"}, {"description", "Type of this event (Normal, Warning)."}}},
  };
  schemas["io.k8s.api.core.v1.Event"] = {
      {"type", "object"},
      {"description", "Event is a report of an event somewhere in the cluster."},
      {"required", {"metadata", "involvedObject"}},
      {"properties", props},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "Event"}, {"version", "v1"}}})}};
  schemas["io.k8s.api.core.v1.EventList"] = {
      {"type", "object"},
      {"description", "EventList is a list of events."},
      {"required", {"items"}},
      {"properties",
       {{"apiVersion", {{"type", "string"}}},
        {"items",
         {{"type", "array"},
          {"items", {{"$ref", "#/components/schemas/io.k8s.api.core.v1.Event"}}}}},
        {"kind", {{"type", "string"}}},
        {"metadata", {{"allOf", Json::array({{{"$ref", meta + "ListMeta"}}})}}}}},
      {"x-kubernetes-group-version-kind",
       Json::array({{{"group", ""}, {"kind", "EventList"}, {"version", "v1"}}})}};
  return schemas;
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

ApiGroupVersion CoreV1(const CoreV1Options& options) {
  ResourceType ev;
  ev.group = "";
  ev.version = "v1";
  ev.kind = "Event";
  ev.list_kind = "EventList";
  ev.plural = "events";
  ev.singular = "event";
  ev.short_names = {"ev"};
  ev.namespaced = true;
  ev.status_subresource = false;
  ev.verbs = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"};
  ev.admit = AdmitEvent;
  ev.default_columns = false;
  ev.columns = {
      {"Last Seen", "string", "",
       "The time at which the most recent occurrence of this event was recorded.", 0},
      {"Type", "string", "",
       "Type of this event (Normal, Warning), new types could be added in the future", 0},
      {"Reason", "string", "",
       "This should be a short, machine understandable string that gives the reason for the "
       "transition into the object's current status.",
       0},
      {"Object", "string", "", "The object that this event is about.", 0},
      {"Subobject", "string", "",
       "If referring to a piece of an object instead of an entire object, this string should "
       "contain a valid JSON/Go field access statement.",
       1},
      {"Source", "string", "", "The component reporting this event.", 1},
      {"Message", "string", "", "A human-readable description of the status of this operation.", 0},
      {"First Seen", "string", "", "The time at which the event was first recorded.", 1},
      {"Count", "string", "", "The number of times this event has occurred.", 1},
      {"Name", "string", "name", "Name must be unique within a namespace.", 1},
  };
  ev.timed_cells = EventCells;
  ev.field_value = EventField;
  ev.schema_name = "io.k8s.api.core.v1.Event";

  ApiGroupVersion gv;
  gv.group = "";
  gv.version = "v1";
  gv.resources = {std::move(ev), SecretResource(), PersistentVolumeClaimResource(options.claims),
                  ServiceResource(options.services)};
  gv.schemas = EventSchemas();
  gv.schemas.update(SecretSchemas());
  gv.schemas.update(PersistentVolumeClaimSchemas());
  gv.schemas.update(ServiceSchemas());
  return gv;
}

ObjectReference ReferenceTo(const Json& object) {
  ObjectReference r;
  r.api_version = Str(object, {"apiVersion"});
  r.kind = Str(object, {"kind"});
  r.ns = Str(object, {"metadata", "namespace"});
  r.name = Str(object, {"metadata", "name"});
  r.uid = Str(object, {"metadata", "uid"});
  r.resource_version = Str(object, {"metadata", "resourceVersion"});
  return r;
}

EventRecorder::EventRecorder(Registry& registry, EventRecorderOptions options)
    : registry_(registry), options_(std::move(options)) {
  events_ = registry_.ByKind("", "Event");
  thread_ = std::thread([this] { Run(); });
}

EventRecorder::~EventRecorder() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

WallClock::time_point EventRecorder::Now() const {
  return options_.clock ? options_.clock() : WallClock::now();
}

void EventRecorder::Record(const ObjectReference& object, EventType type, std::string reason,
                           std::string message) {
  Pending p{object, type, std::move(reason), std::move(message), Now()};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    if (queue_.size() >= options_.queue_limit) {
      ++dropped_;
      return;
    }
    queue_.push_back(std::move(p));
    ++enqueued_;
  }
  cv_.notify_one();
}

void EventRecorder::Flush() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t target = enqueued_;
  idle_cv_.wait(lock, [&] { return written_ >= target || (stopping_ && queue_.empty()); });
}

uint64_t EventRecorder::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

void EventRecorder::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty() && stopping_) break;
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    if (events_ != nullptr && Allow(p)) Write(p);
    lock.lock();
    ++written_;
    idle_cv_.notify_all();
  }
  idle_cv_.notify_all();
}

bool EventRecorder::Allow(const Pending& p) {
  const std::string key =
      p.object.kind + "/" + p.object.ns + "/" + p.object.name + "/" + p.object.uid;
  auto [it, inserted] = buckets_.try_emplace(key);
  Bucket& b = it->second;
  if (inserted) {
    b.tokens = options_.burst;
    b.last = p.time;
  } else if (options_.refill.count() > 0) {
    double elapsed = std::chrono::duration<double>(p.time - b.last).count();
    b.tokens = std::min<double>(options_.burst, b.tokens + elapsed / options_.refill.count());
    b.last = p.time;
  }
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  if (buckets_.size() > options_.cache_size) buckets_.erase(buckets_.begin());
  return true;
}

void EventRecorder::Write(const Pending& p) {
  const std::string type = p.type == EventType::kWarning ? "Warning" : "Normal";
  const std::string ns = p.object.ns.empty() ? "default" : p.object.ns;
  const std::string now = FormatRfc3339(p.time);
  const std::string key = options_.component + "\x1f" + options_.host + "\x1f" +
                          p.object.api_version + "\x1f" + p.object.kind + "\x1f" + p.object.ns +
                          "\x1f" + p.object.name + "\x1f" + p.object.uid + "\x1f" + type + "\x1f" +
                          p.reason + "\x1f" + p.message;
  WriteOptions wo;
  wo.admit = false;
  wo.field_manager = options_.component.empty() ? "edgevirtd" : options_.component;

  if (auto it = cache_.find(key); it != cache_.end()) {
    Cached& c = it->second.first;
    const int64_t count = c.count + 1;
    auto updated = registry_.Mutate(
        *events_, c.ns, c.name, false,
        [&](Json& e) -> Status {
          e["count"] = count;
          e["lastTimestamp"] = now;
          return Ok();
        },
        wo);
    if (updated) {
      c.count = count;
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return;
    }
    if (updated.error().code != 404) {
      EV_LOG(kWarning) << "event " << c.ns << "/" << c.name << ": " << updated.error().message;
      return;
    }
    lru_.erase(it->second.second);
    cache_.erase(it);  // expired meanwhile: record it anew
  }

  Json e = Json::object();
  e["apiVersion"] = "v1";
  e["kind"] = "Event";
  Json involved = Json::object();
  if (!p.object.api_version.empty()) involved["apiVersion"] = p.object.api_version;
  if (!p.object.field_path.empty()) involved["fieldPath"] = p.object.field_path;
  if (!p.object.kind.empty()) involved["kind"] = p.object.kind;
  if (!p.object.name.empty()) involved["name"] = p.object.name;
  if (!p.object.ns.empty()) involved["namespace"] = p.object.ns;
  if (!p.object.resource_version.empty()) involved["resourceVersion"] = p.object.resource_version;
  if (!p.object.uid.empty()) involved["uid"] = p.object.uid;
  e["involvedObject"] = std::move(involved);
  e["reason"] = p.reason;
  e["message"] = p.message;
  Json source = Json::object();
  if (!options_.component.empty()) source["component"] = options_.component;
  if (!options_.host.empty()) source["host"] = options_.host;
  e["source"] = std::move(source);
  e["firstTimestamp"] = now;
  e["lastTimestamp"] = now;
  e["count"] = 1;
  e["type"] = type;
  e["eventTime"] = nullptr;
  e["reportingComponent"] = options_.component;
  e["reportingInstance"] = options_.host;
  std::string base = p.object.name.empty() ? std::string("event") : p.object.name;
  for (int attempt = 0; attempt < 4; ++attempt) {
    const uint64_t nanos = static_cast<uint64_t>(UnixNanos(p.time)) + attempt;
    e["metadata"] = {{"name", base + "." + Hex(nanos)}, {"namespace", ns}};
    auto created = registry_.Create(*events_, ns, e, wo);
    if (created) {
      Cached c{ns, created->record.key.name, 1, now};
      lru_.push_front(key);
      cache_[key] = {c, lru_.begin()};
      while (cache_.size() > options_.cache_size && !lru_.empty()) {
        cache_.erase(lru_.back());
        lru_.pop_back();
      }
      return;
    }
    if (created.error().reason != "AlreadyExists") {
      EV_LOG(kWarning) << "recording event " << p.reason << " about " << p.object.kind << " " << ns
                       << "/" << p.object.name << ": " << created.error().message;
      return;
    }
  }
}

}  // namespace edgevirt::api::machinery
