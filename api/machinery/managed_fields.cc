#include "api/machinery/managed_fields.h"

#include <algorithm>
#include <functional>
#include <map>

#include "api/machinery/errors.h"
#include "common/clock.h"

namespace edgevirt::api::machinery {
namespace {

std::string FieldKey(const std::string& name) { return "f:" + name; }

// Metadata that no manager owns (server-owned, identity, managedFields itself).
// Top-level members that field management does not track in `scope`: type meta always, and
// status or everything but status depending on the scope.
bool SkippedTopLevel(std::string_view k, FieldScope scope) {
  if (k == "apiVersion" || k == "kind") return true;
  if (scope == FieldScope::kStatus && k != "status") return true;
  if (scope == FieldScope::kMainWithStatus && k == "status") return true;
  return false;
}

bool IsUnmanagedMetaField(std::string_view k) {
  return k == "name" || k == "namespace" || k == "uid" || k == "resourceVersion" ||
         k == "generation" || k == "creationTimestamp" || k == "selfLink" || k == "managedFields" ||
         k == "deletionTimestamp" || k == "deletionGracePeriodSeconds" || k == "generateName";
}

void AddAll(FieldSet::Path& path, const Json& v, FieldSet& out) {
  if (v.is_object() && !v.empty()) {
    for (const auto& [k, child] : v.items()) {
      path.push_back(FieldKey(k));
      AddAll(path, child, out);
      path.pop_back();
    }
    return;
  }
  out.Insert(path);
}

void CompareNode(FieldSet::Path& path, const Json* a, const Json* b, Comparison& out) {
  if (a == nullptr && b == nullptr) return;
  if (a == nullptr) {
    AddAll(path, *b, out.added);
    return;
  }
  if (b == nullptr) {
    AddAll(path, *a, out.removed);
    return;
  }
  if (a->is_object() && b->is_object()) {
    if (a->empty() && b->empty()) return;
    if (a->empty()) out.removed.Insert(path);
    if (b->empty()) out.added.Insert(path);
    auto ia = a->begin();
    auto ib = b->begin();
    // Both are std::map-backed: walk the keys in order.
    while (ia != a->end() || ib != b->end()) {
      if (ib == b->end() || (ia != a->end() && ia.key() < ib.key())) {
        path.push_back(FieldKey(ia.key()));
        CompareNode(path, &ia.value(), nullptr, out);
        path.pop_back();
        ++ia;
      } else if (ia == a->end() || ib.key() < ia.key()) {
        path.push_back(FieldKey(ib.key()));
        CompareNode(path, nullptr, &ib.value(), out);
        path.pop_back();
        ++ib;
      } else {
        path.push_back(FieldKey(ia.key()));
        CompareNode(path, &ia.value(), &ib.value(), out);
        path.pop_back();
        ++ia;
        ++ib;
      }
    }
    return;
  }
  if (*a == *b) return;
  if (a->is_object() && !a->empty()) {
    AddAll(path, *a, out.removed);
    out.added.Insert(path);
  } else if (b->is_object() && !b->empty()) {
    out.removed.Insert(path);
    AddAll(path, *b, out.added);
  } else {
    out.modified.Insert(path);
  }
}

// Deep merge of an apply configuration: maps merge, everything else replaces.
void MergeConfig(Json& target, const Json& config) {
  for (const auto& [k, v] : config.items()) {
    auto it = target.find(k);
    if (v.is_object() && it != target.end() && it->is_object()) {
      MergeConfig(*it, v);
    } else {
      target[k] = v;
    }
  }
}

// Removes the field at `path` ("f:" elements only) from `object`.
void RemovePath(Json& object, const FieldSet::Path& path) {
  Json* cur = &object;
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i].rfind("f:", 0) != 0 || !cur->is_object()) return;
    auto it = cur->find(path[i].substr(2));
    if (it == cur->end()) return;
    if (i + 1 == path.size()) {
      cur->erase(it);
      return;
    }
    cur = &*it;
  }
}

std::string ManagerText(const ManagedFieldsEntry& e) {
  std::string s = Quote(e.manager);
  if (!e.subresource.empty()) s += " with subresource " + Quote(e.subresource);
  if (e.operation == "Update") s += " using " + e.api_version;
  return s;
}

bool SameManager(const ManagedFieldsEntry& e, const std::string& manager,
                 const std::string& operation, const std::string& subresource) {
  return e.manager == manager && e.operation == operation && e.subresource == subresource;
}

}  // namespace

// ---- FieldSet ---------------------------------------------------------------------------------

bool FieldSet::Empty() const {
  if (member_) return false;
  for (const auto& [k, c] : children_) {
    if (!c.Empty()) return false;
  }
  return true;
}

void FieldSet::Insert(const Path& path) {
  FieldSet* cur = this;
  for (const auto& p : path) cur = &cur->children_[p];
  cur->member_ = true;
}

bool FieldSet::operator==(const FieldSet& other) const { return Paths() == other.Paths(); }

std::vector<FieldSet::Path> FieldSet::Paths() const {
  std::vector<Path> out;
  Path cur;
  std::function<void(const FieldSet&)> walk = [&](const FieldSet& s) {
    if (s.member_) out.push_back(cur);
    for (const auto& [k, c] : s.children_) {
      cur.push_back(k);
      walk(c);
      cur.pop_back();
    }
  };
  walk(*this);
  return out;
}

void FieldSet::Union(const FieldSet& other) {
  member_ = member_ || other.member_;
  for (const auto& [k, c] : other.children_) children_[k].Union(c);
}

namespace {

bool AnyMember(const FieldSet& s) { return !s.Empty(); }

}  // namespace

FieldSet FieldSet::Overlapping(const FieldSet& other) const {
  FieldSet out;
  // `other` covers this node entirely (a changed ancestor or this exact path).
  std::function<void(const FieldSet&, const FieldSet*, Path&, bool)> walk =
      [&](const FieldSet& mine, const FieldSet* theirs, Path& path, bool covered) {
        bool here_covered = covered || (theirs && theirs->member_);
        if (mine.member_) {
          // An owned atomic value overlaps when it, an ancestor or a descendant changed.
          if (here_covered || (theirs && AnyMember(*theirs))) out.Insert(path);
        }
        for (const auto& [k, c] : mine.children_) {
          const FieldSet* t = nullptr;
          if (theirs) {
            auto it = theirs->children_.find(k);
            if (it != theirs->children_.end()) t = &it->second;
          }
          if (!here_covered && t == nullptr) continue;
          path.push_back(k);
          walk(c, t, path, here_covered);
          path.pop_back();
        }
      };
  Path path;
  walk(*this, &other, path, false);
  return out;
}

void FieldSet::RemoveOverlapping(const FieldSet& other) {
  FieldSet overlap = Overlapping(other);
  std::function<bool(FieldSet&, const FieldSet&)> remove = [&](FieldSet& mine,
                                                               const FieldSet& drop) -> bool {
    if (drop.member_) mine.member_ = false;
    for (const auto& [k, c] : drop.children_) {
      auto it = mine.children_.find(k);
      if (it == mine.children_.end()) continue;
      if (remove(it->second, c)) mine.children_.erase(it);
    }
    return !mine.member_ && mine.children_.empty();
  };
  remove(*this, overlap);
}

FieldSet FieldSet::Minus(const FieldSet& other) const {
  FieldSet out;
  for (const auto& p : Paths()) {
    const FieldSet* cur = &other;
    bool found = true;
    for (const auto& e : p) {
      auto it = cur->children_.find(e);
      if (it == cur->children_.end()) {
        found = false;
        break;
      }
      cur = &it->second;
    }
    if (!found || !cur->member_) out.Insert(p);
  }
  return out;
}

Json FieldSet::ToFieldsV1() const {
  Json out = Json::object();
  if (member_ && !children_.empty()) out["."] = Json::object();
  for (const auto& [k, c] : children_) {
    if (c.Empty()) continue;
    out[k] = c.ToFieldsV1();
  }
  return out;
}

Result<FieldSet> FieldSet::FromFieldsV1(const Json& fields) {
  FieldSet out;
  if (!fields.is_object()) return MakeError(Code::kInvalid, "fieldsV1 must be an object");
  for (const auto& [k, v] : fields.items()) {
    if (k == ".") {
      out.member_ = true;
      continue;
    }
    if (k.size() < 2 || k[1] != ':') {
      return MakeError(Code::kInvalid, "invalid fieldsV1 path element " + Quote(k));
    }
    ASSIGN_OR_RETURN(FieldSet child, FromFieldsV1(v));
    if (child.children_.empty()) child.member_ = true;
    out.children_[k] = std::move(child);
  }
  return out;
}

std::string FieldSet::PathString(const Path& path) {
  std::string out;
  for (const auto& e : path) {
    if (e.rfind("f:", 0) == 0) {
      out += "." + e.substr(2);
    } else if (e.rfind("i:", 0) == 0) {
      out += "[" + e.substr(2) + "]";
    } else if (e.rfind("v:", 0) == 0) {
      out += "[=" + e.substr(2) + "]";
    } else if (e.rfind("k:", 0) == 0) {
      out += "[" + e.substr(2) + "]";
    } else {
      out += "." + e;
    }
  }
  return out;
}

// ---- managedFields entries --------------------------------------------------------------------

Result<std::vector<ManagedFieldsEntry>> DecodeManagedFields(const Json* managed_fields) {
  std::vector<ManagedFieldsEntry> out;
  if (managed_fields == nullptr || managed_fields->is_null()) return out;
  if (!managed_fields->is_array()) {
    return MakeError(Code::kInvalid, "metadata.managedFields must be a list");
  }
  for (const Json& e : *managed_fields) {
    if (!e.is_object()) return MakeError(Code::kInvalid, "managedFields entries must be objects");
    ManagedFieldsEntry entry;
    entry.manager = e.value("manager", "");
    entry.operation = e.value("operation", "");
    entry.api_version = e.value("apiVersion", "");
    entry.time = e.contains("time") && e["time"].is_string() ? e["time"].get<std::string>() : "";
    entry.subresource = e.value("subresource", "");
    std::string type = e.value("fieldsType", "FieldsV1");
    if (type != "FieldsV1") {
      return MakeError(Code::kInvalid, "managedFields fieldsType " + Quote(type) +
                                           " is not supported, only FieldsV1");
    }
    if (entry.operation != "Apply" && entry.operation != "Update") {
      return MakeError(Code::kInvalid, "managedFields operation " + Quote(entry.operation) +
                                           " must be Apply or Update");
    }
    if (auto it = e.find("fieldsV1"); it != e.end() && !it->is_null()) {
      ASSIGN_OR_RETURN(entry.fields, FieldSet::FromFieldsV1(*it));
    }
    out.push_back(std::move(entry));
  }
  return out;
}

Json EncodeManagedFields(std::vector<ManagedFieldsEntry> entries) {
  entries.erase(std::remove_if(entries.begin(), entries.end(),
                               [](const ManagedFieldsEntry& e) { return e.fields.Empty(); }),
                entries.end());
  auto seconds = [](const std::string& t) -> int64_t {
    if (t.empty()) return 0;
    auto p = ParseRfc3339(t);
    return p ? std::chrono::duration_cast<std::chrono::seconds>(p->time_since_epoch()).count() : 0;
  };
  std::stable_sort(entries.begin(), entries.end(),
                   [&](const ManagedFieldsEntry& p, const ManagedFieldsEntry& q) {
                     if (p.operation != q.operation) return p.operation < q.operation;
                     int64_t ps = seconds(p.time), qs = seconds(q.time);
                     if (ps != qs) return ps < qs;
                     if (p.manager != q.manager) return p.manager < q.manager;
                     if (p.api_version != q.api_version) return p.api_version < q.api_version;
                     return p.subresource < q.subresource;
                   });
  Json out = Json::array();
  for (const auto& e : entries) {
    Json j = Json::object();
    j["manager"] = e.manager;
    j["operation"] = e.operation;
    j["apiVersion"] = e.api_version;
    if (!e.time.empty()) j["time"] = e.time;
    j["fieldsType"] = "FieldsV1";
    j["fieldsV1"] = e.fields.ToFieldsV1();
    if (!e.subresource.empty()) j["subresource"] = e.subresource;
    out.push_back(std::move(j));
  }
  return out;
}

// ---- comparisons ------------------------------------------------------------------------------

Json StripForFieldManagement(const Json& object, FieldScope scope) {
  Json out = Json::object();
  if (!object.is_object()) return out;
  for (const auto& [k, v] : object.items()) {
    if (SkippedTopLevel(k, scope)) continue;
    if (k == "metadata") {
      if (!v.is_object()) continue;
      Json meta = Json::object();
      for (const auto& [mk, mv] : v.items()) {
        if (IsUnmanagedMetaField(mk)) continue;
        meta[mk] = mv;
      }
      if (!meta.empty()) out["metadata"] = std::move(meta);
      continue;
    }
    out[k] = v;
  }
  return out;
}

FieldSet LeafSet(const Json& object) {
  FieldSet out;
  if (!object.is_object()) return out;
  FieldSet::Path path;
  for (const auto& [k, v] : object.items()) {
    path.push_back(FieldKey(k));
    AddAll(path, v, out);
    path.pop_back();
  }
  return out;
}

Comparison Compare(const Json& old_object, const Json& new_object) {
  Comparison out;
  FieldSet::Path path;
  if (!old_object.is_object() || !new_object.is_object()) {
    CompareNode(path, &old_object, &new_object, out);
    return out;
  }
  // The root is never a leaf of its own: compare its fields.
  for (const auto& [k, v] : old_object.items()) {
    path.assign(1, FieldKey(k));
    auto it = new_object.find(k);
    CompareNode(path, &v, it == new_object.end() ? nullptr : &*it, out);
  }
  for (const auto& [k, v] : new_object.items()) {
    if (old_object.contains(k)) continue;
    path.assign(1, FieldKey(k));
    CompareNode(path, nullptr, &v, out);
  }
  return out;
}

namespace {

// The FieldsV1 of LeafSet(v) below one path element: a non-empty object recurses, anything else
// (scalars, arrays: atomic; empty objects) is a leaf, `{}`.
Json LeafFieldsV1(const Json& v) {
  Json out = Json::object();
  if (v.is_object()) {
    auto& fields = out.get_ref<Json::object_t&>();
    for (const auto& [k, child] : v.items()) fields.emplace(FieldKey(k), LeafFieldsV1(child));
  }
  return out;
}

}  // namespace

Json CreateManagedFields(const Json& object, FieldScope scope, const std::string& manager,
                         const std::string& api_version, const std::string& subresource,
                         const std::string& now) {
  // StripForFieldManagement + LeafSet + ToFieldsV1 in one walk.
  Json fields = Json::object();
  if (object.is_object()) {
    auto& out = fields.get_ref<Json::object_t&>();
    for (const auto& [k, v] : object.items()) {
      if (SkippedTopLevel(k, scope)) continue;
      if (k == "metadata") {
        if (!v.is_object()) continue;
        Json meta = Json::object();
        auto& meta_fields = meta.get_ref<Json::object_t&>();
        for (const auto& [mk, mv] : v.items()) {
          if (IsUnmanagedMetaField(mk)) continue;
          meta_fields.emplace(FieldKey(mk), LeafFieldsV1(mv));
        }
        if (!meta_fields.empty()) out.emplace(FieldKey(k), std::move(meta));
        continue;
      }
      out.emplace(FieldKey(k), LeafFieldsV1(v));
    }
  }
  Json result = Json::array();
  if (fields.empty()) return result;
  Json j = Json::object();
  j["manager"] = manager;
  j["operation"] = "Update";
  j["apiVersion"] = api_version;
  if (!now.empty()) j["time"] = now;
  j["fieldsType"] = "FieldsV1";
  j["fieldsV1"] = std::move(fields);
  if (!subresource.empty()) j["subresource"] = subresource;
  result.push_back(std::move(j));
  return result;
}

bool RecordUpdate(std::vector<ManagedFieldsEntry>& entries, const Json& old_object,
                  const Json& new_object, FieldScope scope, const std::string& manager,
                  const std::string& api_version, const std::string& subresource,
                  const std::string& now) {
  Comparison cmp = Compare(StripForFieldManagement(old_object, scope),
                           StripForFieldManagement(new_object, scope));
  if (cmp.Empty()) return false;
  FieldSet touched = cmp.added;
  touched.Union(cmp.modified);
  for (auto& e : entries) {
    e.fields.RemoveOverlapping(touched);
    e.fields.RemoveOverlapping(cmp.removed);
  }
  auto it = std::find_if(entries.begin(), entries.end(), [&](const ManagedFieldsEntry& e) {
    return SameManager(e, manager, "Update", subresource) && e.api_version == api_version;
  });
  if (it == entries.end()) {
    entries.push_back({manager, "Update", api_version, now, subresource, {}});
    it = entries.end() - 1;
  }
  it->fields.Union(touched);
  it->time = now;
  entries.erase(std::remove_if(entries.begin(), entries.end(),
                               [](const ManagedFieldsEntry& e) { return e.fields.Empty(); }),
                entries.end());
  return true;
}

ApplyResult ServerSideApply(const Json& live, std::vector<ManagedFieldsEntry> entries,
                            const Json& config, FieldScope scope, const std::string& manager,
                            const std::string& api_version, const std::string& subresource,
                            bool force, const std::string& now) {
  ApplyResult result;
  const Json live_s = StripForFieldManagement(live, scope);
  const Json config_s = StripForFieldManagement(config, scope);
  const FieldSet config_set = LeafSet(config_s);

  auto mine = std::find_if(entries.begin(), entries.end(), [&](const ManagedFieldsEntry& e) {
    return SameManager(e, manager, "Apply", subresource);
  });
  FieldSet previous = mine == entries.end() ? FieldSet() : mine->fields;
  FieldSet others;
  for (const auto& e : entries) {
    if (mine != entries.end() && &e == &*mine) continue;
    others.Union(e.fields);
  }

  result.object = live.is_object() ? live : Json::object();
  MergeConfig(result.object, config_s);
  // Fields this manager applied before and no longer does, and nobody else owns, go away.
  FieldSet prune = previous.Minus(config_set);
  for (const auto& p : prune.Paths()) {
    FieldSet single;
    single.Insert(p);
    if (!others.Overlapping(single).Empty()) continue;
    RemovePath(result.object, p);
  }

  Comparison cmp = Compare(live_s, StripForFieldManagement(result.object, scope));
  FieldSet changed = cmp.added;
  changed.Union(cmp.modified);
  changed.Union(cmp.removed);

  for (auto& e : entries) {
    if (mine != entries.end() && &e == &*mine) continue;
    FieldSet overlap = e.fields.Overlapping(changed);
    if (overlap.Empty()) continue;
    if (force) {
      e.fields.RemoveOverlapping(overlap);
      continue;
    }
    for (const auto& p : overlap.Paths()) {
      result.conflicts.push_back({ManagerText(e), FieldSet::PathString(p)});
    }
  }
  if (!result.conflicts.empty()) return result;

  for (auto& e : entries) e.fields.RemoveOverlapping(cmp.removed);
  bool ownership_changed = !(previous == config_set);
  if (mine == entries.end()) {
    entries.push_back({manager, "Apply", api_version, now, subresource, config_set});
    ownership_changed = true;
  } else {
    mine->fields = config_set;
    mine->api_version = api_version;
    if (ownership_changed || !cmp.Empty()) mine->time = now;
  }
  entries.erase(std::remove_if(entries.begin(), entries.end(),
                               [](const ManagedFieldsEntry& e) { return e.fields.Empty(); }),
                entries.end());
  result.entries = std::move(entries);
  result.changed = ownership_changed || !cmp.Empty();
  return result;
}

std::string ConflictMessage(const std::vector<ApplyConflict>& conflicts) {
  if (conflicts.size() == 1) {
    return "Apply failed with 1 conflict: conflict with " + conflicts[0].manager_text + ": " +
           conflicts[0].path;
  }
  std::map<std::string, std::vector<std::string>> by_manager;
  for (const auto& c : conflicts) by_manager[c.manager_text].push_back(c.path);
  std::string body;
  for (const auto& [m, paths] : by_manager) {
    if (!body.empty()) body += "\n";
    body += "conflicts with " + m + ":";
    for (const auto& p : paths) body += "\n- " + p;
  }
  return "Apply failed with " + std::to_string(conflicts.size()) + " conflicts: " + body;
}

}  // namespace edgevirt::api::machinery
