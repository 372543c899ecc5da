#include "api/machinery/handler.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "api/machinery/codec.h"
#include "api/machinery/protobuf.h"
#include "api/machinery/table.h"

namespace edgevirt::api::machinery {
namespace {

const std::vector<std::string> kBodyTypes = {"application/json", "application/yaml"};
const std::vector<std::string> kPatchTypes = {
    "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"};

// What the client accepts, as far as the machinery can produce it.
struct Negotiated {
  enum class As { kObject, kTable, kPartial } as = As::kObject;
  std::string api_version = "meta.k8s.io/v1";
};

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

Negotiated Negotiate(std::string_view accept) {
  Negotiated n;
  if (accept.empty()) return n;
  size_t start = 0;
  while (start <= accept.size()) {
    size_t comma = accept.find(',', start);
    std::string_view range = accept.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    start = comma == std::string_view::npos ? accept.size() + 1 : comma + 1;
    std::string type;
    std::string as, g, v;
    size_t p = 0;
    bool first = true;
    while (p <= range.size()) {
      size_t semi = range.find(';', p);
      std::string_view part =
          Trim(range.substr(p, semi == std::string_view::npos ? std::string_view::npos : semi - p));
      p = semi == std::string_view::npos ? range.size() + 1 : semi + 1;
      if (first) {
        type = std::string(part);
        for (char& c : type) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        first = false;
        continue;
      }
      size_t eq = part.find('=');
      if (eq == std::string_view::npos) continue;
      std::string_view key = Trim(part.substr(0, eq));
      std::string_view value = Trim(part.substr(eq + 1));
      if (key == "as") as = std::string(value);
      if (key == "g") g = std::string(value);
      if (key == "v") v = std::string(value);
    }
    if (type != "application/json" && type != "*/*" && type != "application/*") continue;
    if (as.empty()) return n;  // plain JSON
    if (g == "meta.k8s.io" && (v == "v1" || v == "v1beta1")) {
      if (as == "Table") {
        n.as = Negotiated::As::kTable;
        n.api_version = "meta.k8s.io/" + v;
        return n;
      }
      if (as == "PartialObjectMetadata" || as == "PartialObjectMetadataList") {
        n.as = Negotiated::As::kPartial;
        n.api_version = "meta.k8s.io/" + v;
        return n;
      }
    }
  }
  return n;  // nothing we produce was named: answer JSON (kubectl always lists it)
}

// strconv.ParseBool.
std::optional<bool> ParseBool(const std::string& s) {
  if (s == "1" || s == "t" || s == "T" || s == "TRUE" || s == "true" || s == "True") return true;
  if (s == "0" || s == "f" || s == "F" || s == "FALSE" || s == "false" || s == "False") {
    return false;
  }
  return std::nullopt;
}

std::optional<int64_t> ParseInt(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (*end != '\0' || errno != 0) return std::nullopt;
  return v;
}

bool QueryBool(const HttpRequest& r, std::string_view name) {
  auto v = r.QueryParam(name);
  if (!v) return false;
  return ParseBool(*v).value_or(false);
}

HttpResponse JsonResponse(int status, std::string body, const std::vector<std::string>& warnings,
                          const char* content_type = "application/json") {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  r.headers.emplace_back("Content-Type", content_type);
  for (const auto& w : warnings) r.headers.emplace_back("Warning", "299 - " + Quote(w));
  return r;
}

constexpr char kTableContentType[] = "application/json;as=Table;v=v1;g=meta.k8s.io";

Outcome<WriteOptions> ParseWriteOptions(const HttpRequest& r, const char* options_kind) {
  WriteOptions o;
  if (auto dry = r.QueryParam("dryRun")) {
    if (*dry == "All") {
      o.dry_run = true;
    } else if (!dry->empty()) {
      return InvalidOptions(
          options_kind, {FieldNotSupported("dryRun", "[]string{" + Quote(*dry) + "}", {"All"})});
    }
  }
  if (auto fm = r.QueryParam("fieldManager"); fm && !fm->empty()) {
    if (fm->size() > 128) {
      return InvalidOptions(
          options_kind,
          {{"FieldValueTooLong", "fieldManager: Too long: may not be more than 128 bytes",
            "fieldManager"}});
    }
    for (unsigned char c : *fm) {
      if (c < 0x20 || c == 0x7f) {
        return InvalidOptions(options_kind, {FieldInvalid("fieldManager", Quote(*fm),
                                                          "must only contain printable "
                                                          "characters")});
      }
    }
    o.field_manager = *fm;
  } else {
    o.field_manager = DefaultFieldManager(r.Header("user-agent"));
  }
  if (auto fv = r.QueryParam("fieldValidation"); fv && !fv->empty()) {
    if (*fv == "Strict") {
      o.field_validation = FieldValidation::kStrict;
    } else if (*fv == "Warn") {
      o.field_validation = FieldValidation::kWarn;
    } else if (*fv == "Ignore") {
      o.field_validation = FieldValidation::kIgnore;
    } else {
      return BadRequest("fieldValidation: Unsupported value: " + Quote(*fv) +
                        ": supported values: \"Ignore\", \"Warn\", \"Strict\"");
    }
  }
  return o;
}

// The body of POST/PUT by Content-Type (415 for anything but JSON and YAML).
Outcome<Json> DecodeBody(const HttpRequest& r) {
  std::string type = MediaType(r.Header("content-type"));
  Result<Json> parsed = MakeError(Code::kInvalid, "");
  if (type == "application/json") {
    parsed = ParseJsonBody(r.body);
  } else if (type == "application/yaml") {
    parsed = ParseYamlBody(r.body);
  } else if (type == kProtobufMediaType) {
    // Built-in kinds from kubectl's typed clients (kubectl create secret); others stay 415.
    parsed = ParseProtobufBody(r.body);
    if (!parsed && parsed.error().code == Code::kUnsupported) {
      return UnsupportedMediaType(kBodyTypes);
    }
  } else {
    return UnsupportedMediaType(kBodyTypes);
  }
  if (!parsed) return BadRequest(parsed.error().message);
  return std::move(*parsed);
}

Outcome<LabelSelector> Labels(const HttpRequest& r) {
  auto text = r.QueryParam("labelSelector");
  if (!text) return LabelSelector();
  auto sel = LabelSelector::Parse(*text);
  if (!sel) return BadRequest(sel.error().message);
  return std::move(*sel);
}

Outcome<FieldSelector> Fields(const HttpRequest& r, const ResourceType& rt) {
  auto text = r.QueryParam("fieldSelector");
  if (!text) return FieldSelector();
  auto sel = FieldSelector::Parse(*text);
  if (!sel) return BadRequest(sel.error().message);
  if (Status s = sel->Validate(rt); !s) return BadRequest(s.error().message);
  return std::move(*sel);
}

TableOptions TableOptionsFor(const HttpRequest& r, const Negotiated& n) {
  TableOptions t;
  t.api_version = n.api_version;
  if (auto inc = r.QueryParam("includeObject")) {
    if (*inc == "None") t.include = TableOptions::Include::kNone;
    if (*inc == "Object") t.include = TableOptions::Include::kObject;
  }
  return t;
}

Json PartialOf(const Json& object, const std::string& api_version) {
  Json p = Json::object();
  p["kind"] = "PartialObjectMetadata";
  p["apiVersion"] = api_version;
  auto m = object.find("metadata");
  p["metadata"] = m == object.end() ? Json::object() : *m;
  return p;
}

std::string ListMetadata(const std::string& rv, const std::string& cont) {
  std::string out = "{";
  if (!cont.empty()) out += "\"continue\":" + Dump(Json(cont)) + ",";
  out += "\"resourceVersion\":\"" + rv + "\"}";
  return out;
}

Outcome<DeleteRequest> ParseDeleteOptions(const HttpRequest& r, bool* dry_run) {
  DeleteRequest d;
  if (!r.body.empty()) {
    std::string type = MediaType(r.Header("content-type"));
    Result<Json> parsed =
        type == "application/yaml" ? ParseYamlBody(r.body) : ParseJsonBody(r.body);
    if (!parsed) return BadRequest(parsed.error().message);
    const Json& o = *parsed;
    if (!o.is_null() && !o.is_object()) return BadRequest("DeleteOptions must be an object");
    if (o.is_object()) {
      if (auto it = o.find("propagationPolicy"); it != o.end() && it->is_string()) {
        d.propagation_policy = it->get<std::string>();
      }
      if (auto it = o.find("orphanDependents"); it != o.end() && it->is_boolean()) {
        d.orphan_dependents = it->get<bool>();
      }
      if (auto it = o.find("gracePeriodSeconds"); it != o.end() && it->is_number_integer()) {
        d.grace_period_seconds = it->get<int64_t>();
      }
      if (auto it = o.find("preconditions"); it != o.end() && it->is_object()) {
        if (auto u = it->find("uid"); u != it->end() && u->is_string()) {
          d.precondition_uid = u->get<std::string>();
        }
        if (auto v = it->find("resourceVersion"); v != it->end() && v->is_string()) {
          d.precondition_resource_version = v->get<std::string>();
        }
      }
      if (auto it = o.find("dryRun"); it != o.end() && it->is_array()) {
        for (const Json& v : *it) {
          if (v == "All") {
            *dry_run = true;
          } else {
            return InvalidOptions(
                "DeleteOptions",
                {FieldNotSupported("dryRun", "[]string{" + Dump(v) + "}", {"All"})});
          }
        }
      }
    }
  }
  if (auto p = r.QueryParam("propagationPolicy")) d.propagation_policy = *p;
  if (auto o = r.QueryParam("orphanDependents")) d.orphan_dependents = ParseBool(*o);
  if (auto g = r.QueryParam("gracePeriodSeconds")) {
    auto v = ParseInt(*g);
    if (!v) return BadRequest("gracePeriodSeconds: invalid integer " + Quote(*g));
    d.grace_period_seconds = *v;
  }
  return d;
}

struct Route {
  const ResourceType* rt = nullptr;
  std::string ns;
  bool has_ns = false;
  std::string name;
  bool status = false;
  bool watch_path = false;
};

}  // namespace

ApiHandler::ApiHandler(Registry& registry, const Discovery& discovery, WatchHub& watches)
    : registry_(registry), discovery_(discovery), watches_(watches) {}

std::optional<HttpResponse> ApiHandler::Serve(const HttpRequest& req) const {
  if (auto d = discovery_.Serve(req)) return d;
  const std::string& path = req.path;
  std::vector<std::string_view> segs;
  segs.reserve(8);  // /apis/<g>/<v>/namespaces/<ns>/<plural>/<name>/<sub>: one allocation
  {
    std::string_view p = path;
    size_t i = 0;
    while (i < p.size()) {
      size_t slash = p.find('/', i);
      if (slash == std::string_view::npos) slash = p.size();
      if (slash > i) segs.push_back(p.substr(i, slash - i));
      i = slash + 1;
    }
  }
  if (segs.empty()) return std::nullopt;
  std::string group, version;
  size_t at = 0;
  if (segs[0] == "api") {
    if (segs.size() < 2) return std::nullopt;
    version = std::string(segs[1]);
    at = 2;
  } else if (segs[0] == "apis") {
    if (segs.size() < 3) return PathNotFound().ToResponse();
    group = std::string(segs[1]);
    version = std::string(segs[2]);
    at = 3;
    if (group == kSubresourcesGroup) return std::nullopt;  // virt-api's routes, served elsewhere
  } else {
    return std::nullopt;
  }

  Route route;
  std::vector<std::string_view> rest(segs.begin() + static_cast<long>(at), segs.end());
  if (!rest.empty() && rest[0] == "watch") {
    route.watch_path = true;
    rest.erase(rest.begin());
  }
  if (rest.size() >= 2 && rest[0] == "namespaces") {
    route.ns = std::string(rest[1]);
    route.has_ns = true;
    rest.erase(rest.begin(), rest.begin() + 2);
  }
  if (rest.empty() || rest.size() > 3) return PathNotFound().ToResponse();
  route.rt = registry_.ByPlural(group, version, rest[0]);
  if (route.rt == nullptr) return PathNotFound().ToResponse();
  const ResourceType& rt = *route.rt;
  if (rest.size() >= 2) route.name = std::string(rest[1]);
  if (rest.size() == 3) {
    if (rest[2] != "status" || !rt.status_subresource || route.watch_path) {
      return PathNotFound().ToResponse();
    }
    route.status = true;
  }
  if (rt.namespaced && !route.has_ns && !route.name.empty()) return PathNotFound().ToResponse();
  if (!rt.namespaced && route.has_ns) return PathNotFound().ToResponse();

  const std::string& method = req.method;
  const bool collection = route.name.empty();
  const Negotiated nego = Negotiate(req.Header("accept"));
  const WallClock::time_point now = registry_.Now();

  auto outcome_error = [](const ApiError& e) { return e.ToResponse(); };

  // ---- reads ----------------------------------------------------------------------------------
  if (method == "GET" || method == "HEAD") {
    bool watch = route.watch_path || QueryBool(req, "watch");
    if (collection || watch) {
      auto labels = Labels(req);
      if (!labels) return outcome_error(labels.error());
      auto fields = Fields(req, rt);
      if (!fields) return outcome_error(fields.error());
      if (!collection) {
        // /watch/namespaces/ns/plural/name: a watch on one object.
        std::string text = "metadata.name=" + route.name;
        if (auto user = req.QueryParam("fieldSelector"); user && !user->empty()) {
          text += "," + *user;
        }
        auto combined = FieldSelector::Parse(text);
        if (!combined) return BadRequest(combined.error().message).ToResponse();
        *fields = std::move(*combined);
      }
      if (watch) {
        WatchRequest w;
        w.rt = &rt;
        w.ns = route.ns;
        w.labels = std::move(*labels);
        w.fields = std::move(*fields);
        w.resource_version = req.QueryParam("resourceVersion").value_or("");
        if (!w.resource_version.empty() && w.resource_version != "0" &&
            !ParseInt(w.resource_version)) {
          return BadRequest("resourceVersion: Invalid value: " + Quote(w.resource_version) +
                            ": must be a valid resource version")
              .ToResponse();
        }
        w.bookmarks = QueryBool(req, "allowWatchBookmarks");
        if (auto t = req.QueryParam("timeoutSeconds")) {
          auto v = ParseInt(*t);
          if (!v || *v < 0) {
            return BadRequest("timeoutSeconds: Invalid value: " + Quote(*t)).ToResponse();
          }
          w.timeout = std::chrono::seconds(*v);
        }
        if (nego.as == Negotiated::As::kTable) w.table = TableOptionsFor(req, nego);
        HttpResponse r;
        r.status = 200;
        r.headers.emplace_back("Content-Type", w.table ? kTableContentType : "application/json");
        WatchHub* hub = &watches_;
        r.stream = [hub, w = std::move(w)](std::shared_ptr<ResponseStream> stream) {
          hub->Start(w, std::move(stream));
        };
        return r;
      }
      ListQuery q;
      q.ns = route.ns;
      q.labels = std::move(*labels);
      q.fields = std::move(*fields);
      if (auto l = req.QueryParam("limit"); l && !l->empty()) {
        auto v = ParseInt(*l);
        if (!v || *v < 0) return BadRequest("limit: Invalid value: " + Quote(*l)).ToResponse();
        q.limit = static_cast<size_t>(*v);
      }
      q.continue_token = req.QueryParam("continue").value_or("");
      auto page = registry_.List(rt, q);
      if (!page) return outcome_error(page.error());
      const std::string rv = std::to_string(page->resource_version);
      if (nego.as == Negotiated::As::kTable) {
        std::vector<Json> objects;
        objects.reserve(page->items.size());
        for (const auto& r : page->items) {
          auto j = DecodeRecord(r);
          if (j) objects.push_back(std::move(*j));
        }
        return JsonResponse(
            200,
            RenderTable(rt, objects, rv, page->continue_token, TableOptionsFor(req, nego), now), {},
            kTableContentType);
      }
      if (nego.as == Negotiated::As::kPartial) {
        Json items = Json::array();
        for (const auto& r : page->items) {
          auto j = DecodeRecord(r);
          if (j) items.push_back(PartialOf(*j, nego.api_version));
        }
        std::string body = "{\"kind\":\"PartialObjectMetadataList\",\"apiVersion\":" +
                           Dump(Json(nego.api_version)) +
                           ",\"metadata\":" + ListMetadata(rv, page->continue_token) +
                           ",\"items\":" + Dump(items) + "}";
        return JsonResponse(200, std::move(body), {});
      }
      std::string body;
      body.reserve(64 + page->items.size() * 2048);
      body += "{\"apiVersion\":";
      body += Dump(Json(rt.ApiVersion()));
      body += ",\"items\":[";
      for (size_t i = 0; i < page->items.size(); ++i) {
        if (i) body += ',';
        AppendRendered(page->items[i], &body);
      }
      body += "],\"kind\":";
      body += Dump(Json(rt.list_kind));
      body += ",\"metadata\":";
      body += ListMetadata(rv, page->continue_token);
      body += '}';
      return JsonResponse(200, std::move(body), {});
    }
    auto rec = registry_.Get(rt, route.ns, route.name);
    if (!rec) return outcome_error(rec.error());
    if (nego.as == Negotiated::As::kObject) return JsonResponse(200, Render(*rec), {});
    auto j = DecodeRecord(*rec);
    if (!j) return Internal(j.error().message).ToResponse();
    if (nego.as == Negotiated::As::kTable) {
      return JsonResponse(200,
                          RenderTable(rt, {*j}, std::to_string(rec->resource_version), "",
                                      TableOptionsFor(req, nego), now),
                          {}, kTableContentType);
    }
    return JsonResponse(200, Dump(PartialOf(*j, nego.api_version)), {});
  }

  // ---- writes ---------------------------------------------------------------------------------
  if (method == "POST") {
    if (!collection || route.status || (rt.namespaced && !route.has_ns)) {
      return MethodNotAllowed().ToResponse();
    }
    auto options = ParseWriteOptions(req, "CreateOptions");
    if (!options) return outcome_error(options.error());
    auto body = DecodeBody(req);
    if (!body) return outcome_error(body.error());
    auto result = registry_.Create(rt, route.ns, std::move(*body), *options);
    if (!result) return outcome_error(result.error());
    return JsonResponse(201, result->Body(), result->warnings);
  }
  if (method == "PUT") {
    if (collection) return MethodNotAllowed().ToResponse();
    auto options = ParseWriteOptions(req, "UpdateOptions");
    if (!options) return outcome_error(options.error());
    auto body = DecodeBody(req);
    if (!body) return outcome_error(body.error());
    auto result =
        registry_.Update(rt, route.ns, route.name, std::move(*body), route.status, *options);
    if (!result) return outcome_error(result.error());
    return JsonResponse(200, result->Body(), result->warnings);
  }
  if (method == "PATCH") {
    if (collection) return MethodNotAllowed().ToResponse();
    std::string type = MediaType(req.Header("content-type"));
    PatchType pt;
    if (type == "application/json-patch+json") {
      pt = PatchType::kJson;
    } else if (type == "application/merge-patch+json") {
      pt = PatchType::kMerge;
    } else if (type == "application/apply-patch+yaml") {
      pt = PatchType::kApply;
    } else {
      return UnsupportedMediaType(kPatchTypes).ToResponse();
    }
    auto options = ParseWriteOptions(req, "PatchOptions");
    if (!options) return outcome_error(options.error());
    auto force_text = req.QueryParam("force");
    bool force = false;
    if (force_text) {
      auto b = ParseBool(*force_text);
      if (!b) return BadRequest("force: invalid boolean " + Quote(*force_text)).ToResponse();
      force = *b;
    }
    if (pt == PatchType::kApply) {
      auto fm = req.QueryParam("fieldManager");
      if (!fm || fm->empty()) {
        return InvalidOptions("PatchOptions",
                              {FieldRequired("fieldManager", "is required for apply patch")})
            .ToResponse();
      }
    } else if (force_text) {
      return InvalidOptions("PatchOptions",
                            {FieldForbidden("force", "may not be specified for non-apply patch")})
          .ToResponse();
    }
    Result<Json> patch = MakeError(Code::kInvalid, "");
    if (pt == PatchType::kApply) {
      std::string_view b = Trim(req.body);
      patch = (!b.empty() && b.front() == '{') ? ParseJsonBody(req.body) : ParseYamlBody(req.body);
    } else {
      patch = ParseJsonBody(req.body);
    }
    if (!patch) return BadRequest(patch.error().message).ToResponse();
    auto result =
        registry_.Patch(rt, route.ns, route.name, pt, *patch, route.status, force, *options);
    if (!result) return outcome_error(result.error());
    return JsonResponse(result->created ? 201 : 200, result->Body(), result->warnings);
  }
  if (method == "DELETE") {
    if (route.status) return MethodNotAllowed().ToResponse();
    WriteOptions options;
    options.field_manager = DefaultFieldManager(req.Header("user-agent"));
    if (auto dry = req.QueryParam("dryRun")) {
      if (*dry == "All") {
        options.dry_run = true;
      } else if (!dry->empty()) {
        return InvalidOptions(
                   "DeleteOptions",
                   {FieldNotSupported("dryRun", "[]string{" + Quote(*dry) + "}", {"All"})})
            .ToResponse();
      }
    }
    auto del = ParseDeleteOptions(req, &options.dry_run);
    if (!del) return outcome_error(del.error());
    if (collection) {
      auto labels = Labels(req);
      if (!labels) return outcome_error(labels.error());
      auto fields = Fields(req, rt);
      if (!fields) return outcome_error(fields.error());
      ListQuery q;
      q.ns = route.ns;
      q.labels = std::move(*labels);
      q.fields = std::move(*fields);
      auto results = registry_.DeleteCollection(rt, q, *del, options);
      if (!results) return outcome_error(results.error());
      std::string body = "{\"apiVersion\":" + Dump(Json(rt.ApiVersion())) + ",\"items\":[";
      for (size_t i = 0; i < results->size(); ++i) {
        if (i) body += ',';
        body += (*results)[i].Body();
      }
      body += "],\"kind\":" + Dump(Json(rt.list_kind)) + ",\"metadata\":{\"resourceVersion\":\"" +
              std::to_string(registry_.store().CurrentResourceVersion()) + "\"}}";
      return JsonResponse(200, std::move(body), {});
    }
    auto result = registry_.Delete(rt, route.ns, route.name, *del, options);
    if (!result) return outcome_error(result.error());
    int status = 200;
    if (!result->deleted && del->orphan_dependents && !*del->orphan_dependents) status = 202;
    return JsonResponse(status, result->Body(), result->warnings);
  }
  return MethodNotAllowed().ToResponse();
}

}  // namespace edgevirt::api::machinery
