#include "api/machinery/errors.h"

#include <set>

#include <nlohmann/json.hpp>

namespace edgevirt::api::machinery {

using OJson = nlohmann::ordered_json;

const char kOptimisticLockMessage[] =
    "the object has been modified; please apply your changes to the latest version and try again";

std::string ApiError::ToJson() const {
  OJson j;
  j["kind"] = "Status";
  j["apiVersion"] = "v1";
  j["metadata"] = OJson::object();
  j["status"] = "Failure";
  if (!message.empty()) j["message"] = message;
  if (!reason.empty()) j["reason"] = reason;
  if (has_details) {
    OJson d = OJson::object();
    if (!name.empty()) d["name"] = name;
    if (!group.empty()) d["group"] = group;
    if (!kind.empty()) d["kind"] = kind;
    if (!uid.empty()) d["uid"] = uid;
    if (!causes.empty()) {
      OJson cs = OJson::array();
      for (const auto& c : causes) {
        OJson cj = OJson::object();
        if (!c.reason.empty()) cj["reason"] = c.reason;
        if (!c.message.empty()) cj["message"] = c.message;
        if (!c.field.empty()) cj["field"] = c.field;
        cs.push_back(std::move(cj));
      }
      d["causes"] = std::move(cs);
    }
    if (retry_after_seconds > 0) d["retryAfterSeconds"] = retry_after_seconds;
    j["details"] = std::move(d);
  }
  j["code"] = code;
  return j.dump(-1, ' ', false, OJson::error_handler_t::replace);
}

HttpResponse ApiError::ToResponse() const {
  HttpResponse r = HttpResponse::Json(code, ToJson());
  if (retry_after_seconds > 0) {
    r.headers.emplace_back("Retry-After", std::to_string(retry_after_seconds));
  }
  return r;
}

Error ApiError::ToError() const {
  Code c = Code::kInternal;
  switch (code) {
    case 400:
    case 422:
      c = Code::kInvalid;
      break;
    case 403:
      c = Code::kPermission;
      break;
    case 404:
      c = Code::kNotFound;
      break;
    case 405:
    case 406:
    case 415:
      c = Code::kUnsupported;
      break;
    case 409:
      c = reason == "AlreadyExists" ? Code::kAlreadyExists : Code::kConflict;
      break;
    case 410:
      c = Code::kGone;
      break;
    case 413:
      c = Code::kTooLarge;
      break;
    case 503:
      c = Code::kUnavailable;
      break;
    case 504:
      c = Code::kTimeout;
      break;
    default:
      break;
  }
  return Error{c, message};
}

namespace {

ApiError WithResource(int code, std::string reason, std::string message, const ResourceType& rt,
                      std::string_view name) {
  ApiError e;
  e.code = code;
  e.reason = std::move(reason);
  e.message = std::move(message);
  e.has_details = true;
  e.name = std::string(name);
  e.group = rt.group;
  e.kind = rt.plural;
  return e;
}

ApiError Simple(int code, std::string reason, std::string message) {
  ApiError e;
  e.code = code;
  e.reason = std::move(reason);
  e.message = std::move(message);
  return e;
}

// Cause message without the "<field>: " prefix (field.Error.ErrorBody()).
std::string Body(const StatusCause& c) {
  if (!c.field.empty() && c.message.size() > c.field.size() + 2 &&
      c.message.compare(0, c.field.size(), c.field) == 0 &&
      c.message.compare(c.field.size(), 2, ": ") == 0) {
    return c.message.substr(c.field.size() + 2);
  }
  return c.message;
}

// utilerrors.NewAggregate(errs).Error(): one as is, several deduplicated in "[a, b]".
std::string Aggregate(const std::vector<StatusCause>& errors) {
  if (errors.size() == 1) return errors[0].message;
  std::set<std::string> seen;
  std::string out;
  for (const auto& e : errors) {
    if (!seen.insert(e.message).second) continue;
    if (seen.size() > 1) out += ", ";
    out += e.message;
  }
  if (seen.size() == 1) return out;
  return "[" + out + "]";
}

ApiError InvalidFor(std::string qualified_kind, std::string group, std::string kind,
                    std::string_view name, std::vector<StatusCause> errors) {
  ApiError e;
  e.code = 422;
  e.reason = "Invalid";
  e.has_details = true;
  e.name = std::string(name);
  e.group = std::move(group);
  e.kind = std::move(kind);
  e.message = qualified_kind + " " + Quote(name) + " is invalid";
  if (!errors.empty()) e.message += ": " + Aggregate(errors);
  for (auto& c : errors) e.causes.push_back({c.reason, Body(c), c.field});
  return e;
}

}  // namespace

std::string Quote(std::string_view s) {
  return nlohmann::json(std::string(s))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

ApiError NotFound(const ResourceType& rt, std::string_view name) {
  return WithResource(404, "NotFound", rt.QualifiedResource() + " " + Quote(name) + " not found",
                      rt, name);
}

ApiError AlreadyExists(const ResourceType& rt, std::string_view name) {
  return WithResource(409, "AlreadyExists",
                      rt.QualifiedResource() + " " + Quote(name) + " already exists", rt, name);
}

ApiError Conflict(const ResourceType& rt, std::string_view name, std::string_view detail) {
  return WithResource(409, "Conflict",
                      "Operation cannot be fulfilled on " + rt.QualifiedResource() + " " +
                          Quote(name) + ": " + std::string(detail),
                      rt, name);
}

namespace {

ApiError WithNamedResource(int code, std::string reason, std::string_view group,
                           std::string_view resource, std::string_view name, std::string message) {
  ApiError e;
  e.code = code;
  e.reason = std::move(reason);
  e.message = std::move(message);
  e.has_details = true;
  e.name = std::string(name);
  e.group = std::string(group);
  e.kind = std::string(resource);
  return e;
}

std::string Qualified(std::string_view group, std::string_view resource) {
  return group.empty() ? std::string(resource) : std::string(resource) + "." + std::string(group);
}

}  // namespace

ApiError NotFound(std::string_view group, std::string_view resource, std::string_view name) {
  return WithNamedResource(404, "NotFound", group, resource, name,
                           Qualified(group, resource) + " " + Quote(name) + " not found");
}

ApiError Conflict(std::string_view group, std::string_view resource, std::string_view name,
                  std::string_view detail) {
  return WithNamedResource(409, "Conflict", group, resource, name,
                           "Operation cannot be fulfilled on " + Qualified(group, resource) + " " +
                               Quote(name) + ": " + std::string(detail));
}

ApiError Forbidden(std::string_view group, std::string_view resource, std::string_view name,
                   std::string_view detail) {
  return WithNamedResource(
      403, "Forbidden", group, resource, name,
      Qualified(group, resource) + " " + Quote(name) + " is forbidden: " + std::string(detail));
}

ApiError Invalid(const ResourceType& rt, std::string_view name, std::vector<StatusCause> errors) {
  std::string qualified = rt.group.empty() ? rt.kind : rt.kind + "." + rt.group;
  return InvalidFor(qualified, rt.group, rt.kind, name, std::move(errors));
}

ApiError InvalidOptions(std::string_view kind, std::vector<StatusCause> errors) {
  return InvalidFor(std::string(kind) + ".meta.k8s.io", "meta.k8s.io", std::string(kind), "",
                    std::move(errors));
}

ApiError BadRequest(std::string message) { return Simple(400, "BadRequest", std::move(message)); }

ApiError MethodNotAllowed(std::string message) {
  return Simple(405, "MethodNotAllowed", std::move(message));
}

ApiError NotAcceptable(std::string message) {
  return Simple(406, "NotAcceptable", std::move(message));
}

ApiError Expired(std::string message) { return Simple(410, "Expired", std::move(message)); }

ApiError TooLarge(std::string message) {
  return Simple(413, "RequestEntityTooLarge", "Request entity too large: " + message);
}

ApiError UnsupportedMediaType(const std::vector<std::string>& accepted) {
  std::string list;
  for (size_t i = 0; i < accepted.size(); ++i) {
    if (i) list += ", ";
    list += accepted[i];
  }
  return Simple(415, "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: " +
                    list);
}

ApiError Internal(std::string message) {
  ApiError e = Simple(500, "InternalError", "Internal error occurred: " + message);
  e.has_details = true;
  e.causes.push_back({"", std::move(message), ""});
  return e;
}

ApiError Unavailable(std::string message) {
  return Simple(503, "ServiceUnavailable", std::move(message));
}

ApiError PathNotFound() {
  ApiError e = Simple(404, "NotFound", "the server could not find the requested resource");
  e.has_details = true;
  return e;
}

ApiError FromError(const Error& error, const ResourceType* rt, std::string_view name) {
  switch (error.code) {
    case Code::kNotFound:
      return rt ? NotFound(*rt, name) : Simple(404, "NotFound", error.message);
    case Code::kAlreadyExists:
      return rt ? AlreadyExists(*rt, name) : Simple(409, "AlreadyExists", error.message);
    case Code::kConflict:
      return rt ? Conflict(*rt, name, kOptimisticLockMessage)
                : Simple(409, "Conflict", error.message);
    case Code::kGone:
      return Expired(error.message);
    case Code::kInvalid:
      return BadRequest(error.message);
    case Code::kTooLarge:
      return TooLarge(error.message);
    case Code::kUnsupported:
      return MethodNotAllowed(error.message);
    case Code::kPermission:
      return Simple(403, "Forbidden", error.message);
    case Code::kUnavailable:
      return Unavailable(error.message);
    case Code::kTimeout:
      return Simple(504, "Timeout", "Timeout: " + error.message);
    case Code::kInternal:
      break;
  }
  return Internal(error.message);
}

StatusCause FieldInvalid(std::string field, std::string_view value, std::string_view detail) {
  std::string msg = field + ": Invalid value: " + std::string(value);
  if (!detail.empty()) msg += ": " + std::string(detail);
  return {"FieldValueInvalid", std::move(msg), std::move(field)};
}

StatusCause FieldRequired(std::string field, std::string_view detail) {
  std::string msg = field + ": Required value";
  if (!detail.empty()) msg += ": " + std::string(detail);
  return {"FieldValueRequired", std::move(msg), std::move(field)};
}

StatusCause FieldForbidden(std::string field, std::string_view detail) {
  std::string msg = field + ": Forbidden: " + std::string(detail);
  return {"FieldValueForbidden", std::move(msg), std::move(field)};
}

StatusCause FieldTooLong(std::string field, size_t max_bytes) {
  std::string msg =
      field + ": Too long: may not be more than " + std::to_string(max_bytes) + " bytes";
  return {"FieldValueTooLong", std::move(msg), std::move(field)};
}

StatusCause FieldNotSupported(std::string field, std::string_view value,
                              const std::vector<std::string>& supported) {
  std::string list;
  for (size_t i = 0; i < supported.size(); ++i) {
    if (i) list += ", ";
    list += Quote(supported[i]);
  }
  std::string msg =
      field + ": Unsupported value: " + std::string(value) + ": supported values: " + list;
  return {"FieldValueNotSupported", std::move(msg), std::move(field)};
}

}  // namespace edgevirt::api::machinery
