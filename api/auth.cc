#include "api/auth.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <nlohmann/json.hpp>

#include "common/fd.h"
#include "common/log.h"

namespace edgevirt::api {
namespace {

namespace fs = std::filesystem;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

bool IsTokenChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '~' || c == '+' || c == '/' || c == '=' || c == '-';
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t at = s.find(sep, start);
    out.push_back(
        s.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
    if (at == std::string_view::npos) return out;
    start = at + 1;
  }
}

constexpr std::string_view kTokenFileHeader =
    "# edgevirtd API tokens, one per line: TOKEN,USER,ROLE (ROLE: admin or viewer).\n"
    "# Clients send \"Authorization: Bearer TOKEN\". Changes apply without a restart.\n";

}  // namespace

std::string_view RoleName(Role role) { return role == Role::kAdmin ? "admin" : "viewer"; }

Result<Role> ParseRole(std::string_view text) {
  if (text == "admin") return Role::kAdmin;
  if (text == "viewer") return Role::kViewer;
  return MakeError(Code::kInvalid, "unknown role \"" + std::string(text) + "\" (admin or viewer)");
}

Result<std::vector<TokenEntry>> ParseTokenFile(std::string_view text, std::string_view source) {
  std::vector<TokenEntry> out;
  std::set<std::string> tokens;
  std::set<std::string> users;
  size_t line_no = 0;
  for (std::string_view raw : Split(text, '\n')) {
    ++line_no;
    std::string_view line = Trim(raw);
    if (line.empty() || line.front() == '#') continue;
    auto fail = [&](const std::string& why) {
      return MakeError(Code::kInvalid,
                       std::string(source) + ":" + std::to_string(line_no) + ": " + why);
    };
    auto fields = Split(line, ',');
    if (fields.size() != 3) {
      return fail("expected TOKEN,USER,ROLE (3 fields), got " + std::to_string(fields.size()));
    }
    TokenEntry e;
    e.token = std::string(Trim(fields[0]));
    e.user = std::string(Trim(fields[1]));
    if (e.token.size() < 16 || !std::all_of(e.token.begin(), e.token.end(), IsTokenChar)) {
      return fail("the token must be at least 16 characters of [A-Za-z0-9._~+/=-]");
    }
    if (e.user.empty() || e.user.size() > 253 ||
        !std::all_of(e.user.begin(), e.user.end(),
                     [](char c) { return c > ' ' && c != 0x7f && c != ','; })) {
      return fail("the user must be 1-253 printable characters without spaces");
    }
    auto role = ParseRole(Trim(fields[2]));
    if (!role) return fail(role.error().message);
    e.role = *role;
    if (!tokens.insert(e.token).second) return fail("duplicate token (of user " + e.user + ")");
    if (!users.insert(e.user).second) return fail("duplicate user \"" + e.user + "\"");
    out.push_back(std::move(e));
  }
  return out;
}

Result<std::string> NewToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return MakeError(Code::kInternal, "no random bytes for a token (RAND_bytes failed)");
  }
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char b : bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 0x3f]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 0x3f]);
  return out;
}

Result<TokenEntry> EnsureUserToken(const fs::path& file, const std::string& user, Role role,
                                   bool require_role, bool* created) {
  *created = false;
  std::error_code ec;
  if (file.has_parent_path() && !fs::exists(file.parent_path(), ec)) {
    fs::create_directories(file.parent_path(), ec);
    if (ec) return ErrnoError("create " + file.parent_path().string(), ec.value());
    ::chmod(file.parent_path().c_str(), 0700);
  }
  UniqueFd fd(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("open token file " + file.string(), errno);
  if (::flock(fd.get(), LOCK_EX) != 0) return ErrnoError("lock " + file.string(), errno);
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read " + file.string(), errno);
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ASSIGN_OR_RETURN(std::vector<TokenEntry> entries, ParseTokenFile(text, file.string()));
  for (const auto& e : entries) {
    if (e.user != user) continue;
    if (require_role && e.role != role) {
      return MakeError(Code::kConflict, "user " + user + " already has role " +
                                            std::string(RoleName(e.role)) + " in " + file.string());
    }
    return e;
  }
  TokenEntry e;
  ASSIGN_OR_RETURN(e.token, NewToken());
  e.user = user;
  e.role = role;
  // Validates the user name like the file's lines.
  RETURN_IF_ERROR(
      ParseTokenFile(e.token + "," + e.user + "," + std::string(RoleName(role)), "user"));
  std::string add;
  if (text.empty()) add = std::string(kTokenFileHeader);
  if (!text.empty() && text.back() != '\n') add += "\n";
  add += e.token + "," + e.user + "," + std::string(RoleName(role)) + "\n";
  if (::lseek(fd.get(), 0, SEEK_END) < 0) return ErrnoError("seek " + file.string(), errno);
  size_t done = 0;
  while (done < add.size()) {
    ssize_t n = ::write(fd.get(), add.data() + done, add.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write " + file.string(), errno);
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + file.string(), errno);
  *created = true;
  return e;
}

void TokenStore::Refresh() {
  struct stat st {};
  Stamp now;
  if (::stat(file_.c_str(), &st) == 0) {
    now = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
           static_cast<uint64_t>(st.st_size),
           static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
  }
  if (now == stamp_) return;
  stamp_ = now;
  if (now.mtime_ns < 0) {
    EV_LOG(kWarning) << "token file " << file_.string() << " is missing; no token is valid";
    entries_.clear();
    return;
  }
  UniqueFd fd(::open(file_.c_str(), O_RDONLY | O_CLOEXEC));
  std::string text;
  if (fd) {
    // A shared lock: EnsureUserToken appends under an exclusive one.
    (void)::flock(fd.get(), LOCK_SH);
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd.get(), buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
  }
  auto parsed = ParseTokenFile(text, file_.string());
  if (!fd || !parsed) {
    EV_LOG(kError) << "token file " << file_.string() << ": "
                   << (fd ? parsed.error().message : std::string(std::strerror(errno)))
                   << "; keeping the previous tokens";
    return;
  }
  entries_ = std::move(*parsed);
  EV_LOG(kInfo) << "token file " << file_.string() << ": " << entries_.size() << " token(s)";
}

std::optional<TokenEntry> TokenStore::Find(std::string_view token) {
  std::lock_guard lock(mu_);
  Refresh();
  std::optional<TokenEntry> found;
  for (const auto& e : entries_) {
    // Compare every entry in constant time per length: no early exit on a match either.
    if (e.token.size() == token.size() &&
        CRYPTO_memcmp(e.token.data(), token.data(), token.size()) == 0) {
      found = e;
    }
  }
  return found;
}

RequestAttributes RequestAttributesOf(const HttpRequest& request) {
  RequestAttributes a;
  a.path = request.path;
  const std::string method = Lower(request.method);
  a.verb = method == "head" ? "get" : method;
  std::vector<std::string_view> parts;
  for (std::string_view p : Split(request.path, '/')) {
    if (!p.empty()) parts.push_back(p);
  }
  size_t i = 0;
  if (parts.size() >= 2 && parts[0] == "api") {
    i = 2;  // /api/v1
  } else if (parts.size() >= 3 && parts[0] == "apis") {
    a.api_group = std::string(parts[1]);
    i = 3;  // /apis/GROUP/VERSION
  } else {
    a.api_group.clear();
    return a;  // discovery, /openapi, /healthz, ...: non-resource
  }
  if (i >= parts.size()) {
    a.api_group.clear();
    return a;  // /api/v1, /apis/G/V: discovery
  }
  a.resource_request = true;
  bool watch_prefix = false;
  if (parts[i] == "watch") {
    watch_prefix = true;
    ++i;
  }
  std::vector<std::string_view> rest(parts.begin() + static_cast<long>(i), parts.end());
  if (!rest.empty() && rest[0] == "namespaces") {
    if (rest.size() >= 2) {
      a.namespace_ = std::string(rest[1]);
      if (rest.size() >= 3) rest.erase(rest.begin(), rest.begin() + 2);
    }
  }
  if (!rest.empty()) a.resource = std::string(rest[0]);
  if (rest.size() >= 2) a.name = std::string(rest[1]);
  if (rest.size() >= 3) a.subresource = std::string(rest[2]);
  if (a.resource == "namespaces" && rest.size() <= 2) {
    // /api/v1/namespaces/NS is the namespace object itself, cluster-scoped.
    a.namespace_.clear();
  }
  const auto watch_param = request.QueryParam("watch");
  const bool watch_query = watch_param && (*watch_param == "true" || *watch_param == "1");
  if (method == "get" || method == "head") {
    if (watch_prefix || (a.name.empty() && watch_query)) {
      a.verb = "watch";
    } else {
      a.verb = a.name.empty() ? "list" : "get";
    }
  } else if (method == "post") {
    a.verb = "create";
  } else if (method == "put") {
    a.verb = "update";
  } else if (method == "patch") {
    a.verb = "patch";
  } else if (method == "delete") {
    a.verb = a.name.empty() ? "deletecollection" : "delete";
  }
  return a;
}

bool Authorize(Role role, const RequestAttributes& attrs, std::string* reason) {
  if (role == Role::kAdmin) return true;
  auto deny = [&](std::string why) {
    if (reason) *reason = std::move(why);
    return false;
  };
  if (!attrs.resource_request) {
    return attrs.verb == "get" ? true : deny("");
  }
  if (attrs.verb != "get" && attrs.verb != "list" && attrs.verb != "watch") return deny("");
  if (attrs.resource == "secrets" && attrs.api_group.empty()) return deny("");
  if (attrs.subresource == "console" || attrs.subresource == "vnc" ||
      attrs.subresource == "portforward") {
    return deny("");
  }
  return true;
}

HttpResponse UnauthorizedResponse() {
  return HttpResponse::StatusError(401, "Unauthorized", "Unauthorized");
}

HttpResponse ForbiddenResponse(std::string_view user, const RequestAttributes& a,
                               std::string_view reason) {
  // k8s.io/apiserver endpoints/handlers/responsewriters forbiddenMessage + errors.NewForbidden.
  std::string msg;
  const std::string quoted_user = nlohmann::json(std::string(user)).dump();
  if (!a.resource_request) {
    msg = "User " + quoted_user + " cannot " + a.verb + " path " + nlohmann::json(a.path).dump();
  } else {
    std::string resource = a.resource;
    if (!a.subresource.empty()) resource += "/" + a.subresource;
    msg = "User " + quoted_user + " cannot " + a.verb + " resource " +
          nlohmann::json(resource).dump() + " in API group " + nlohmann::json(a.api_group).dump();
    msg += a.namespace_.empty() ? " at the cluster scope"
                                : " in the namespace " + nlohmann::json(a.namespace_).dump();
  }
  if (!reason.empty()) msg += ": " + std::string(reason);
  std::string message;
  nlohmann::json details = nlohmann::json::object();
  if (!a.resource_request || a.resource.empty()) {
    message = "forbidden: " + msg;
  } else {
    const std::string qualified = a.api_group.empty() ? a.resource : a.resource + "." + a.api_group;
    message = a.name.empty()
                  ? qualified + " is forbidden: " + msg
                  : qualified + " " + nlohmann::json(a.name).dump() + " is forbidden: " + msg;
    if (!a.name.empty()) details["name"] = a.name;
    if (!a.api_group.empty()) details["group"] = a.api_group;
    details["kind"] = a.resource;
  }
  nlohmann::json body = {
      {"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", nlohmann::json::object()},
      {"status", "Failure"}, {"message", message}, {"reason", "Forbidden"},
      {"details", details},  {"code", 403}};
  return HttpResponse::Json(403,
                            body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::optional<UserInfo> Authenticate(const HttpRequest& request, TokenStore& tokens,
                                     const AuthOptions& options, bool* bad_credentials) {
  *bad_credentials = false;
  if (request.peer_uid) {
    if (*request.peer_uid != 0) return std::nullopt;
    return UserInfo{"system:root", {"admin"}, Role::kAdmin};
  }
  if (request.client_certificate) {
    UserInfo u{request.client_certificate->common_name, request.client_certificate->organizations,
               Role::kViewer};
    const auto& o = u.groups;
    if (std::find(o.begin(), o.end(), kAdminGroup) != o.end()) {
      u.role = Role::kAdmin;
      return u;
    }
    if (std::find(o.begin(), o.end(), kViewerGroup) != o.end()) return u;
    // A certificate of our CA without a role group: authenticated, but may do nothing a viewer
    // may not; kube-apiserver would authenticate it and let RBAC decide. We give it viewer.
    return u;
  }
  const std::string_view header = request.Header("authorization");
  if (!header.empty()) {
    std::string_view h = Trim(header);
    const size_t space = h.find(' ');
    if (space != std::string_view::npos && Lower(h.substr(0, space)) == "bearer") {
      std::string_view token = Trim(h.substr(space + 1));
      if (!token.empty()) {
        if (auto e = tokens.Find(token)) {
          return UserInfo{e->user, {std::string(RoleName(e->role))}, e->role};
        }
        *bad_credentials = true;
        return std::nullopt;
      }
    }
  }
  if (!request.tls && options.plain_http_no_auth) {
    return UserInfo{"system:plain-http", {"admin"}, Role::kAdmin};
  }
  return std::nullopt;
}

Handler WithAuth(AuthOptions options, Handler next) {
  auto tokens = std::make_shared<TokenStore>(options.token_file);
  return [options = std::move(options), tokens,
          next = std::move(next)](const HttpRequest& request) -> HttpResponse {
    if (request.peer_uid && *request.peer_uid != 0) {
      return ForbiddenResponse("uid " + std::to_string(*request.peer_uid),
                               RequestAttributesOf(request),
                               "the unix socket serves root (uid 0) only");
    }
    bool bad = false;
    std::optional<UserInfo> user = Authenticate(request, *tokens, options, &bad);
    if (!user) {
      const std::string& p = request.path;
      auto under = [&](std::string_view base) {
        return p == base || (p.size() > base.size() && p.compare(0, base.size(), base) == 0 &&
                             p[base.size()] == '/');
      };
      const bool public_info = (request.method == "GET" || request.method == "HEAD") &&
                               (under("/healthz") || under("/livez") || under("/readyz") ||
                                p == "/version" || p == "/version/");
      if (bad || !public_info) {
        EV_LOG(kDebug) << request.method << " " << request.path << ": 401 ("
                       << (bad ? "invalid bearer token" : "no credentials") << ")";
        return UnauthorizedResponse();
      }
      return next(request);
    }
    const RequestAttributes attrs = RequestAttributesOf(request);
    std::string reason;
    if (!Authorize(user->role, attrs, &reason)) {
      EV_LOG(kInfo) << "forbidden: user " << user->name << " (" << RoleName(user->role) << ") "
                    << attrs.verb << " " << request.path;
      return ForbiddenResponse(user->name, attrs, reason);
    }
    return next(request);
  };
}

}  // namespace edgevirt::api
