// Helpers shared by the files of api/ (private to the folder; the unit test uses them too).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace edgevirt::api::internal {

// Decodes %XX escapes (and '+' as a space when `plus_as_space`). nullopt for a malformed escape
// or a decoded NUL byte.
std::optional<std::string> PercentDecode(std::string_view in, bool plus_as_space);

// Splits a request target into its percent-decoded path and raw query. Accepts origin-form
// ("/a?b"), absolute-form ("http://host/a?b", whose authority is dropped) and "*"; nullopt for
// anything else or for a path that does not decode.
struct Target {
  std::string path;
  std::string query;
};
std::optional<Target> SplitTarget(std::string_view target);

// RFC 9110 IMF-fixdate, the form of the Date header: "Sun, 06 Nov 1994 08:49:37 GMT".
std::string HttpDate(std::chrono::system_clock::time_point t);

bool EqualsIgnoreCase(std::string_view a, std::string_view b);
std::string ToLowerAscii(std::string_view s);
// RFC 9110 token characters only.
bool IsValidHeaderName(std::string_view name);
// No CR, LF or NUL (which would let a value inject headers).
bool IsValidHeaderValue(std::string_view value);

// The body of a Kubernetes Status failure (see HttpResponse::StatusError).
std::string StatusJson(int status, std::string_view reason, std::string_view message);

}  // namespace edgevirt::api::internal
