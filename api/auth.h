// Authentication and authorization of API requests, shaped like kube-apiserver's: bearer tokens
// from a token file, client certificates verified by the HTTPS listener, root on the unix
// socket; two roles (admin, viewer); failures as Kubernetes `Status` (401 Unauthorized, 403
// Forbidden with kube-apiserver's message).
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/http_server.h"
#include "common/result.h"

namespace edgevirt::api {

// admin: every request. viewer: get, list and watch (and GET of non-resource paths), except
// Secrets and the console, vnc and portforward subresources (Kubernetes' "view" role and
// KubeVirt's kubevirt.io:view do not grant them either).
enum class Role { kViewer, kAdmin };
std::string_view RoleName(Role role);
// "admin" | "viewer"; kInvalid otherwise.
Result<Role> ParseRole(std::string_view text);
// The group a client certificate's O must name for a role: "admin" / "viewer".
inline constexpr std::string_view kAdminGroup = "admin";
inline constexpr std::string_view kViewerGroup = "viewer";

// One line of the token file: TOKEN,USER,ROLE.
struct TokenEntry {
  std::string token;
  std::string user;
  Role role = Role::kViewer;
  bool operator==(const TokenEntry&) const = default;
};

// The token file: one "TOKEN,USER,ROLE" per line; blank lines and lines starting with '#' are
// ignored; spaces around fields are trimmed. TOKEN: at least 16 characters of
// [A-Za-z0-9._~+/=-]; USER: 1-253 printable characters without ',' or spaces; ROLE: admin or
// viewer. Tokens and users are unique. Errors are kInvalid and read "SOURCE:LINE: <problem>".
Result<std::vector<TokenEntry>> ParseTokenFile(std::string_view text, std::string_view source);

// A new random token: 32 bytes from the OpenSSL CSPRNG, base64url without padding (43 chars).
Result<std::string> NewToken();

// The token of `user` in `file`, added with `role` (and a new token) if the user has none.
// Creates the file (mode 0600, with a comment header, its directory 0700) if absent. Holds an
// exclusive flock on the file while it reads and appends, so concurrent callers (the daemon's
// first start, `edgevirtd kubeconfig`) do not lose lines. `*created` tells whether a line was
// added. An existing user keeps its role (kConflict if `role` differs and `require_role`).
Result<TokenEntry> EnsureUserToken(const std::filesystem::path& file, const std::string& user,
                                   Role role, bool require_role, bool* created);

// The token file as the daemon reads it: re-read whenever its inode, size or mtime changes (so
// tokens added by `edgevirtd kubeconfig` work at once); a file that fails to parse keeps the
// previous tokens (the error is logged once). Thread-safe.
class TokenStore {
 public:
  explicit TokenStore(std::filesystem::path file) : file_(std::move(file)) {}
  // The entry whose token equals `token` (constant-time comparison), if any.
  std::optional<TokenEntry> Find(std::string_view token);

 private:
  void Refresh();
  const std::filesystem::path file_;
  std::mutex mu_;
  std::vector<TokenEntry> entries_;  // guarded by mu_
  struct Stamp {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = -1;
    bool operator==(const Stamp&) const = default;
  } stamp_;  // guarded by mu_; of the last read (or attempt)
};

// Who made a request.
struct UserInfo {
  std::string name;
  std::vector<std::string> groups;
  Role role = Role::kViewer;
};

// kube-apiserver's RequestInfo: what a request does, for authorization and messages.
struct RequestAttributes {
  bool resource_request = false;
  std::string verb;  // get list watch create update patch delete deletecollection (or method)
  std::string api_group;
  std::string namespace_;
  std::string resource;
  std::string subresource;
  std::string name;
  std::string path;  // non-resource requests
};
// Parses /api/v1/..., /apis/GROUP/VERSION/... like k8s.io/apiserver's RequestInfoFactory
// (namespaces/NS/..., watch/ prefix, ?watch=true, verbs from the method); other paths are
// non-resource requests with the lower-cased method as verb (HEAD counts as get).
RequestAttributes RequestAttributesOf(const HttpRequest& request);

// Whether `role` may do it; on false, `reason` (if not null) may say why.
bool Authorize(Role role, const RequestAttributes& attrs, std::string* reason = nullptr);

// 401 {"kind":"Status",...,"message":"Unauthorized","reason":"Unauthorized","code":401}
HttpResponse UnauthorizedResponse();
// 403 as kube-apiserver writes it, e.g. message
//   virtualmachines.kubevirt.io "vm1" is forbidden: User "bob" cannot delete resource
//   "virtualmachines" in API group "kubevirt.io" in the namespace "default"
// with details {name, group, kind: resource}; non-resource: forbidden: User "bob" cannot post
// path "/x". A non-empty `reason` is appended after ": ".
HttpResponse ForbiddenResponse(std::string_view user, const RequestAttributes& attrs,
                               std::string_view reason = "");

struct AuthOptions {
  std::filesystem::path token_file;
  // Plain-HTTP (loopback) listeners: false = credentials as on HTTPS; true = every request there
  // is admin without credentials (tests, single-user development hosts).
  bool plain_http_no_auth = false;
};

// Wraps `next`: authenticates every request (WebSocket upgrades included, before any device is
// opened), authorizes it, and answers 401/403 itself. Without credentials, GET/HEAD of
// /healthz, /livez, /readyz (and their subpaths) and /version are served (kube-apiserver's
// system:public-info-viewer); a bad token gets 401 everywhere. Authentication order: unix
// socket peer (uid 0: admin "system:root"; others 403), client certificate (CN user, O
// groups: "admin" or "viewer"), bearer token.
Handler WithAuth(AuthOptions options, Handler next);

// The identity of a request, or nullopt without (valid) credentials. Exposed for tests.
std::optional<UserInfo> Authenticate(const HttpRequest& request, TokenStore& tokens,
                                     const AuthOptions& options, bool* bad_credentials);

}  // namespace edgevirt::api
