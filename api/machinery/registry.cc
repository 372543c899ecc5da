#include "api/machinery/registry.h"

#include <algorithm>
#include <set>

#include "api/machinery/codec.h"
#include "api/machinery/managed_fields.h"
#include "api/machinery/meta.h"
#include "api/machinery/patch.h"

namespace edgevirt::api::machinery {
namespace {

constexpr int kMaxPatchRetries = 5;  // the apiserver's maxRetryWhenPatchConflicts
constexpr int kMaxMutateRetries = 16;
constexpr int kMaxGenerateNameRetries = 8;

const Json* Field(const Json& o, const char* key) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(key);
  return it == o.end() ? nullptr : &*it;
}

std::string GetStr(const Json& o, const char* key) {
  const Json* v = Field(o, key);
  return v && v->is_string() ? v->get<std::string>() : std::string();
}

const Json* MetaField(const Json& o, const char* key) {
  const Json* m = Field(o, "metadata");
  return m ? Field(*m, key) : nullptr;
}

std::string MetaStr(const Json& o, const char* key) {
  const Json* v = MetaField(o, key);
  return v && v->is_string() ? v->get<std::string>() : std::string();
}

Json& Meta(Json& o) {
  Json& m = o["metadata"];
  if (!m.is_object()) m = Json::object();
  return m;
}

std::vector<std::string> Finalizers(const Json& o) {
  std::vector<std::string> out;
  const Json* f = MetaField(o, "finalizers");
  if (f && f->is_array()) {
    for (const Json& s : *f) {
      if (s.is_string()) out.push_back(s.get<std::string>());
    }
  }
  return out;
}

// Differences outside metadata (the customresource strategy bumps generation on these). With a
// status subresource, status never counts: main-resource writes reset it and /status writes
// change nothing else.
bool NonMetadataDiffers(const Json& a, const Json& b, bool status_subresource) {
  auto skip = [&](const std::string& k) {
    return k == "metadata" || k == "apiVersion" || k == "kind" ||
           (status_subresource && k == "status");
  };
  for (const auto& [k, v] : a.items()) {
    if (skip(k)) continue;
    auto it = b.find(k);
    if (it == b.end() || *it != v) return true;
  }
  for (const auto& [k, v] : b.items()) {
    if (skip(k)) continue;
    if (a.find(k) == a.end()) return true;
  }
  return false;
}

FieldScope ScopeFor(const ResourceType& rt, bool status) {
  if (status) return FieldScope::kStatus;
  return rt.status_subresource ? FieldScope::kMainWithStatus : FieldScope::kAll;
}

std::string ManagerOf(const WriteOptions& o) {
  return o.field_manager.empty() ? std::string("unknown") : o.field_manager;
}

// "Object 'Kind' is missing in '…'" / apiVersion checks of a decoded body.
std::optional<ApiError> CheckTypeMeta(const ResourceType& rt, const Json& object) {
  if (!object.is_object()) {
    return BadRequest("the body of the request must be a JSON or YAML object, got " +
                      std::string(object.type_name()));
  }
  std::string kind = GetStr(object, "kind");
  std::string api_version = GetStr(object, "apiVersion");
  if (kind.empty()) {
    std::string text = Dump(object);
    if (text.size() > 256) text = text.substr(0, 256) + "...";
    return BadRequest("Object 'Kind' is missing in '" + text + "'");
  }
  if (api_version.empty()) {
    std::string text = Dump(object);
    if (text.size() > 256) text = text.substr(0, 256) + "...";
    return BadRequest("Object 'apiVersion' is missing in '" + text + "'");
  }
  if (api_version != rt.ApiVersion()) {
    return BadRequest("the API version in the data (" + api_version +
                      ") does not match the expected API version (" + rt.ApiVersion() + ")");
  }
  if (kind != rt.kind) {
    return BadRequest("the kind in the data (" + kind + ") does not match the expected kind (" +
                      rt.kind + ")");
  }
  return std::nullopt;
}

// Admission and validation of a write; fills *warnings. `old_object` null for creates.
std::optional<ApiError> AdmitAndValidate(const ResourceType& rt, Operation op, Json& object,
                                         const Json* old_object, bool status,
                                         const WriteOptions& options, const ObjectLister* lister,
                                         std::vector<std::string>* warnings) {
  // metav1.ObjectMeta is a typed struct: unknown metadata fields are decoding errors.
  std::vector<std::string> unknown;
  if (Json* meta = object.contains("metadata") ? &object["metadata"] : nullptr;
      meta && meta->is_object()) {
    for (auto it = meta->begin(); it != meta->end();) {
      if (IsObjectMetaField(it.key())) {
        ++it;
        continue;
      }
      unknown.push_back("metadata." + it.key());
      it = meta->erase(it);
    }
  }
  AdmitResult ar;
  if (options.admit && rt.admit) {
    AdmitRequest req;
    req.op = op;
    req.field_validation = options.field_validation;
    req.old_object = old_object;
    req.object = &object;
    req.status_subresource = status;
    req.list = lister;
    ar = rt.admit(req);
  }
  if (!ar.decode_error.empty()) {
    return BadRequest(rt.kind + " in version " + Quote(rt.version) + " cannot be handled as a " +
                      rt.kind + ": " + ar.decode_error);
  }
  if (!ar.internal_error.empty()) return Internal(ar.internal_error);
  for (auto& f : ar.unknown_fields) {
    if (std::find(unknown.begin(), unknown.end(), f) == unknown.end()) unknown.push_back(f);
  }
  if (!unknown.empty()) {
    if (options.field_validation == FieldValidation::kStrict) {
      std::string list;
      for (size_t i = 0; i < unknown.size(); ++i) {
        if (i) list += ", ";
        list += "unknown field " + Quote(unknown[i]);
      }
      return BadRequest(rt.kind + " in version " + Quote(rt.version) + " cannot be handled as a " +
                        rt.kind + ": strict decoding error: " + list);
    }
    if (options.field_validation == FieldValidation::kWarn) {
      for (const auto& f : unknown) warnings->push_back("unknown field " + Quote(f));
    }
  }
  std::vector<StatusCause> errors;
  if (!status) {
    const Json* meta = Field(object, "metadata");
    const Json* old_meta = old_object ? Field(*old_object, "metadata") : nullptr;
    ValidateObjectMeta(meta, op == Operation::kUpdate ? (old_meta ? old_meta : meta) : nullptr,
                       rt.namespaced, &errors);
  }
  const std::string name = MetaStr(object, "name");
  if (!ar.invalid.empty() && ar.denied_by.empty()) {
    errors.insert(errors.end(), ar.invalid.begin(), ar.invalid.end());
  }
  if (!errors.empty()) return Invalid(rt, name, std::move(errors));
  if (!ar.invalid.empty()) {
    ApiError e;
    e.code = 422;
    e.reason = "Invalid";
    std::string msgs;
    for (const auto& c : ar.invalid) {
      if (!msgs.empty()) msgs += ", ";
      msgs += c.message;
    }
    e.message = "admission webhook " + Quote(ar.denied_by) + " denied the request: " + msgs;
    e.has_details = true;
    e.causes = ar.invalid;
    return e;
  }
  warnings->insert(warnings->end(), ar.warnings.begin(), ar.warnings.end());
  return std::nullopt;
}

// base64url without padding (the continue token).
std::string Base64Url(std::string_view in) {
  static const char kTable[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  while (i + 2 < in.size()) {
    uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += kTable[(n >> 6) & 63];
    out += kTable[n & 63];
    i += 3;
  }
  if (i + 1 == in.size()) {
    uint32_t n = uint8_t(in[i]) << 16;
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
  } else if (i + 2 == in.size()) {
    uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += kTable[(n >> 18) & 63];
    out += kTable[(n >> 12) & 63];
    out += kTable[(n >> 6) & 63];
  }
  return out;
}

std::optional<std::string> UnBase64Url(std::string_view in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-' || c == '+') return 62;
    if (c == '_' || c == '/') return 63;
    return -1;
  };
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = val(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string EncodeContinue(uint64_t rv, const store::ObjectKey& last) {
  Json j = {{"v", "meta.k8s.io/v1"}, {"rv", rv}, {"start", last.ns + "/" + last.name + '\0'}};
  return Base64Url(Dump(j));
}

Outcome<std::pair<uint64_t, std::pair<std::string, std::string>>> DecodeContinue(
    const std::string& token) {
  auto bad = [](const std::string& why) { return BadRequest("continue key is not valid: " + why); };
  auto raw = UnBase64Url(token);
  if (!raw) return bad("illegal base64 data");
  Json j = Json::parse(*raw, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("invalid JSON");
  if (j.value("v", "") != "meta.k8s.io/v1") {
    return bad("server does not recognize this encoded key");
  }
  if (!j.contains("rv") || !j["rv"].is_number_unsigned()) {
    return bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)");
  }
  std::string start = j.value("start", "");
  if (!start.empty() && start.back() == '\0') start.pop_back();
  size_t slash = start.find('/');
  if (start.empty() || slash == std::string::npos) return bad("encoded start key is invalid");
  return std::make_pair(j["rv"].get<uint64_t>(),
                        std::make_pair(start.substr(0, slash), start.substr(slash + 1)));
}

store::ObjectKey KeyOf(const ResourceType& rt, const std::string& ns, const std::string& name) {
  return store::ObjectKey{rt.group, rt.kind, rt.namespaced ? ns : std::string(), name};
}

ApiError StoreError(const Error& e, const ResourceType& rt, const std::string& name) {
  return FromError(e, &rt, name);
}

}  // namespace

std::string WriteResult::Body() const {
  if (dry_run_object) return Dump(*dry_run_object);
  return Render(record);
}

std::string DefaultFieldManager(std::string_view user_agent) {
  std::string_view prefix = user_agent.substr(0, user_agent.find('/'));
  while (!prefix.empty() && prefix.back() == ' ') prefix.remove_suffix(1);
  if (prefix.empty()) return "unknown";
  return std::string(prefix.substr(0, 128));
}

struct Registry::UpdateContext {
  const WriteOptions* options = nullptr;
  bool status = false;
  // managedFields in the object were computed by server-side apply.
  bool managed_precomputed = false;
};

Registry::Registry(store::Store& store, std::vector<ApiGroupVersion> groups,
                   std::function<WallClock::time_point()> clock)
    : store_(store), groups_(std::move(groups)), clock_(std::move(clock)) {}

WallClock::time_point Registry::Now() const { return clock_ ? clock_() : WallClock::now(); }

const ResourceType* Registry::ByPlural(std::string_view group, std::string_view version,
                                       std::string_view plural) const {
  for (const auto& gv : groups_) {
    if (gv.group != group || gv.version != version) continue;
    for (const auto& rt : gv.resources) {
      if (rt.plural == plural) return &rt;
    }
  }
  return nullptr;
}

const ResourceType* Registry::ByKind(std::string_view group, std::string_view kind) const {
  for (const auto& gv : groups_) {
    if (gv.group != group) continue;
    for (const auto& rt : gv.resources) {
      if (rt.kind == kind) return &rt;
    }
  }
  return nullptr;
}

const ResourceType* Registry::ByApiVersionKind(std::string_view api_version,
                                               std::string_view kind) const {
  size_t slash = api_version.find('/');
  std::string_view group = slash == std::string_view::npos ? "" : api_version.substr(0, slash);
  std::string_view version =
      slash == std::string_view::npos ? api_version : api_version.substr(slash + 1);
  for (const auto& gv : groups_) {
    if (gv.group != group || gv.version != version) continue;
    for (const auto& rt : gv.resources) {
      if (rt.kind == kind) return &rt;
    }
  }
  return nullptr;
}

ObjectLister Registry::Lister() const {
  return [this](std::string_view group, std::string_view kind,
                const std::string& ns) -> Result<std::vector<Json>> {
    const ResourceType* other = ByKind(group, kind);
    if (other == nullptr) {
      return MakeError(Code::kNotFound,
                       std::string(kind) + "." + std::string(group) + " is not served");
    }
    ListQuery query;
    query.ns = ns;
    auto page = List(*other, query);
    if (!page) return page.error().ToError();
    std::vector<Json> out;
    out.reserve(page->items.size());
    for (const auto& rec : page->items) {
      auto decoded = DecodeRecord(rec);
      if (!decoded) return std::move(decoded).error();
      out.push_back(std::move(*decoded));
    }
    return out;
  };
}

Outcome<store::Record> Registry::Get(const ResourceType& rt, const std::string& ns,
                                     const std::string& name) const {
  auto r = store_.Get(KeyOf(rt, ns, name));
  if (!r) return StoreError(r.error(), rt, name);
  return std::move(*r);
}

Outcome<Json> Registry::GetObject(const ResourceType& rt, const std::string& ns,
                                  const std::string& name) const {
  auto r = Get(rt, ns, name);
  if (!r) return r.error();
  auto object = DecodeRecord(*r);
  if (!object) return Internal(object.error().message);
  return std::move(*object);
}

Outcome<ListPage> Registry::List(const ResourceType& rt, const ListQuery& query) const {
  if (Status s = query.fields.Validate(rt); !s) return BadRequest(s.error().message);
  ListPage page;
  std::optional<std::pair<std::string, std::string>> start_after;
  bool continued = false;
  if (!query.continue_token.empty()) {
    auto decoded = DecodeContinue(query.continue_token);
    if (!decoded) return decoded.error();
    page.resource_version = decoded->first;
    start_after = decoded->second;
    continued = true;
  }
  auto matches = [&](const store::Record& r) -> bool {
    bool need_object = !query.labels.Empty() || query.fields.NeedsObject();
    if (!need_object) return query.fields.Matches(rt, r.key.ns, r.key.name, nullptr);
    std::string_view bytes = ObjectBytes(r);
    Json j = Json::parse(bytes.begin(), bytes.end(), nullptr, false);
    if (j.is_discarded()) return false;
    if (!query.labels.Empty()) {
      const Json* labels = MetaField(j, "labels");
      if (!query.labels.Matches(labels)) return false;
    }
    if (!query.fields.Empty()) {
      SetServerFields(r, j);
      if (!query.fields.Matches(rt, r.key.ns, r.key.name, &j)) return false;
    }
    return true;
  };

  // One name in one namespace: a point read (kubectl wait/delete list with metadata.name=X).
  auto name = query.fields.RequiredValue("metadata.name");
  if (name && (!query.ns.empty() || !rt.namespaced) && !continued) {
    page.resource_version = store_.CurrentResourceVersion();
    auto r = store_.Get(KeyOf(rt, query.ns, *name));
    if (r) {
      if (matches(*r)) page.items.push_back(std::move(*r));
    } else if (r.error().code != Code::kNotFound) {
      return StoreError(r.error(), rt, *name);
    }
    return page;
  }

  const bool filtering = !query.labels.Empty() || !query.fields.Empty();
  size_t chunk =
      query.limit == 0 ? 0 : (filtering ? std::max<size_t>(query.limit, 500) : query.limit + 1);
  bool first = true;
  while (true) {
    store::ListOptions lo;
    lo.group = rt.group;
    lo.kind = rt.kind;
    lo.ns = rt.namespaced ? query.ns : std::string();
    lo.start_after = start_after;
    lo.limit = chunk;
    auto r = store_.List(lo);
    if (!r) return StoreError(r.error(), rt, "");
    if (first && !continued) page.resource_version = r->resource_version;
    first = false;
    for (size_t i = 0; i < r->items.size(); ++i) {
      store::Record& rec = r->items[i];
      start_after = std::make_pair(rec.key.ns, rec.key.name);
      if (!matches(rec)) continue;
      if (query.limit != 0 && page.items.size() == query.limit) {
        // A further match exists: the page is full and there is more.
        page.continue_token = EncodeContinue(page.resource_version, page.items.back().key);
        return page;
      }
      page.items.push_back(std::move(rec));
    }
    if (!r->more) break;
  }
  return page;
}

Outcome<WriteResult> Registry::Create(const ResourceType& rt, const std::string& ns, Json object,
                                      const WriteOptions& options) {
  return CreateObject(rt, ns, std::move(object), options, nullptr);
}

Outcome<WriteResult> Registry::CreateObject(const ResourceType& rt, const std::string& ns,
                                            Json object, const WriteOptions& options,
                                            const Json* precomputed_managed_fields) {
  if (auto e = CheckTypeMeta(rt, object)) return *e;
  Json& meta = Meta(object);
  std::string obj_ns = MetaStr(object, "namespace");
  if (rt.namespaced) {
    if (obj_ns.empty()) {
      meta["namespace"] = ns;
    } else if (obj_ns != ns) {
      return BadRequest(
          "the namespace of the provided object does not match the namespace sent on the "
          "request");
    }
  } else {
    meta.erase("namespace");
  }
  if (!MetaStr(object, "resourceVersion").empty()) {
    ApiError e;
    e.code = 500;
    e.message = "resourceVersion should not be set on objects to be created";
    return e;
  }
  // BeforeCreate: server-owned and deletion state cleared, status dropped with /status.
  meta.erase("deletionTimestamp");
  meta.erase("deletionGracePeriodSeconds");
  meta.erase("resourceVersion");
  meta.erase("selfLink");
  meta["generation"] = 1;
  const WallClock::time_point now = Now();
  const std::string now_text = FormatRfc3339(now);
  meta["creationTimestamp"] = now_text;
  meta.erase("uid");
  if (rt.status_subresource) object.erase("status");
  object["apiVersion"] = rt.ApiVersion();
  object["kind"] = rt.kind;

  const std::string generate_name = MetaStr(object, "generateName");
  if (MetaStr(object, "name").empty() && !generate_name.empty()) {
    Meta(object)["name"] = GenerateName(generate_name);
  }

  // managedFields: the creator owns every field it set.
  if (precomputed_managed_fields != nullptr) {
    Meta(object)["managedFields"] = *precomputed_managed_fields;
  } else {
    std::vector<ManagedFieldsEntry> entries;
    const Json* incoming = MetaField(object, "managedFields");
    if (incoming && incoming->is_array() && !incoming->empty() &&
        !(incoming->size() == 1 && (*incoming)[0].is_object() && (*incoming)[0].empty())) {
      auto decoded = DecodeManagedFields(incoming);
      if (decoded) entries = std::move(*decoded);
    }
    Json encoded;
    if (entries.empty()) {
      encoded = CreateManagedFields(object, ScopeFor(rt, false), ManagerOf(options),
                                    rt.ApiVersion(), "", now_text);
    } else {
      RecordUpdate(entries, Json::object(), object, ScopeFor(rt, false), ManagerOf(options),
                   rt.ApiVersion(), "", now_text);
      encoded = EncodeManagedFields(std::move(entries));
    }
    if (encoded.empty()) {
      Meta(object).erase("managedFields");
    } else {
      Meta(object)["managedFields"] = std::move(encoded);
    }
  }

  WriteResult result;
  // Kinds that allocate unique values at admission: admission through the write, one at a time.
  std::unique_lock<std::mutex> serialized(serialized_writes_, std::defer_lock);
  const ObjectLister list = rt.serialize_writes ? Lister() : ObjectLister();
  if (rt.serialize_writes) serialized.lock();
  if (auto e = AdmitAndValidate(rt, Operation::kCreate, object, nullptr, false, options,
                                rt.serialize_writes ? &list : nullptr, &result.warnings)) {
    return *e;
  }
  object["apiVersion"] = rt.ApiVersion();
  object["kind"] = rt.kind;
  std::string name = MetaStr(object, "name");
  const std::string effective_ns = rt.namespaced ? MetaStr(object, "namespace") : std::string();

  if (options.dry_run) {
    Json shown = object;
    Meta(shown)["uid"] = NewUuid();
    Meta(shown).erase("resourceVersion");
    result.created = true;
    result.record.key = KeyOf(rt, effective_ns, name);
    result.record.generation = 1;
    result.record.creation_timestamp = now_text;
    result.dry_run_object = std::move(shown);
    return result;
  }

  for (int attempt = 0;; ++attempt) {
    auto created = store_.Create(KeyOf(rt, effective_ns, name), EncodeForStore(object));
    if (created) {
      result.record = std::move(*created);
      result.created = true;
      return result;
    }
    if (created.error().code == Code::kAlreadyExists && !generate_name.empty() &&
        attempt < kMaxGenerateNameRetries) {
      name = GenerateName(generate_name);
      Meta(object)["name"] = name;
      continue;
    }
    return StoreError(created.error(), rt, name);
  }
}

Outcome<WriteResult> Registry::Update(const ResourceType& rt, const std::string& ns,
                                      const std::string& name, Json object, bool status,
                                      const WriteOptions& options) {
  if (status && !rt.status_subresource) return PathNotFound();
  if (auto e = CheckTypeMeta(rt, object)) return *e;
  std::string obj_name = MetaStr(object, "name");
  if (obj_name != name) {
    return BadRequest("the name of the object (" + obj_name +
                      ") does not match the name on the URL (" + name + ")");
  }
  if (rt.namespaced) {
    std::string obj_ns = MetaStr(object, "namespace");
    if (obj_ns.empty()) {
      Meta(object)["namespace"] = ns;
    } else if (obj_ns != ns) {
      return BadRequest(
          "the namespace of the provided object does not match the namespace sent on the "
          "request");
    }
  }
  auto current = Get(rt, ns, name);
  if (!current) return current.error();
  // Custom resources allow no unconditional update.
  std::string rv_text = MetaStr(object, "resourceVersion");
  if (rv_text.empty()) {
    ApiError e = Invalid(
        rt, name,
        {FieldInvalid("metadata.resourceVersion", "0x0", "must be specified for an update")});
    e.kind = rt.plural;  // the store names the resource here, not the kind
    e.message = rt.QualifiedResource() + " " + Quote(name) +
                " is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified "
                "for an update";
    return e;
  }
  if (rv_text != std::to_string(current->resource_version)) {
    return Conflict(rt, name, kOptimisticLockMessage);
  }
  auto old_object = DecodeRecord(*current);
  if (!old_object) return Internal(old_object.error().message);
  UpdateContext ctx;
  ctx.options = &options;
  ctx.status = status;
  return CommitUpdate(rt, *current, *old_object, std::move(object), ctx);
}

Outcome<WriteResult> Registry::CommitUpdate(const ResourceType& rt, const store::Record& old_record,
                                            const Json& old_object, Json object,
                                            const UpdateContext& ctx) {
  const WriteOptions& options = *ctx.options;
  const std::string& name = old_record.key.name;
  const WallClock::time_point now = Now();
  const std::string now_text = FormatRfc3339(now);
  if (!object.is_object()) return BadRequest("the object must be a JSON object");

  // BeforeUpdate / PrepareForUpdate.
  if (ctx.status) {
    // Only status (and managedFields) may change through /status.
    Json updated = old_object;
    if (auto it = object.find("status"); it != object.end()) {
      updated["status"] = *it;
    } else {
      updated.erase("status");
    }
    if (const Json* mf = MetaField(object, "managedFields")) {
      Meta(updated)["managedFields"] = *mf;
    } else {
      Meta(updated).erase("managedFields");
    }
    object = std::move(updated);
  } else if (rt.status_subresource) {
    if (auto it = old_object.find("status"); it != old_object.end()) {
      object["status"] = *it;
    } else {
      object.erase("status");
    }
  }
  object["apiVersion"] = rt.ApiVersion();
  object["kind"] = rt.kind;
  Json& meta = Meta(object);
  static const Json kNull;
  const Json* old_meta_ptr = Field(old_object, "metadata");
  const Json& old_meta = old_meta_ptr ? *old_meta_ptr : kNull;
  auto old_field = [&](const char* key) -> Json {
    const Json* v = old_meta.is_object() ? Field(old_meta, key) : nullptr;
    return v ? *v : Json(nullptr);
  };
  if (!meta.contains("uid") || MetaStr(object, "uid").empty()) meta["uid"] = old_field("uid");
  meta["creationTimestamp"] = old_field("creationTimestamp");
  meta["generation"] = old_field("generation");
  meta["resourceVersion"] = old_field("resourceVersion");
  meta.erase("selfLink");
  if (old_meta.contains("deletionTimestamp")) {
    meta["deletionTimestamp"] = old_field("deletionTimestamp");
  } else {
    meta.erase("deletionTimestamp");
  }
  if (old_meta.contains("deletionGracePeriodSeconds") &&
      !meta.contains("deletionGracePeriodSeconds")) {
    meta["deletionGracePeriodSeconds"] = old_field("deletionGracePeriodSeconds");
  }
  if (!rt.namespaced) meta.erase("namespace");

  // managedFields (before admission: defaulted fields stay unowned, as with webhooks).
  if (!ctx.managed_precomputed) {
    const Json* incoming = MetaField(object, "managedFields");
    const Json* old_mf = MetaField(old_object, "managedFields");
    std::vector<ManagedFieldsEntry> entries;
    bool given = incoming && incoming->is_array() && !incoming->empty();
    bool reset =
        given && incoming->size() == 1 && (*incoming)[0].is_object() && (*incoming)[0].empty();
    if (given && !reset) {
      auto decoded = DecodeManagedFields(incoming);
      if (!decoded) return BadRequest("metadata.managedFields: " + decoded.error().message);
      entries = std::move(*decoded);
    } else if (!reset) {
      auto decoded = DecodeManagedFields(old_mf);
      if (decoded) entries = std::move(*decoded);
    }
    bool changed =
        RecordUpdate(entries, old_object, object, ScopeFor(rt, ctx.status), ManagerOf(options),
                     rt.ApiVersion(), ctx.status ? "status" : "", now_text);
    if (!changed && !given && old_mf != nullptr) {
      meta["managedFields"] = *old_mf;  // byte-stable when nothing changed
    } else {
      Json encoded = EncodeManagedFields(std::move(entries));
      if (encoded.empty()) {
        meta.erase("managedFields");
      } else {
        meta["managedFields"] = std::move(encoded);
      }
    }
  }

  WriteResult result;
  std::unique_lock<std::mutex> serialized(serialized_writes_, std::defer_lock);
  const ObjectLister list = rt.serialize_writes ? Lister() : ObjectLister();
  if (rt.serialize_writes) serialized.lock();
  if (auto e = AdmitAndValidate(rt, Operation::kUpdate, object, &old_object, ctx.status, options,
                                rt.serialize_writes ? &list : nullptr, &result.warnings)) {
    return *e;
  }
  object["apiVersion"] = rt.ApiVersion();
  object["kind"] = rt.kind;
  {
    // Admission must not change identity or server-owned fields.
    Json& m = Meta(object);
    m["uid"] = old_field("uid");
    m["creationTimestamp"] = old_field("creationTimestamp");
    m["generation"] = old_field("generation");
    m["resourceVersion"] = old_field("resourceVersion");
    m["name"] = old_field("name");
    if (rt.namespaced) m["namespace"] = old_field("namespace");
  }

  const bool bump = NonMetadataDiffers(old_object, object, rt.status_subresource);
  static const Json kNoLabels = Json::object();
  const Json* previous_labels = MetaField(old_object, "labels");
  if (previous_labels == nullptr || !previous_labels->is_object()) previous_labels = &kNoLabels;
  // An update that removes the last finalizer of an object being deleted deletes it.
  const bool being_deleted = old_meta.contains("deletionTimestamp");
  if (being_deleted && Finalizers(object).empty()) {
    result.deleted = true;
    if (options.dry_run) {
      result.record = old_record;
      result.record.data = EncodeForStore(object);
      return result;
    }
    auto deleted = store_.Delete(old_record.key, old_record.resource_version, old_record.uid);
    if (!deleted) return StoreError(deleted.error(), rt, name);
    result.record = std::move(*deleted);
    result.record.data = EncodeForStore(object);
    return result;
  }
  if (object == old_object) {
    result.record = old_record;  // no-op: nothing written, resourceVersion unchanged
    return result;
  }
  if (options.dry_run) {
    result.record = old_record;
    result.record.data = EncodeForStore(object, previous_labels);
    if (bump) ++result.record.generation;
    return result;
  }
  auto updated = store_.Update(old_record.key, EncodeForStore(object, previous_labels),
                               old_record.resource_version, bump);
  if (!updated) return StoreError(updated.error(), rt, name);
  result.record = std::move(*updated);
  return result;
}

Outcome<WriteResult> Registry::Patch(const ResourceType& rt, const std::string& ns,
                                     const std::string& name, PatchType type, const Json& patch,
                                     bool status, bool force, const WriteOptions& options) {
  if (status && !rt.status_subresource) return PathNotFound();
  for (int attempt = 0;; ++attempt) {
    auto current = store_.Get(KeyOf(rt, ns, name));
    if (!current) {
      if (current.error().code == Code::kNotFound && type == PatchType::kApply && !status) {
        // Server-side apply creates a missing object.
        if (!patch.is_object()) return BadRequest("the apply configuration must be an object");
        if (auto e = CheckTypeMeta(rt, patch)) return *e;
        std::string cfg_name = MetaStr(patch, "name");
        if (!cfg_name.empty() && cfg_name != name) {
          return BadRequest("the name of the object (" + cfg_name +
                            ") does not match the name on the URL (" + name + ")");
        }
        ApplyResult ar =
            ServerSideApply(Json::object(), {}, patch, ScopeFor(rt, false), ManagerOf(options),
                            rt.ApiVersion(), "", force, FormatRfc3339(Now()));
        Json object = std::move(ar.object);
        object["apiVersion"] = rt.ApiVersion();
        object["kind"] = rt.kind;
        Meta(object)["name"] = name;
        if (rt.namespaced) Meta(object)["namespace"] = ns;
        Json managed = EncodeManagedFields(std::move(ar.entries));
        auto created = CreateObject(rt, ns, std::move(object), options, &managed);
        if (!created && created.error().reason == "AlreadyExists" && attempt < kMaxPatchRetries) {
          continue;  // raced with a create: apply onto it
        }
        return created;
      }
      return StoreError(current.error(), rt, name);
    }
    auto old_object = DecodeRecord(*current);
    if (!old_object) return Internal(old_object.error().message);
    const std::string current_rv = std::to_string(current->resource_version);

    Json object;
    bool user_rv = false;
    UpdateContext ctx;
    ctx.options = &options;
    ctx.status = status;
    switch (type) {
      case PatchType::kMerge: {
        object = *old_object;
        Status s = ApplyMergePatch(object, patch);
        if (!s) return BadRequest(s.error().message);
        break;
      }
      case PatchType::kJson: {
        object = *old_object;
        Status s = ApplyJsonPatch(object, patch);
        if (!s) {
          if (!patch.is_array()) return BadRequest(s.error().message);
          // NewGenericServerResponse(422, ...): the reason stays on the server.
          ApiError e;
          e.code = 422;
          e.reason = "Invalid";
          e.message = "the server rejected our request due to an error in our request";
          e.has_details = true;
          return e;
        }
        break;
      }
      case PatchType::kApply: {
        if (!patch.is_object()) return BadRequest("the apply configuration must be an object");
        if (auto e = CheckTypeMeta(rt, patch)) return *e;
        std::string cfg_name = MetaStr(patch, "name");
        if (!cfg_name.empty() && cfg_name != name) {
          return BadRequest("the name of the object (" + cfg_name +
                            ") does not match the name on the URL (" + name + ")");
        }
        std::string cfg_rv = MetaStr(patch, "resourceVersion");
        if (!cfg_rv.empty()) {
          user_rv = true;
          if (cfg_rv != current_rv) return Conflict(rt, name, kOptimisticLockMessage);
        }
        auto entries = DecodeManagedFields(MetaField(*old_object, "managedFields"));
        ApplyResult ar = ServerSideApply(
            *old_object, entries ? std::move(*entries) : std::vector<ManagedFieldsEntry>{}, patch,
            ScopeFor(rt, status), ManagerOf(options), rt.ApiVersion(), status ? "status" : "",
            force, FormatRfc3339(Now()));
        if (!ar.conflicts.empty()) {
          ApiError e;
          e.code = 409;
          e.reason = "Conflict";
          e.message = ConflictMessage(ar.conflicts);
          e.has_details = true;
          for (const auto& c : ar.conflicts) {
            e.causes.push_back({"FieldManagerConflict", "conflict with " + c.manager_text, c.path});
          }
          return e;
        }
        object = std::move(ar.object);
        Json managed = EncodeManagedFields(std::move(ar.entries));
        if (managed.empty()) {
          Meta(object).erase("managedFields");
        } else {
          Meta(object)["managedFields"] = std::move(managed);
        }
        ctx.managed_precomputed = true;
        break;
      }
    }
    if (type != PatchType::kApply) {
      // A resourceVersion the patch sets is a precondition; without one the patch applies to
      // whatever is current (and is retried on a concurrent write).
      if (type == PatchType::kMerge) {
        user_rv = MetaField(patch, "resourceVersion") != nullptr;
      } else if (patch.is_array()) {
        for (const Json& op : patch) {
          if (op.is_object() && op.value("path", "") == "/metadata/resourceVersion") user_rv = true;
        }
      }
      if (!object.is_object()) return BadRequest("the patched object is not a JSON object");
      std::string rv = MetaStr(object, "resourceVersion");
      if (!rv.empty() && rv != current_rv) return Conflict(rt, name, kOptimisticLockMessage);
      if (MetaStr(object, "name") != name) {
        return Invalid(
            rt, name,
            {FieldInvalid("metadata.name", Quote(MetaStr(object, "name")), "field is immutable")});
      }
      if (rt.namespaced && MetaStr(object, "namespace") != ns) {
        return Invalid(rt, name,
                       {FieldInvalid("metadata.namespace", Quote(MetaStr(object, "namespace")),
                                     "field is immutable")});
      }
      if (auto e = CheckTypeMeta(rt, object)) return *e;
    }
    auto result = CommitUpdate(rt, *current, *old_object, std::move(object), ctx);
    if (!result && result.error().code == 409 && result.error().reason == "Conflict" && !user_rv &&
        attempt < kMaxPatchRetries) {
      continue;
    }
    return result;
  }
}

Outcome<WriteResult> Registry::Delete(const ResourceType& rt, const std::string& ns,
                                      const std::string& name, const DeleteRequest& request,
                                      const WriteOptions& options) {
  std::vector<StatusCause> option_errors;
  if (request.propagation_policy) {
    const std::string& p = *request.propagation_policy;
    if (p != "Orphan" && p != "Background" && p != "Foreground") {
      option_errors.push_back(FieldNotSupported("propagationPolicy", Quote(p),
                                                {"Foreground", "Background", "Orphan", "nil"}));
    }
    if (request.orphan_dependents) {
      option_errors.push_back(FieldInvalid("propagationPolicy", Quote(p),
                                           "orphanDependents and deletionPropagation cannot be "
                                           "both set"));
    }
  }
  if (request.grace_period_seconds && *request.grace_period_seconds < 0) {
    option_errors.push_back(FieldInvalid("gracePeriodSeconds",
                                         std::to_string(*request.grace_period_seconds),
                                         "must be greater than or equal to 0"));
  }
  if (!option_errors.empty()) return InvalidOptions("DeleteOptions", std::move(option_errors));

  for (int attempt = 0;; ++attempt) {
    auto current = Get(rt, ns, name);
    if (!current) return current.error();
    if (request.precondition_uid && *request.precondition_uid != current->uid) {
      return Conflict(rt, name,
                      "Precondition failed: UID in precondition: " + *request.precondition_uid +
                          ", UID in object meta: " + current->uid);
    }
    if (request.precondition_resource_version &&
        *request.precondition_resource_version != std::to_string(current->resource_version)) {
      return Conflict(
          rt, name,
          "Precondition failed: ResourceVersion in precondition: " +
              *request.precondition_resource_version +
              ", ResourceVersion in object meta: " + std::to_string(current->resource_version));
    }
    auto object = DecodeRecord(*current);
    if (!object) return Internal(object.error().message);
    if (rt.delete_guard) {
      if (auto refused = rt.delete_guard(*object, Lister())) {
        ApiError e;
        e.code = 409;
        e.reason = "Conflict";
        e.message = std::move(*refused);
        e.has_details = true;
        e.name = name;
        e.group = rt.group;
        e.kind = rt.plural;
        return e;
      }
    }

    // deletionFinalizersForGarbageCollection: the explicit policy wins, then a finalizer
    // already on the object, then the default for custom resources (delete dependents in the
    // background).
    std::vector<std::string> finalizers = Finalizers(*object);
    bool orphan = false, foreground = false;
    if (request.orphan_dependents) {
      orphan = *request.orphan_dependents;
    } else if (request.propagation_policy) {
      orphan = *request.propagation_policy == "Orphan";
      foreground = *request.propagation_policy == "Foreground";
    } else {
      for (const auto& f : finalizers) {
        if (f == kFinalizerOrphan) orphan = true;
        if (f == kFinalizerForeground) foreground = true;
      }
    }
    std::vector<std::string> next;
    for (const auto& f : finalizers) {
      if (f != kFinalizerOrphan && f != kFinalizerForeground) next.push_back(f);
    }
    if (orphan) next.push_back(kFinalizerOrphan);
    if (foreground) next.push_back(kFinalizerForeground);

    WriteResult result;
    if (next.empty()) {
      result.deleted = true;
      if (options.admit && rt.admit) {
        AdmitRequest req;
        req.op = Operation::kDelete;
        req.old_object = &*object;
        AdmitResult ar = rt.admit(req);
        if (!ar.invalid.empty()) {
          ApiError e = Invalid(rt, name, ar.invalid);
          if (!ar.denied_by.empty()) {
            std::string msgs;
            for (const auto& c : ar.invalid) msgs += (msgs.empty() ? "" : ", ") + c.message;
            e.message = "admission webhook " + Quote(ar.denied_by) + " denied the request: " + msgs;
          }
          return e;
        }
      }
      if (options.dry_run) {
        result.record = std::move(*current);
        return result;
      }
      auto deleted = store_.Delete(current->key, current->resource_version, current->uid);
      if (!deleted) {
        if (deleted.error().code == Code::kConflict && attempt < kMaxMutateRetries) continue;
        return StoreError(deleted.error(), rt, name);
      }
      result.record = std::move(*deleted);
      return result;
    }
    Json updated = *object;
    Json& meta = Meta(updated);
    Json fin = Json::array();
    for (const auto& f : next) fin.push_back(f);
    meta["finalizers"] = std::move(fin);
    bool newly_deleting = !meta.contains("deletionTimestamp");
    if (newly_deleting) meta["deletionTimestamp"] = FormatRfc3339(Now());
    meta["deletionGracePeriodSeconds"] = 0;
    if (updated == *object) {
      result.record = std::move(*current);
      return result;
    }
    if (options.dry_run) {
      result.record = *current;
      result.record.data = EncodeForStore(updated);
      if (newly_deleting) ++result.record.generation;
      return result;
    }
    static const Json kNoLabels = Json::object();
    const Json* previous_labels = MetaField(*object, "labels");
    if (previous_labels == nullptr || !previous_labels->is_object()) previous_labels = &kNoLabels;
    auto written = store_.Update(current->key, EncodeForStore(updated, previous_labels),
                                 current->resource_version, newly_deleting);
    if (!written) {
      if (written.error().code == Code::kConflict && attempt < kMaxMutateRetries) continue;
      return StoreError(written.error(), rt, name);
    }
    result.record = std::move(*written);
    return result;
  }
}

Outcome<std::vector<WriteResult>> Registry::DeleteCollection(const ResourceType& rt,
                                                             const ListQuery& query,
                                                             const DeleteRequest& request,
                                                             const WriteOptions& options) {
  ListQuery all = query;
  all.limit = 0;
  all.continue_token.clear();
  auto page = List(rt, all);
  if (!page) return page.error();
  std::vector<WriteResult> out;
  for (const auto& item : page->items) {
    auto r = Delete(rt, item.key.ns, item.key.name, request, options);
    if (!r) {
      if (r.error().code == 404) continue;  // deleted meanwhile
      return r.error();
    }
    out.push_back(std::move(*r));
  }
  return out;
}

Outcome<WriteResult> Registry::Mutate(const ResourceType& rt, const std::string& ns,
                                      const std::string& name, bool status,
                                      const std::function<Status(Json&)>& mutate,
                                      const WriteOptions& options) {
  if (status && !rt.status_subresource) return PathNotFound();
  for (int attempt = 0;; ++attempt) {
    auto current = Get(rt, ns, name);
    if (!current) return current.error();
    auto old_object = DecodeRecord(*current);
    if (!old_object) return Internal(old_object.error().message);
    Json object = *old_object;
    if (Status s = mutate(object); !s) return FromError(s.error(), &rt, name);
    UpdateContext ctx;
    ctx.options = &options;
    ctx.status = status;
    auto result = CommitUpdate(rt, *current, *old_object, std::move(object), ctx);
    if (!result && result.error().code == 409 && result.error().reason == "Conflict" &&
        attempt < kMaxMutateRetries) {
      continue;
    }
    return result;
  }
}

}  // namespace edgevirt::api::machinery
