// ListenAddress parsing and the HttpRequest/HttpResponse helpers.
#include <array>
#include <charconv>
#include <cstdio>
#include <ctime>

#include <boost/asio/ip/address.hpp>
#include <nlohmann/json.hpp>

#include "api/http_internal.h"
#include "api/http_server.h"

namespace edgevirt::api {
namespace internal {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char LowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

std::optional<std::string> PercentDecode(std::string_view in, bool plus_as_space) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return std::nullopt;
      int hi = HexValue(in[i + 1]);
      int lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      c = static_cast<char>(hi * 16 + lo);
      if (c == '\0') return std::nullopt;
      i += 2;
    } else if (c == '+' && plus_as_space) {
      c = ' ';
    }
    out.push_back(c);
  }
  return out;
}

std::optional<Target> SplitTarget(std::string_view target) {
  if (target == "*") return Target{"*", ""};
  std::string_view rest = target;
  for (std::string_view scheme : {"http://", "https://"}) {
    if (rest.size() >= scheme.size() && EqualsIgnoreCase(rest.substr(0, scheme.size()), scheme)) {
      rest.remove_prefix(scheme.size());
      size_t slash = rest.find_first_of("/?");
      if (slash == std::string_view::npos) {
        rest = "/";
      } else if (rest[slash] == '?') {
        // "http://host?q" has an empty path, which means "/".
        return SplitTarget(std::string("/") + std::string(rest.substr(slash)));
      } else {
        rest.remove_prefix(slash);
      }
      break;
    }
  }
  if (rest.empty() || rest.front() != '/') return std::nullopt;
  Target t;
  size_t q = rest.find('?');
  std::string_view raw_path = rest.substr(0, q);
  if (q != std::string_view::npos) t.query = std::string(rest.substr(q + 1));
  // A fragment is never sent by conforming clients; drop it from the query if one is.
  if (size_t hash = t.query.find('#'); hash != std::string::npos) t.query.resize(hash);
  auto path = PercentDecode(raw_path, /*plus_as_space=*/false);
  if (!path) return std::nullopt;
  t.path = std::move(*path);
  return t;
}

std::string HttpDate(std::chrono::system_clock::time_point t) {
  static constexpr std::array<const char*, 7> kDays = {"Sun", "Mon", "Tue", "Wed",
                                                       "Thu", "Fri", "Sat"};
  static constexpr std::array<const char*, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  // Day and month names by table: strftime's %a/%b follow the locale.
  std::snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[tm.tm_wday % 7],
                tm.tm_mday, kMonths[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                tm.tm_sec);
  return buf;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (LowerAscii(a[i]) != LowerAscii(b[i])) return false;
  }
  return true;
}

std::string ToLowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = LowerAscii(c);
  return out;
}

bool IsValidHeaderName(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

bool IsValidHeaderValue(std::string_view value) {
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

std::string StatusJson(int status, std::string_view reason, std::string_view message) {
  nlohmann::ordered_json j;
  j["kind"] = "Status";
  j["apiVersion"] = "v1";
  j["metadata"] = nlohmann::ordered_json::object();
  j["status"] = "Failure";
  j["message"] = std::string(message);
  j["reason"] = std::string(reason);
  j["code"] = status;
  // `replace`: a message quoting request bytes may not be UTF-8, and dump() throws on that.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace internal

namespace {

Error Invalid(std::string_view text, std::string_view why) {
  return MakeError(Code::kInvalid,
                   "invalid listen address \"" + std::string(text) + "\": " + std::string(why));
}

bool IsLoopback(const boost::asio::ip::address& a) {
  if (a.is_loopback()) return true;
  // ::ffff:127.0.0.1 is IPv4 loopback reached through an IPv6 socket.
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6()).is_loopback();
  }
  return false;
}

}  // namespace

std::string ListenAddress::ToString() const {
  if (kind == Kind::kUnix) return "unix:" + path;
  std::string out = kind == Kind::kHttp ? "http://" : "https://";
  if (host.find(':') != std::string::npos) {
    out += "[" + host + "]";
  } else {
    out += host;
  }
  return out + ":" + std::to_string(port);
}

Result<ListenAddress> ListenAddress::Parse(std::string_view text) {
  ListenAddress a;
  constexpr std::string_view kUnixPrefix = "unix:";
  if (text.substr(0, kUnixPrefix.size()) == kUnixPrefix) {
    std::string_view path = text.substr(kUnixPrefix.size());
    if (path.substr(0, 3) == "///") path.remove_prefix(2);  // unix:///run/x.sock
    if (path.empty() || path.front() != '/') {
      return Invalid(text, "a unix socket path must be absolute (unix:/run/edgevirt/api.sock)");
    }
    if (path.find('\0') != std::string_view::npos) return Invalid(text, "NUL in path");
    // sockaddr_un::sun_path is 108 bytes including the terminating NUL.
    if (path.size() > 107) return Invalid(text, "unix socket path longer than 107 bytes");
    a.kind = Kind::kUnix;
    a.path = std::string(path);
    return a;
  }

  std::string_view rest;
  if (text.substr(0, 7) == "http://") {
    a.kind = Kind::kHttp;
    rest = text.substr(7);
  } else if (text.substr(0, 8) == "https://") {
    a.kind = Kind::kHttps;
    rest = text.substr(8);
  } else {
    return Invalid(text, "expected unix:/PATH, http://HOST:PORT or https://HOST:PORT");
  }
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);  // "http://127.0.0.1:80/"

  std::string_view host;
  std::string_view port_text;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return Invalid(text, "unterminated '[' in host");
    host = rest.substr(1, close - 1);
    std::string_view after = rest.substr(close + 1);
    if (after.empty() || after.front() != ':') return Invalid(text, "missing :PORT");
    port_text = after.substr(1);
    if (host.find(':') == std::string_view::npos) {
      return Invalid(text, "brackets are only for IPv6 addresses");
    }
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return Invalid(text, "missing :PORT");
    host = rest.substr(0, colon);
    port_text = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return Invalid(text, "an IPv6 address must be in brackets: http://[::1]:8080");
    }
  }
  if (host.empty()) return Invalid(text, "missing host");
  if (port_text.find_first_not_of("0123456789") != std::string_view::npos || port_text.empty()) {
    return Invalid(text, "the port must be a number 0-65535 (and nothing may follow it)");
  }
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535) {
    return Invalid(text, "the port must be a number 0-65535");
  }
  a.port = static_cast<uint16_t>(port);

  bool loopback = false;
  if (internal::EqualsIgnoreCase(host, "localhost")) {
    a.host = "localhost";
    loopback = true;
  } else {
    boost::system::error_code err;
    auto ip = boost::asio::ip::make_address(std::string(host), err);
    if (err) {
      return Invalid(text, "the host must be an IPv4 or IPv6 literal or \"localhost\" (got \"" +
                               std::string(host) + "\")");
    }
    a.host = ip.to_string();
    loopback = IsLoopback(ip);
  }
  if (a.kind == Kind::kHttp && !loopback) {
    return Invalid(text,
                   "plain http:// is allowed on loopback addresses only (127.0.0.0/8, ::1, "
                   "localhost); use https:// or a unix: socket for other addresses");
  }
  return a;
}

namespace {
// True if the comma-separated header values of `name` contain `token` (case-insensitive).
bool HasToken(const HttpRequest& r, std::string_view name, std::string_view token) {
  for (const auto& [n, v] : r.headers) {
    if (!internal::EqualsIgnoreCase(n, name)) continue;
    std::string_view rest = v;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view item = rest.substr(0, comma);
      while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
      while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
      if (internal::EqualsIgnoreCase(item, token)) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}
}  // namespace

bool IsWebSocketUpgrade(const HttpRequest& request) {
  return request.method == "GET" && HasToken(request, "connection", "upgrade") &&
         HasToken(request, "upgrade", "websocket");
}

std::string_view HttpRequest::Header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (internal::EqualsIgnoreCase(n, name)) return v;
  }
  return {};
}

std::optional<std::string> HttpRequest::QueryParam(std::string_view name) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    size_t amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string_view raw_key = pair.substr(0, eq);
    auto key = internal::PercentDecode(raw_key, /*plus_as_space=*/true);
    if (!key || *key != name) continue;
    if (eq == std::string_view::npos) return std::string();
    std::string_view raw_value = pair.substr(eq + 1);
    // A malformed escape is passed through literally rather than hiding the parameter.
    auto value = internal::PercentDecode(raw_value, /*plus_as_space=*/true);
    return value ? std::move(*value) : std::string(raw_value);
  }
  return std::nullopt;
}

HttpResponse HttpResponse::Deferred(DeferredFn fn) {
  HttpResponse r;
  r.blocking = std::move(fn);
  return r;
}

HttpResponse HttpResponse::Text(int status, std::string body) {
  return HttpResponse{status, {{"Content-Type", "text/plain; charset=utf-8"}}, std::move(body)};
}

HttpResponse HttpResponse::Json(int status, std::string body) {
  return HttpResponse{status, {{"Content-Type", "application/json"}}, std::move(body)};
}

HttpResponse HttpResponse::StatusError(int status, std::string_view reason,
                                       std::string_view message) {
  return Json(status, internal::StatusJson(status, reason, message));
}

}  // namespace edgevirt::api
