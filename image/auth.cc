#include "image/auth.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <ctime>
#include <nlohmann/json.hpp>

#include "image/reference.h"

namespace edgevirt::image {
namespace {

using nlohmann::json;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool IsToken(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// A docker config key ("host", "https://host", "https://host/v1/") -> normalised host.
std::string KeyHost(std::string_view key) {
  if (auto p = key.find("://"); p != std::string_view::npos) key = key.substr(p + 3);
  if (auto p = key.find('/'); p != std::string_view::npos) key = key.substr(0, p);
  return NormaliseRegistry(key);
}

}  // namespace

std::vector<Challenge> ParseWwwAuthenticate(std::string_view h) {
  std::vector<Challenge> out;
  size_t i = 0;
  auto skip_ws = [&] {
    while (i < h.size() && (h[i] == ' ' || h[i] == '\t')) ++i;
  };
  while (i < h.size()) {
    skip_ws();
    while (i < h.size() && h[i] == ',') {
      ++i;
      skip_ws();
    }
    size_t start = i;
    while (i < h.size() && IsToken(h[i])) ++i;
    if (i == start) break;
    std::string token(h.substr(start, i - start));
    skip_ws();
    if (i < h.size() && h[i] == '=' && !out.empty()) {
      // A parameter of the current challenge.
      ++i;
      skip_ws();
      std::string value;
      if (i < h.size() && h[i] == '"') {
        ++i;
        while (i < h.size() && h[i] != '"') {
          if (h[i] == '\\' && i + 1 < h.size()) ++i;
          value += h[i++];
        }
        if (i < h.size()) ++i;  // closing quote
      } else {
        size_t vs = i;
        while (i < h.size() && h[i] != ',' && h[i] != ' ' && h[i] != '\t') ++i;
        value = std::string(h.substr(vs, i - vs));
      }
      out.back().params[Lower(token)] = value;
      skip_ws();
      if (i < h.size() && h[i] == ',') ++i;
      continue;
    }
    out.push_back(Challenge{Lower(token), {}});
  }
  return out;
}

std::string Base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

Result<std::string> Base64Decode(std::string_view text) {
  std::string in;
  for (char c : text) {
    if (c != '\n' && c != '\r' && c != ' ') in += c;
  }
  if (in.size() % 4 != 0) return MakeError(Code::kInvalid, "invalid base64");
  std::string out(3 * in.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0) return MakeError(Code::kInvalid, "invalid base64");
  size_t len = static_cast<size_t>(n);
  // EVP_DecodeBlock counts the padding as zero bytes.
  for (size_t k = in.size(); k > 0 && in[k - 1] == '=' && len > 0; --k) --len;
  out.resize(len);
  return out;
}

Result<Keychain> ParseDockerConfig(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return MakeError(Code::kInvalid, "docker config: not a JSON object");
  }
  Keychain out;
  auto auths = j.find("auths");
  if (auths == j.end()) return out;
  if (!auths->is_object())
    return MakeError(Code::kInvalid, "docker config: auths is not an object");
  for (auto it = auths->begin(); it != auths->end(); ++it) {
    std::string host = KeyHost(it.key());
    std::string where = "docker config: auths[\"" + it.key() + "\"]";
    if (host.empty()) return MakeError(Code::kInvalid, where + ": empty host");
    if (!it->is_object()) return MakeError(Code::kInvalid, where + ": not an object");
    const json& e = *it;
    Credential c;
    auto str = [&](const char* k) -> std::string {
      auto f = e.find(k);
      return f != e.end() && f->is_string() ? f->get<std::string>() : std::string();
    };
    if (std::string a = str("auth"); !a.empty()) {
      auto decoded = Base64Decode(a);
      if (!decoded) return MakeError(Code::kInvalid, where + ": auth is not base64");
      auto colon = decoded->find(':');
      if (colon == std::string::npos) {
        return MakeError(Code::kInvalid, where + ": auth is not base64(user:password)");
      }
      c.username = decoded->substr(0, colon);
      c.password = decoded->substr(colon + 1);
    } else {
      c.username = str("username");
      c.password = str("password");
    }
    c.identity_token = str("identitytoken");
    if (c.username.empty() && c.password.empty() && c.identity_token.empty()) {
      return MakeError(Code::kInvalid, where + ": no auth, username/password or identitytoken");
    }
    out[host] = std::move(c);
  }
  return out;
}

const Credential* FindCredential(const Keychain& extra, const Keychain& file,
                                 std::string_view registry) {
  std::string host = NormaliseRegistry(registry);
  if (auto it = extra.find(host); it != extra.end()) return &it->second;
  // Keychains built by hand may carry un-normalised keys.
  for (const auto& [k, v] : extra) {
    if (KeyHost(k) == host) return &v;
  }
  if (auto it = file.find(host); it != file.end()) return &it->second;
  for (const auto& [k, v] : file) {
    if (KeyHost(k) == host) return &v;
  }
  return nullptr;
}

bool ParseContentRange(std::string_view h, ContentRange* out) {
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  while (!h.empty() &&
         (h.back() == ' ' || h.back() == '\t' || h.back() == '\r' || h.back() == '\n')) {
    h.remove_suffix(1);
  }
  if (h.size() < 6 || Lower(h.substr(0, 6)) != "bytes ") return false;
  h.remove_prefix(6);
  auto number = [](std::string_view s, uint64_t* v) {
    if (s.empty() || s.size() > 19) return false;
    uint64_t x = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      x = x * 10 + static_cast<uint64_t>(c - '0');
    }
    *v = x;
    return true;
  };
  auto dash = h.find('-'), slash = h.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash) {
    return false;
  }
  ContentRange r;
  if (!number(h.substr(0, dash), &r.start) ||
      !number(h.substr(dash + 1, slash - dash - 1), &r.end) || r.end < r.start) {
    return false;
  }
  std::string_view total = h.substr(slash + 1);
  if (total == "*") {
    r.total = -1;
  } else {
    uint64_t t = 0;
    if (!number(total, &t) || t <= r.end || t > static_cast<uint64_t>(INT64_MAX)) return false;
    r.total = static_cast<int64_t>(t);
  }
  *out = r;
  return true;
}

int64_t ParseRetryAfter(std::string_view v, int64_t now_unix) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\r' || v.back() == '\n'))
    v.remove_suffix(1);
  if (v.empty()) return -1;
  if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    if (v.size() > 9) return -1;
    return std::stoll(std::string(v));
  }
  struct tm tm = {};
  std::string s(v);
  if (strptime(s.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return -1;
  int64_t when = timegm(&tm);
  return std::max<int64_t>(0, when - now_unix);
}

}  // namespace edgevirt::image
