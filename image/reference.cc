#include "image/reference.h"

#include <algorithm>
#include <cctype>

namespace edgevirt::image {
namespace {

constexpr std::string_view kDockerHub = "registry-1.docker.io";

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// One path component: [a-z0-9]+ joined by ".", "_", "__" or any run of "-".
bool ValidComponent(std::string_view c) {
  if (c.empty() || !IsLowerAlnum(c.front()) || !IsLowerAlnum(c.back())) return false;
  for (size_t i = 0; i < c.size(); ++i) {
    char ch = c[i];
    if (IsLowerAlnum(ch)) continue;
    if (ch == '-') continue;
    if (ch == '.' || ch == '_') {
      // "." and "_" may not repeat except as "__".
      if (i + 1 < c.size() && !IsLowerAlnum(c[i + 1]) &&
          !(ch == '_' && c[i + 1] == '_' && i + 2 < c.size() && IsLowerAlnum(c[i + 2]))) {
        return false;
      }
      continue;
    }
    return false;
  }
  return true;
}

bool ValidTag(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  if (!word(t.front())) return false;
  return std::all_of(t.begin(), t.end(), [&](char c) { return word(c) || c == '.' || c == '-'; });
}

bool ValidHost(std::string_view h) {
  if (h.empty()) return false;
  std::string_view name = h;
  if (name.front() == '[') {  // [ipv6]:port
    auto close = name.find(']');
    if (close == std::string_view::npos) return false;
    name = name.substr(close + 1);
    if (name.empty()) return true;
    if (name.front() != ':') return false;
    name = name.substr(1);
    return !name.empty() && std::all_of(name.begin(), name.end(), IsDigit);
  }
  auto colon = name.find(':');
  if (colon != std::string_view::npos) {
    std::string_view port = name.substr(colon + 1);
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), IsDigit)) {
      return false;
    }
    name = name.substr(0, colon);
  }
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-';
  });
}

Error Bad(std::string_view text, std::string_view why) {
  return MakeError(Code::kInvalid,
                   "invalid reference \"" + std::string(text) + "\": " + std::string(why));
}

}  // namespace

bool IsValidDigest(std::string_view digest) {
  constexpr std::string_view kPrefix = "sha256:";
  if (digest.size() != kPrefix.size() + 64 || digest.substr(0, kPrefix.size()) != kPrefix) {
    return false;
  }
  return std::all_of(digest.begin() + kPrefix.size(), digest.end(),
                     [](char c) { return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9'); });
}

std::string NormaliseRegistry(std::string_view host) {
  std::string h(host);
  std::transform(h.begin(), h.end(), h.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (h == "docker.io" || h == "index.docker.io" || h == kDockerHub) return std::string(kDockerHub);
  return h;
}

std::string Reference::String() const {
  std::string s = registry + "/" + repository;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

Result<Reference> ParseReference(std::string_view text) {
  if (text.empty()) return Bad(text, "empty");
  if (text.size() > 1024) return Bad(text.substr(0, 64), "longer than 1024 characters");
  Reference ref;
  std::string_view rest = text;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    ref.digest = std::string(rest.substr(at + 1));
    rest = rest.substr(0, at);
    if (!IsValidDigest(ref.digest)) return Bad(text, "digest is not sha256:<64 hex>");
  }
  // A tag follows the last ':' that comes after the last '/'.
  auto slash = rest.rfind('/');
  auto colon = rest.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    ref.tag = std::string(rest.substr(colon + 1));
    rest = rest.substr(0, colon);
    if (!ValidTag(ref.tag)) return Bad(text, "invalid tag");
  }
  // The first component is a registry when it looks like a host: it has a '.' or a ':', or is
  // "localhost", and something follows it.
  std::string_view name = rest;
  auto first = rest.find('/');
  if (first != std::string_view::npos) {
    std::string_view head = rest.substr(0, first);
    if (head.find('.') != std::string_view::npos || head.find(':') != std::string_view::npos ||
        head == "localhost" || (!head.empty() && head.front() == '[')) {
      if (!ValidHost(head)) return Bad(text, "invalid registry host");
      ref.registry = NormaliseRegistry(head);
      name = rest.substr(first + 1);
    }
  }
  if (ref.registry.empty()) ref.registry = std::string(kDockerHub);
  if (name.empty()) return Bad(text, "empty repository");
  size_t start = 0;
  while (true) {
    size_t end = name.find('/', start);
    std::string_view component =
        name.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (!ValidComponent(component)) {
      return Bad(text, "invalid repository component \"" + std::string(component) + "\"");
    }
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  if (name.size() > 255) return Bad(text, "repository longer than 255 characters");
  ref.repository = std::string(name);
  if (ref.registry == kDockerHub && ref.repository.find('/') == std::string::npos) {
    ref.repository = "library/" + ref.repository;
  }
  if (ref.tag.empty() && ref.digest.empty()) {
    ref.tag = "latest";
    ref.tag_defaulted = true;
  }
  return ref;
}

}  // namespace edgevirt::image
