#include "image/registry.h"

#include <curl/curl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "common/fd.h"
#include "common/log.h"
#include "image/auth.h"

namespace edgevirt::image {
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

constexpr int kMaxRedirects = 5;
constexpr size_t kErrorBodyCap = 64 * 1024;
constexpr uint64_t kMaxSmallBlob = uint64_t{4} << 20;
constexpr int64_t kMaxRetryAfterSeconds = 300;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

std::string_view ReasonPhrase(long status) {
  switch (status) {
    case 200:
      return "OK";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 416:
      return "Range Not Satisfiable";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "";
  }
}

struct HttpResponse {
  long status = 0;
  std::string status_line;                                   // "401 Unauthorized"
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;                                          // non-sink bodies, capped
  CURLcode curl = CURLE_OK;
  std::string curl_error;
  bool stalled = false, cancelled = false;
  Status sink_status;  // why a sink aborted the transfer

  std::string Header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
      if (k == name) return v;
    }
    return {};
  }
  bool transport_failed() const { return curl != CURLE_OK; }
};

// Receives 2xx bodies: begin() once before the first byte (may refuse), then data().
struct BodySink {
  std::function<Status(const HttpResponse&)> begin;
  std::function<Status(const char*, size_t)> data;
};

struct Transfer {
  CURL* curl = nullptr;
  HttpResponse* resp = nullptr;
  BodySink* sink = nullptr;
  bool began = false, to_sink = false;
  const std::atomic<bool>* cancel = nullptr;
  std::chrono::milliseconds stall{0};
  SteadyClock::time_point last_progress;
  curl_off_t last_now = -1;
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  if (line.size() >= 5 && line.substr(0, 5) == "HTTP/") {
    t->resp->headers.clear();
    std::string l = Trim(line);
    auto sp = l.find(' ');
    std::string rest = sp == std::string::npos ? "" : Trim(l.substr(sp + 1));
    long status = std::atol(rest.c_str());
    t->resp->status = status;
    if (rest.find(' ') == std::string::npos) {
      std::string_view reason = ReasonPhrase(status);
      if (!reason.empty()) rest += " " + std::string(reason);
    }
    t->resp->status_line = rest;
  } else if (auto colon = line.find(':'); colon != std::string_view::npos) {
    t->resp->headers.emplace_back(Lower(Trim(line.substr(0, colon))), Trim(line.substr(colon + 1)));
  }
  return size * n;
}

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  if (!t->began) {
    t->began = true;
    long code = 0;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
    t->resp->status = code;
    if (t->sink != nullptr && code >= 200 && code < 300) {
      Status s = t->sink->begin(*t->resp);
      if (!s) {
        t->resp->sink_status = std::move(s);
        return 0;
      }
      t->to_sink = true;
    }
  }
  if (t->to_sink) {
    Status s = t->sink->data(data, len);
    if (!s) {
      t->resp->sink_status = std::move(s);
      return 0;
    }
    return len;
  }
  if (t->resp->body.size() < kErrorBodyCap) {
    t->resp->body.append(data, std::min(len, kErrorBodyCap - t->resp->body.size()));
  }
  return len;
}

int OnProgress(void* user, curl_off_t, curl_off_t now, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (t->cancel != nullptr && t->cancel->load()) {
    t->resp->cancelled = true;
    return 1;
  }
  auto clock = SteadyClock::now();
  if (now != t->last_now) {
    t->last_now = now;
    t->last_progress = clock;
  } else if (t->stall.count() > 0 && clock - t->last_progress > t->stall) {
    t->resp->stalled = true;
    return 1;
  }
  return 0;
}

CURLcode OnSslCtx(CURL*, void* ssl_ctx, void* user) {
  auto* ca_file = static_cast<const std::string*>(user);
  X509_STORE* store = SSL_CTX_get_cert_store(static_cast<SSL_CTX*>(ssl_ctx));
  if (store == nullptr || X509_STORE_load_locations(store, ca_file->c_str(), nullptr) != 1) {
    return CURLE_SSL_CACERT_BADFILE;
  }
  return CURLE_OK;
}

// scheme://host:port of a URL, default ports filled in; empty when unparsable.
std::string OriginOf(const std::string& url) {
  CURLU* u = curl_url();
  std::string out;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    char *scheme = nullptr, *host = nullptr, *port = nullptr;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
      out = Lower(scheme) + "://" + Lower(host) + ":" + port;
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
  }
  curl_url_cleanup(u);
  return out;
}

// `location` resolved against `base`; empty when invalid or not http(s).
std::string ResolveUrl(const std::string& base, const std::string& location) {
  CURLU* u = curl_url();
  std::string out;
  if (curl_url_set(u, CURLUPART_URL, base.c_str(), 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, location.c_str(), 0) == CURLUE_OK) {
    char* full = nullptr;
    if (curl_url_get(u, CURLUPART_URL, &full, 0) == CURLUE_OK) out = full;
    curl_free(full);
  }
  curl_url_cleanup(u);
  if (out.rfind("http://", 0) != 0 && out.rfind("https://", 0) != 0) return {};
  return out;
}

std::string Escape(std::string_view s) {
  char* e = curl_easy_escape(nullptr, s.data(), static_cast<int>(s.size()));
  std::string out = e != nullptr ? e : "";
  curl_free(e);
  return out;
}

// True when a Bearer challenge carries error="insufficient_scope" (RFC 6750 3.1).
bool InsufficientScope(const std::vector<Challenge>& challenges) {
  for (const auto& c : challenges) {
    auto e = c.params.find("error");
    if (c.scheme == "bearer" && e != c.params.end() && e->second == "insufficient_scope") {
      return true;
    }
  }
  return false;
}

// "<status line>: <errors[].message>" of a failed response.
std::string DescribeFailure(const HttpResponse& r) {
  std::string detail;
  json j = json::parse(r.body, nullptr, false);
  if (!j.is_discarded() && j.is_object()) {
    if (auto errs = j.find("errors"); errs != j.end() && errs->is_array()) {
      for (const auto& e : *errs) {
        if (!e.is_object()) continue;
        std::string m = e.value("message", std::string());
        if (m.empty()) m = Lower(e.value("code", std::string()));
        if (m.empty()) continue;
        if (!detail.empty()) detail += "; ";
        detail += m;
      }
    } else if (auto d = j.find("details"); d != j.end() && d->is_string()) {
      detail = d->get<std::string>();
    }
  }
  if (detail.empty()) {
    std::string text = Trim(r.body.substr(0, 200));
    bool printable = std::all_of(text.begin(), text.end(), [](char c) {
      return std::isprint(static_cast<unsigned char>(c)) || c == '\n';
    });
    if (printable) detail = text;
  }
  std::string line = r.status_line.empty() ? std::to_string(r.status) : r.status_line;
  std::string out = detail.empty() ? line : line + ": " + detail;
  if (r.status == 401 || r.status == 403) {
    // Say which rights were missing: the registry's errors[] rarely does.
    std::vector<Challenge> chs = ParseWwwAuthenticate(r.Header("www-authenticate"));
    if (InsufficientScope(chs)) {
      for (const auto& c : chs) {
        auto scope = c.params.find("scope");
        if (c.scheme != "bearer") continue;
        out += " (insufficient_scope";
        if (scope != c.params.end()) out += ": the token lacks " + scope->second.substr(0, 200);
        out += ")";
        break;
      }
    }
  }
  return out;
}

Code CodeForStatus(long status) {
  if (status == 401 || status == 403) return Code::kPermission;
  if (status == 404) return Code::kNotFound;
  if (status == 429 || status >= 500) return Code::kUnavailable;
  return Code::kInvalid;
}

bool RetryableStatus(long status) {
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

std::string TransportError(const HttpResponse& r, std::chrono::milliseconds stall) {
  if (r.cancelled) return "cancelled";
  if (r.stalled) {
    return "transfer stalled: no data for " + std::to_string(stall.count()) + " ms";
  }
  return r.curl_error.empty() ? curl_easy_strerror(r.curl) : r.curl_error;
}

// Outcome of one attempt, for the retry loop.
struct Attempt {
  Status status;
  bool retryable = false;
  int64_t retry_after_s = -1;
  bool progress = false;
};

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

}  // namespace

struct RegistryClient::Impl {
  ClientOptions opt;
  CURLSH* share = nullptr;
  std::mutex share_mu[CURL_LOCK_DATA_LAST];

  std::mutex mu;  // guards auth and tokens
  struct RegistryAuth {
    bool pinged = false;
    std::string scheme;  // "", "basic", "bearer"
    std::map<std::string, std::string> params;
  };
  std::map<std::string, RegistryAuth> auth;
  struct Token {
    std::string value;
    SteadyClock::time_point expiry;
  };
  std::map<std::string, Token> tokens;
  std::mt19937_64 rng{std::random_device{}()};

  std::chrono::milliseconds Stall() const {
    if (opt.stall_timeout_for_test.count() > 0) return opt.stall_timeout_for_test;
    return std::chrono::duration_cast<std::chrono::milliseconds>(opt.stall_timeout);
  }

  const RegistryHost* HostConfig(const std::string& registry) const {
    for (const auto& h : opt.registries) {
      if (NormaliseRegistry(h.host) == registry) return &h;
    }
    return nullptr;
  }

  std::string Base(const std::string& registry) const {
    const RegistryHost* h = HostConfig(registry);
    return std::string(h != nullptr && h->insecure ? "http://" : "https://") + registry;
  }

  struct Request {
    std::string method = "GET";  // GET | POST
    std::string url;
    std::vector<std::string> headers;
    std::string post_body;
    const RegistryHost* tls = nullptr;  // TLS settings when the URL is the registry's
    const std::atomic<bool>* cancel = nullptr;
  };

  // One HTTP exchange, no redirects, no auth logic.
  HttpResponse Perform(const Request& req, BodySink* sink) {
    HttpResponse resp;
    CURL* c = curl_easy_init();
    if (c == nullptr) {
      resp.curl = CURLE_FAILED_INIT;
      resp.curl_error = "curl_easy_init failed";
      return resp;
    }
    Transfer t;
    t.curl = c;
    t.resp = &resp;
    t.sink = sink;
    t.cancel = req.cancel;
    t.stall = Stall();
    t.last_progress = SteadyClock::now();
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_slist* headers = nullptr;
    for (const auto& h : req.headers) headers = curl_slist_append(headers, h.c_str());
    curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, opt.user_agent.c_str());
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, OnProgress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 256L * 1024);
    long connect_s =
        std::max<long>(1, std::min<long>(30, static_cast<long>(Stall().count() / 1000)));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, connect_s);
    if (opt.low_speed_limit > 0 && opt.low_speed_time.count() > 0) {
      curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, static_cast<long>(opt.low_speed_limit));
      curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, static_cast<long>(opt.low_speed_time.count()));
    }
    if (share != nullptr) curl_easy_setopt(c, CURLOPT_SHARE, share);
    if (req.method == "POST") {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.post_body.c_str());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(req.post_body.size()));
    }
    if (req.tls != nullptr) {
      if (req.tls->skip_verify) {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
      }
      if (!req.tls->ca_file.empty()) {
        curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, OnSslCtx);
        curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, &req.tls->ca_file);
      }
    }
    resp.curl = curl_easy_perform(c);
    if (resp.curl != CURLE_OK)
      resp.curl_error = errbuf[0] != 0 ? errbuf : curl_easy_strerror(resp.curl);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (code != 0) resp.status = code;
    // A 2xx with an empty body never reached OnBody: let the sink see the headers anyway.
    if (resp.curl == CURLE_OK && !t.began && sink != nullptr && resp.status >= 200 &&
        resp.status < 300) {
      Status s = sink->begin(resp);
      if (!s) resp.sink_status = std::move(s);
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    return resp;
  }

  // The /v2/ ping: learns the auth scheme of a registry once.
  Status EnsurePinged(const std::string& registry, const std::atomic<bool>* cancel) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (auth[registry].pinged) return Ok();
    }
    Request req;
    req.url = Base(registry) + "/v2/";
    req.tls = HostConfig(registry);
    req.cancel = cancel;
    HttpResponse r = Perform(req, nullptr);
    if (r.transport_failed()) {
      return MakeError(Code::kUnavailable, "GET " + req.url + ": " + TransportError(r, Stall()));
    }
    RegistryAuth a;
    a.pinged = true;
    if (r.status == 401) {
      for (auto& ch : ParseWwwAuthenticate(r.Header("www-authenticate"))) {
        if (ch.scheme == "bearer" || ch.scheme == "basic") {
          a.scheme = ch.scheme;
          a.params = ch.params;
          break;
        }
      }
    } else if (r.status != 200) {
      return MakeError(RetryableStatus(r.status) ? Code::kUnavailable : CodeForStatus(r.status),
                       "GET " + req.url + ": " + DescribeFailure(r));
    }
    std::lock_guard<std::mutex> lock(mu);
    auth[registry] = a;
    return Ok();
  }

  Result<std::string> FetchToken(const std::map<std::string, std::string>& params,
                                 const std::string& scope, const Credential* cred,
                                 const std::atomic<bool>* cancel, bool force) {
    auto realm_it = params.find("realm");
    if (realm_it == params.end() || realm_it->second.empty()) {
      return MakeError(Code::kPermission, "Bearer challenge without a realm");
    }
    std::string realm = realm_it->second;
    if (realm.rfind("http://", 0) != 0 && realm.rfind("https://", 0) != 0) {
      return MakeError(Code::kPermission, "Bearer realm is not an http(s) URL");
    }
    std::string service = params.count("service") ? params.at("service") : "";
    // Tokens are per identity: a hash of the whole credential, never the secret itself.
    std::string who =
        cred == nullptr
            ? "anonymous"
            : Sha256Digest(cred->username + '\0' + cred->password + '\0' + cred->identity_token);
    std::string key = realm + "|" + service + "|" + scope + "|" + who;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = tokens.find(key);
      if (!force && it != tokens.end() && SteadyClock::now() < it->second.expiry) {
        return it->second.value;
      }
    }
    Request req;
    req.cancel = cancel;
    if (cred != nullptr && !cred->identity_token.empty()) {
      // OAuth2 refresh-token grant (docker config "identitytoken").
      req.method = "POST";
      req.url = realm;
      req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
      req.post_body = "grant_type=refresh_token&client_id=" + Escape(opt.user_agent) +
                      "&refresh_token=" + Escape(cred->identity_token) +
                      "&service=" + Escape(service) + "&scope=" + Escape(scope);
    } else {
      req.url = realm + (realm.find('?') == std::string::npos ? "?" : "&") +
                "service=" + Escape(service) + "&scope=" + Escape(scope);
      if (cred != nullptr && !cred->username.empty()) {
        req.headers.push_back("Authorization: Basic " +
                              Base64Encode(cred->username + ":" + cred->password));
      }
    }
    HttpResponse r = Perform(req, nullptr);
    if (r.transport_failed()) {
      return MakeError(Code::kUnavailable,
                       "token request to " + realm + ": " + TransportError(r, Stall()));
    }
    if (r.status != 200) {
      Code code = RetryableStatus(r.status) ? Code::kUnavailable : Code::kPermission;
      std::string d = DescribeFailure(r);
      if (d == r.status_line) d += ": authentication failed at " + realm;
      return MakeError(code, d);
    }
    json j = json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return MakeError(Code::kPermission, "token response from " + realm + " is not JSON");
    }
    std::string token = j.value("token", std::string());
    if (token.empty()) token = j.value("access_token", std::string());
    if (token.empty())
      return MakeError(Code::kPermission, "token response from " + realm + " has no token");
    int64_t expires = 60;
    if (auto e = j.find("expires_in"); e != j.end() && e->is_number_integer()) {
      expires = std::max<int64_t>(e->get<int64_t>(), 1);
    }
    // Refresh early: 10 s, or a fifth of short lifetimes.
    int64_t margin = std::min<int64_t>(10, expires / 5);
    std::lock_guard<std::mutex> lock(mu);
    tokens[key] = Token{token, SteadyClock::now() + std::chrono::seconds(expires - margin)};
    return token;
  }

  // The Authorization header for a request of `repo` at `registry` ("" when none).
  Result<std::string> AuthHeader(const std::string& registry, const std::string& repo,
                                 const Keychain& extra, const std::atomic<bool>* cancel, bool force,
                                 const Challenge* challenge) {
    RETURN_IF_ERROR(EnsurePinged(registry, cancel));
    RegistryAuth a;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (challenge != nullptr) {
        auth[registry].scheme = challenge->scheme;
        auth[registry].params = challenge->params;
      }
      a = auth[registry];
    }
    const Credential* cred = FindCredential(extra, opt.keychain, registry);
    if (a.scheme == "basic") {
      if (cred == nullptr || cred->username.empty()) return std::string();
      return "Authorization: Basic " + Base64Encode(cred->username + ":" + cred->password);
    }
    if (a.scheme == "bearer") {
      std::string scope = "repository:" + repo + ":pull";
      if (challenge != nullptr) {
        auto s = challenge->params.find("scope");
        if (s != challenge->params.end() && !s->second.empty()) scope = s->second;
      }
      ASSIGN_OR_RETURN(std::string token, FetchToken(a.params, scope, cred, cancel, force));
      return "Authorization: Bearer " + token;
    }
    return std::string();
  }

  // One logical request to the registry: auth (one re-auth on 401) and manual redirects.
  Result<HttpResponse> Send(const Reference& ref, const std::string& path,
                            std::vector<std::string> headers, BodySink* sink, const Keychain& extra,
                            const std::atomic<bool>* cancel) {
    std::string base = Base(ref.registry);
    std::string origin = OriginOf(base);
    ASSIGN_OR_RETURN(std::string authz,
                     AuthHeader(ref.registry, ref.repository, extra, cancel, false, nullptr));
    std::string url = base + path;
    bool reauthed = false, fresh_redirect = false;
    for (int hop = 0; hop <= kMaxRedirects;) {
      Request req;
      req.url = url;
      req.headers = headers;
      req.cancel = cancel;
      bool own = OriginOf(url) == origin;
      if (own) {
        req.tls = HostConfig(ref.registry);
        if (!authz.empty()) req.headers.push_back(authz);
      }
      HttpResponse r = Perform(req, sink);
      if (r.transport_failed()) return r;
      // A 401, or a 403 whose Bearer challenge says insufficient_scope (a token without the
      // rights for this repository): one fresh token for the challenge's scope, then retry.
      std::vector<Challenge> chs;
      if ((r.status == 401 || r.status == 403) && own && !reauthed) {
        chs = ParseWwwAuthenticate(r.Header("www-authenticate"));
      }
      if (!chs.empty() && (r.status == 401 || InsufficientScope(chs))) {
        reauthed = true;
        const Challenge* ch = nullptr;
        for (const auto& c : chs) {
          if (c.scheme == "bearer" || c.scheme == "basic") {
            ch = &c;
            break;
          }
        }
        if (ch == nullptr) return r;
        ASSIGN_OR_RETURN(authz, AuthHeader(ref.registry, ref.repository, extra, cancel, true, ch));
        if (authz.empty()) return r;
        continue;
      }
      if (!own && r.status == 403 && !fresh_redirect) {
        // A redirect target (presigned URL) that expired or was already spent: the registry
        // hands out a fresh one.
        EV_LOG(kInfo) << "GET " << OriginOf(url) << ": " << r.status_line
                      << " from the redirect target; asking the registry again";
        fresh_redirect = true;
        url = base + path;
        continue;
      }
      if (r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 ||
          r.status == 308) {
        std::string next = ResolveUrl(url, r.Header("location"));
        if (next.empty()) {
          return MakeError(Code::kUnavailable, "redirect from " + url + " to an invalid location");
        }
        url = next;
        ++hop;
        continue;
      }
      return r;
    }
    return MakeError(Code::kUnavailable, "more than " + std::to_string(kMaxRedirects) +
                                             " redirects from " + base + path);
  }

  std::chrono::milliseconds Backoff(int failures, int64_t retry_after_s) {
    auto base = opt.retry_base.count() > 0 ? opt.retry_base : std::chrono::milliseconds(1);
    int64_t ms = base.count();
    for (int i = 1; i < failures && ms < opt.retry_max.count(); ++i) ms *= 2;
    ms = std::min<int64_t>(ms, opt.retry_max.count());
    double jitter;
    {
      std::lock_guard<std::mutex> lock(mu);
      jitter = std::uniform_real_distribution<double>(0.5, 1.0)(rng);
    }
    ms = static_cast<int64_t>(static_cast<double>(ms) * jitter);
    if (retry_after_s >= 0) ms = std::max<int64_t>(ms, retry_after_s * 1000);
    return std::chrono::milliseconds(ms);
  }

  static bool SleepFor(std::chrono::milliseconds d, const std::atomic<bool>* cancel) {
    auto end = SteadyClock::now() + d;
    while (SteadyClock::now() < end) {
      if (cancel != nullptr && cancel->load()) return false;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - SteadyClock::now());
      std::this_thread::sleep_for(std::min(left, std::chrono::milliseconds(50)));
    }
    return !(cancel != nullptr && cancel->load());
  }

  // Runs `attempt` until it succeeds, fails for good, or max_attempts attempts in a row made
  // no progress.
  Status Retry(const std::string& what, const std::function<Attempt()>& attempt,
               const std::atomic<bool>* cancel) {
    int failures = 0;
    while (true) {
      if (cancel != nullptr && cancel->load()) return MakeError(Code::kUnavailable, "cancelled");
      Attempt a = attempt();
      if (a.status || !a.retryable) return a.status;
      failures = a.progress ? 1 : failures + 1;
      if (failures >= opt.max_attempts) {
        return std::move(a.status).error().Wrap(what + ": giving up after " +
                                                std::to_string(failures) + " attempts");
      }
      if (a.retry_after_s > kMaxRetryAfterSeconds) {
        return std::move(a.status).error().Wrap(what + ": Retry-After " +
                                                std::to_string(a.retry_after_s) + " s is too long");
      }
      auto delay = Backoff(failures, a.retry_after_s);
      EV_LOG(kWarning) << what << ": " << a.status.error().message << "; retrying in "
                       << delay.count() << " ms";
      if (!SleepFor(delay, cancel)) return MakeError(Code::kUnavailable, "cancelled");
    }
  }

  // Classifies a finished exchange that did not succeed.
  Attempt Failed(const Result<HttpResponse>& r, const std::string& /*what*/) {
    Attempt a;
    if (!r) {
      a.status = r.error();
      a.retryable = r.error().code == Code::kUnavailable;
      return a;
    }
    if (r->cancelled) {
      a.status = MakeError(Code::kUnavailable, "cancelled");
      return a;
    }
    if (r->transport_failed() && !r->sink_status) {
      a.status = r->sink_status;
      a.retryable = r->sink_status.error().code == Code::kUnavailable;
      return a;
    }
    if (r->transport_failed()) {
      a.status = MakeError(Code::kUnavailable, TransportError(*r, Stall()));
      a.retryable = true;
      return a;
    }
    a.status = MakeError(CodeForStatus(r->status), DescribeFailure(*r));
    a.retryable = RetryableStatus(r->status);
    if (a.retryable)
      a.retry_after_s = ParseRetryAfter(r->Header("retry-after"), std::time(nullptr));
    return a;
  }

  struct RawManifest {
    std::string body, content_type, docker_digest;
  };

  Result<RawManifest> GetManifest(const Reference& ref, const std::string& target,
                                  const Keychain& extra) {
    RawManifest out;
    BodySink sink;
    sink.begin = [&](const HttpResponse& r) -> Status {
      out.body.clear();
      std::string len = r.Header("content-length");
      if (!len.empty() && std::strtoull(len.c_str(), nullptr, 10) > kMaxManifestBytes) {
        return MakeError(Code::kTooLarge,
                         "manifest of " + len + " bytes exceeds the limit of 4 MiB");
      }
      return Ok();
    };
    sink.data = [&](const char* p, size_t n) -> Status {
      if (out.body.size() + n > kMaxManifestBytes) {
        return MakeError(Code::kTooLarge, "manifest exceeds the limit of 4 MiB");
      }
      out.body.append(p, n);
      return Ok();
    };
    std::string what = "GET manifest " + ref.registry + "/" + ref.repository + ":" + target;
    Status s = Retry(
        what,
        [&]() -> Attempt {
          out = RawManifest();
          auto r = Send(ref, "/v2/" + ref.repository + "/manifests/" + target,
                        {"Accept: " + std::string(kManifestAccept)}, &sink, extra, nullptr);
          if (r && !r->transport_failed() && r->status == 200) {
            out.content_type = r->Header("content-type");
            out.docker_digest = r->Header("docker-content-digest");
            return Attempt{};
          }
          return Failed(r, what);
        },
        nullptr);
    if (!s) return std::move(s).error();
    return out;
  }

  Result<Manifest> CheckedManifest(const RawManifest& raw, std::string_view want_digest,
                                   bool* is_index, std::vector<Descriptor>* entries) {
    std::string computed = Sha256Digest(raw.body);
    if (!raw.docker_digest.empty() && raw.docker_digest.rfind("sha256:", 0) == 0 &&
        raw.docker_digest != computed) {
      return MakeError(Code::kInvalid, "manifest digest mismatch: Docker-Content-Digest " +
                                           raw.docker_digest + ", body " + computed);
    }
    if (!want_digest.empty() && want_digest != computed) {
      return MakeError(Code::kInvalid, "manifest digest mismatch: expected " +
                                           std::string(want_digest) + ", got " + computed);
    }
    std::string ct = BareMediaType(raw.content_type);
    json j = json::parse(raw.body, nullptr, false);
    std::string body_type;
    bool has_manifests = false;
    if (!j.is_discarded() && j.is_object()) {
      if (auto m = j.find("mediaType"); m != j.end() && m->is_string()) body_type = *m;
      has_manifests = j.contains("manifests");
    }
    if (IsIndexMediaType(ct) || IsIndexMediaType(body_type) ||
        (has_manifests && body_type.empty())) {
      if (!body_type.empty() && !ct.empty() && body_type != ct && ct != "application/json") {
        return MakeError(Code::kInvalid,
                         "index mediaType " + body_type + " disagrees with Content-Type " + ct);
      }
      *is_index = true;
      ASSIGN_OR_RETURN(*entries, ParseIndex(raw.body));
      Manifest m;
      m.digest = computed;
      m.media_type = !body_type.empty() ? body_type : ct;
      return m;
    }
    *is_index = false;
    return ParseManifest(raw.body, raw.content_type, computed);
  }
};

ClientOptions ClientOptionsFrom(const Options& options, Keychain file_keychain) {
  ClientOptions c;
  c.registries = options.registries;
  c.keychain = std::move(file_keychain);
  c.platform = options.platform;
  c.stall_timeout = options.stall_timeout;
  c.low_speed_limit = options.low_speed_limit;
  c.low_speed_time = options.low_speed_time;
  c.max_attempts = std::max(1, options.max_attempts);
  c.retry_base = options.retry_base;
  c.retry_max = options.retry_max;
  c.checkpoint_bytes = options.checkpoint_bytes;
  return c;
}

RegistryClient::RegistryClient(ClientOptions options) : impl_(std::make_unique<Impl>()) {
  static CurlGlobal global;
  impl_->opt = std::move(options);
  if (impl_->opt.max_attempts < 1) impl_->opt.max_attempts = 1;
  if (impl_->opt.checkpoint_bytes == 0) impl_->opt.checkpoint_bytes = uint64_t{64} << 20;
  impl_->share = curl_share_init();
  if (impl_->share != nullptr) {
    curl_share_setopt(
        impl_->share, CURLSHOPT_LOCKFUNC,
        +[](CURL*, curl_lock_data data, curl_lock_access, void* user) {
          static_cast<Impl*>(user)->share_mu[data].lock();
        });
    curl_share_setopt(
        impl_->share, CURLSHOPT_UNLOCKFUNC, +[](CURL*, curl_lock_data data, void* user) {
          static_cast<Impl*>(user)->share_mu[data].unlock();
        });
    curl_share_setopt(impl_->share, CURLSHOPT_USERDATA, impl_.get());
    curl_share_setopt(impl_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_share_setopt(impl_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  }
}

RegistryClient::~RegistryClient() {
  if (impl_->share != nullptr) curl_share_cleanup(impl_->share);
}

Result<Manifest> RegistryClient::Resolve(const Reference& ref, const Keychain& extra,
                                         std::string* index_digest) {
  if (index_digest != nullptr) index_digest->clear();
  std::string target = ref.digest.empty() ? ref.tag : ref.digest;
  ASSIGN_OR_RETURN(auto raw, impl_->GetManifest(ref, target, extra));
  bool is_index = false;
  std::vector<Descriptor> entries;
  ASSIGN_OR_RETURN(Manifest top, impl_->CheckedManifest(raw, ref.digest, &is_index, &entries));
  if (!is_index) return top;
  ASSIGN_OR_RETURN(Descriptor chosen, SelectPlatform(entries, impl_->opt.platform));
  ASSIGN_OR_RETURN(auto raw2, impl_->GetManifest(ref, chosen.digest, extra));
  if (raw2.body.size() != chosen.size) {
    return MakeError(Code::kInvalid, "manifest " + chosen.digest + " is " +
                                         std::to_string(raw2.body.size()) +
                                         " bytes, the index says " + std::to_string(chosen.size));
  }
  std::vector<Descriptor> nested;
  ASSIGN_OR_RETURN(Manifest m, impl_->CheckedManifest(raw2, chosen.digest, &is_index, &nested));
  if (is_index) return MakeError(Code::kInvalid, "nested image indexes are not supported");
  if (index_digest != nullptr) *index_digest = top.digest;
  return m;
}

Result<std::string> RegistryClient::FetchSmallBlob(const Reference& ref, const Descriptor& blob,
                                                   const Keychain& extra) {
  if (!IsValidDigest(blob.digest)) {
    return MakeError(Code::kInvalid, "invalid digest \"" + blob.digest.substr(0, 80) + "\"");
  }
  if (blob.size > kMaxSmallBlob) {
    return MakeError(Code::kTooLarge, "blob " + blob.digest + " of " + std::to_string(blob.size) +
                                          " bytes exceeds the limit of 4 MiB");
  }
  std::string body;
  BodySink sink;
  sink.begin = [&](const HttpResponse&) -> Status {
    body.clear();
    return Ok();
  };
  sink.data = [&](const char* p, size_t n) -> Status {
    if (body.size() + n > blob.size) {
      return MakeError(Code::kInvalid, "blob " + blob.digest + " is larger than its size " +
                                           std::to_string(blob.size));
    }
    body.append(p, n);
    return Ok();
  };
  std::string what = "GET blob " + ref.registry + "/" + ref.repository + "@" + blob.digest;
  Status s = impl_->Retry(
      what,
      [&]() -> Attempt {
        auto r = impl_->Send(ref, "/v2/" + ref.repository + "/blobs/" + blob.digest,
                             {"Accept-Encoding: identity"}, &sink, extra, nullptr);
        if (r && !r->transport_failed() && r->status == 200) return Attempt{};
        return impl_->Failed(r, what);
      },
      nullptr);
  if (!s) return std::move(s).error();
  if (body.size() != blob.size) {
    return MakeError(Code::kInvalid, "blob " + blob.digest + ": got " +
                                         std::to_string(body.size()) + " bytes, expected " +
                                         std::to_string(blob.size));
  }
  std::string got = Sha256Digest(body);
  if (got != blob.digest) {
    return MakeError(Code::kInvalid,
                     "blob digest mismatch: expected " + blob.digest + ", got " + got);
  }
  return body;
}

Status RegistryClient::FetchBlob(const Reference& ref, const Descriptor& blob, ContentStore& store,
                                 const Keychain& extra,
                                 const std::function<void(uint64_t)>& progress,
                                 const std::atomic<bool>* cancel) {
  if (!IsValidDigest(blob.digest)) {
    return MakeError(Code::kInvalid, "invalid digest \"" + blob.digest.substr(0, 80) + "\"");
  }
  if (store.Has(blob.digest)) return Ok();
  ASSIGN_OR_RETURN(std::unique_ptr<Ingest> ingest,
                   store.OpenIngest(blob.digest, blob.size, cancel));
  if (ingest == nullptr) return Ok();  // another writer finished it
  // Progress is reported as the high-water mark of the offset, so a restart from byte 0 (Range
  // ignored, bad Content-Range) never reports bytes twice and the sum never exceeds the size.
  uint64_t reported = ingest->offset();
  if (progress && reported > 0) progress(reported);
  const uint64_t checkpoint = impl_->opt.checkpoint_bytes;
  std::string what = "GET blob " + ref.registry + "/" + ref.repository + "@" + blob.digest;

  bool fatal = false;  // the sink refused the data for good (overrun)
  BodySink sink;
  uint64_t attempt_start = 0;
  sink.begin = [&](const HttpResponse& r) -> Status {
    if (r.status == 206) {
      ContentRange cr;
      std::string header = r.Header("content-range");
      if (!ParseContentRange(header, &cr) || cr.start != attempt_start || cr.end + 1 != blob.size ||
          cr.total != static_cast<int64_t>(blob.size)) {
        // Restart from zero rather than risk a silently corrupt blob.
        RETURN_IF_ERROR(ingest->Reset());
        return MakeError(Code::kUnavailable,
                         "bad Content-Range \"" + header.substr(0, 100) +
                             "\" for Range: bytes=" + std::to_string(attempt_start) + "- of " +
                             std::to_string(blob.size) + " bytes");
      }
      return Ok();
    }
    if (r.status != 200) {
      return MakeError(Code::kUnavailable, "unexpected status " + r.status_line);
    }
    std::string len = r.Header("content-length");
    if (!len.empty() && std::strtoull(len.c_str(), nullptr, 10) != blob.size) {
      fatal = true;
      return MakeError(Code::kInvalid, "blob " + blob.digest + ": server sends " + len +
                                           " bytes, descriptor says " + std::to_string(blob.size));
    }
    if (ingest->offset() > 0) {
      // Range ignored: the body starts at byte 0; take it from there.
      EV_LOG(kInfo) << what << ": the server ignored Range; restarting from byte 0";
      RETURN_IF_ERROR(ingest->Reset());
    }
    return Ok();
  };
  sink.data = [&](const char* p, size_t n) -> Status {
    Status s = ingest->Append(p, n);
    if (!s) {
      fatal = s.error().code == Code::kInvalid;
      return s;
    }
    if (progress && ingest->offset() > reported) {
      progress(ingest->offset() - reported);
      reported = ingest->offset();
    }
    return ingest->CheckpointEvery(checkpoint);
  };

  Status result = impl_->Retry(
      what,
      [&]() -> Attempt {
        attempt_start = ingest->offset();
        std::vector<std::string> headers = {"Accept-Encoding: identity"};
        if (attempt_start > 0 && attempt_start < blob.size) {
          headers.push_back("Range: bytes=" + std::to_string(attempt_start) + "-");
        }
        Result<HttpResponse> r =
            attempt_start == blob.size && blob.size > 0
                ? Result<HttpResponse>(HttpResponse{.status = 200})
                : impl_->Send(ref, "/v2/" + ref.repository + "/blobs/" + blob.digest, headers,
                              &sink, extra, cancel);
        bool progressed = ingest->offset() > attempt_start;
        if (fatal) {
          ingest->Discard();
          Attempt a;
          a.status = r && !r->sink_status
                         ? r->sink_status
                         : Status(MakeError(Code::kInvalid, "blob " + blob.digest + " refused"));
          return a;
        }
        if (r && !r->transport_failed() &&
            (r->status == 200 || r->status == 206 || r->status == 416)) {
          if (ingest->offset() == blob.size) {
            Attempt a;
            a.status = ingest->Commit();
            return a;
          }
          if (r->status == 416) {
            (void)ingest->Reset();
          }
          (void)ingest->Checkpoint();
          Attempt a;
          a.status = MakeError(Code::kUnavailable, "body ended at byte " +
                                                       std::to_string(ingest->offset()) + " of " +
                                                       std::to_string(blob.size));
          a.retryable = true;
          a.progress = progressed;
          return a;
        }
        Status cp = ingest->Checkpoint();
        Attempt a = impl_->Failed(r, what);
        if (!cp) {
          a.status = cp;
          a.retryable = false;
        }
        a.progress = progressed;
        return a;
      },
      cancel);
  if (!result) (void)ingest->Checkpoint();
  return result;
}

}  // namespace edgevirt::image
