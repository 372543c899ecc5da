// Kubernetes `metav1.Status` failures as the apiserver builds them (k8s.io/apimachinery
// pkg/api/errors), and the one mapping from edgevirt::Code to HTTP status + reason.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "api/http_server.h"
#include "api/resource.h"
#include "common/result.h"

namespace edgevirt::api::machinery {

// One failure, in the shape of metav1.Status.
struct ApiError {
  int code = 500;
  std::string reason;  // "NotFound"; empty for the apiserver's StatusReasonUnknown (omitted)
  std::string message;
  bool has_details = false;  // "details" is written (possibly `{}`) only when set
  std::string name;
  std::string group;
  std::string kind;  // the resource plural for most errors, the Kind for Invalid
  std::string uid;
  std::vector<StatusCause> causes;
  int retry_after_seconds = 0;

  // The Status JSON, fields in the apiserver's order:
  // {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":…,
  //  "reason":…,"details":{"name","group","kind","uid","causes":[{reason,message,field}],
  //  "retryAfterSeconds"},"code":…}
  std::string ToJson() const;
  // Status JSON as an HTTP response (Content-Type application/json).
  HttpResponse ToResponse() const;
  // Error{code, message} for in-process callers (the reverse of FromError's code mapping).
  Error ToError() const;
};

// A value or an ApiError (what every machinery operation returns internally).
template <typename T>
class Outcome {
 public:
  Outcome(T v) : v_(std::in_place_index<0>, std::move(v)) {}         // NOLINT
  Outcome(ApiError e) : v_(std::in_place_index<1>, std::move(e)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  ApiError& error() { return std::get<1>(v_); }
  const ApiError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, ApiError> v_;
};

// --- Constructors mirroring k8s.io/apimachinery/pkg/api/errors ---------------------------------

// 404 `virtualmachines.kubevirt.io "x" not found`, details {name, group, kind: plural}.
ApiError NotFound(const ResourceType& rt, std::string_view name);
// 409 AlreadyExists `virtualmachines.kubevirt.io "x" already exists`.
ApiError AlreadyExists(const ResourceType& rt, std::string_view name);
// 409 Conflict `Operation cannot be fulfilled on virtualmachines.kubevirt.io "x": <detail>`.
ApiError Conflict(const ResourceType& rt, std::string_view name, std::string_view detail);
// The same three for a resource named directly rather than by a served ResourceType: KubeVirt's
// subresource API builds its errors with v1.Resource("virtualmachine"), the *singular*, so
// NotFound("kubevirt.io", "virtualmachine", "x") gives `virtualmachine.kubevirt.io "x" not
// found` with details {name, group, kind: "virtualmachine"}.
ApiError NotFound(std::string_view group, std::string_view resource, std::string_view name);
ApiError Conflict(std::string_view group, std::string_view resource, std::string_view name,
                  std::string_view detail);
// 403 Forbidden `<resource>.<group> "x" is forbidden: <detail>` (errors.NewForbidden).
ApiError Forbidden(std::string_view group, std::string_view resource, std::string_view name,
                   std::string_view detail);
// The registry's optimistic-lock detail: "the object has been modified; please apply your
// changes to the latest version and try again".
extern const char kOptimisticLockMessage[];
// 422 Invalid `VirtualMachine.kubevirt.io "x" is invalid: <errors>` (one error as is, several
// as "[a, b]", duplicates once), details {name, group, kind: Kind, causes}. Each cause's
// `message` must be the full "field: body" text; the cause keeps only the body, as
// field.Error.ErrorBody() does.
ApiError Invalid(const ResourceType& rt, std::string_view name, std::vector<StatusCause> errors);
// Same, for the meta.k8s.io option kinds ("DeleteOptions", "PatchOptions", ...).
ApiError InvalidOptions(std::string_view kind, std::vector<StatusCause> errors);
// 400 BadRequest with `message` and no details.
ApiError BadRequest(std::string message);
// 405 MethodNotAllowed.
ApiError MethodNotAllowed(
    std::string message = "the server does not allow this method on the requested resource");
// 406 NotAcceptable.
ApiError NotAcceptable(std::string message);
// 410 Expired (watch from a compacted resourceVersion, continue token too old).
ApiError Expired(std::string message);
// 413 RequestEntityTooLarge `Request entity too large: <message>`.
ApiError TooLarge(std::string message);
// 415 `the body of the request was in an unknown format - accepted media types include: …`.
ApiError UnsupportedMediaType(const std::vector<std::string>& accepted);
// 500 InternalError `Internal error occurred: <message>`, details.causes [{message}].
ApiError Internal(std::string message);
// 503 ServiceUnavailable.
ApiError Unavailable(std::string message);
// 404 for a path the server does not serve ("the server could not find the requested
// resource", details {}), exactly as kube-apiserver answers it.
ApiError PathNotFound();

// THE mapping from edgevirt::Code to an HTTP answer (STYLE.md): kNotFound 404 NotFound,
// kAlreadyExists 409 AlreadyExists, kConflict 409 Conflict (optimistic lock message),
// kGone 410 Expired, kInvalid 400 BadRequest, kTooLarge 413, kUnsupported 405 MethodNotAllowed,
// kPermission 403 Forbidden, kUnavailable 503, kTimeout 504 Timeout, kInternal 500. `rt`/`name`
// fill the resource-specific messages (may be null/empty).
ApiError FromError(const Error& error, const ResourceType* rt, std::string_view name);

// Builds a field.Error text and cause: "<field>: Invalid value: <value>: <detail>".
// `value` is already formatted the way Go's %#v prints it (quoted string, number, 0x0, ...).
StatusCause FieldInvalid(std::string field, std::string_view value, std::string_view detail);
// "<field>: Required value[: detail]".
StatusCause FieldRequired(std::string field, std::string_view detail = {});
// "<field>: Forbidden: <detail>".
StatusCause FieldForbidden(std::string field, std::string_view detail);
// "<field>: Too long: may not be more than <n> bytes".
StatusCause FieldTooLong(std::string field, size_t max_bytes);
// "<field>: Unsupported value: <value>: supported values: "a", "b"".
StatusCause FieldNotSupported(std::string field, std::string_view value,
                              const std::vector<std::string>& supported);
// Go's %q of a string (JSON escaping is close enough for the printable text we quote).
std::string Quote(std::string_view s);

}  // namespace edgevirt::api::machinery
