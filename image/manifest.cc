#include "image/manifest.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "image/reference.h"

namespace edgevirt::image {
namespace {

using nlohmann::json;

Error Invalid(std::string message) { return MakeError(Code::kInvalid, std::move(message)); }

bool IsSchema1(std::string_view mt) {
  return mt == "application/vnd.docker.distribution.manifest.v1+json" ||
         mt == "application/vnd.docker.distribution.manifest.v1+prettyjws";
}

std::string StringField(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

Result<Descriptor> ParseDescriptor(const json& j, std::string_view what) {
  if (!j.is_object()) return Invalid(std::string(what) + ": not an object");
  Descriptor d;
  d.media_type = StringField(j, "mediaType");
  d.digest = StringField(j, "digest");
  if (!IsValidDigest(d.digest)) {
    return Invalid(std::string(what) + ": digest \"" + d.digest.substr(0, 80) +
                   "\" is not sha256:<64 hex>");
  }
  auto size = j.find("size");
  if (size == j.end() || !size->is_number_unsigned()) {
    return Invalid(std::string(what) + ": size missing or not a non-negative integer");
  }
  d.size = size->get<uint64_t>();
  if (auto urls = j.find("urls"); urls != j.end()) {
    if (!urls->is_array()) return Invalid(std::string(what) + ": urls is not an array");
    for (const auto& u : *urls) {
      if (u.is_string()) d.urls.push_back(u.get<std::string>());
    }
  }
  if (auto p = j.find("platform"); p != j.end() && p->is_object()) {
    d.os = StringField(*p, "os");
    d.architecture = StringField(*p, "architecture");
    d.variant = StringField(*p, "variant");
  }
  return d;
}

struct Platform {
  std::string os, arch, variant;
};

std::string NormaliseArch(std::string a) {
  if (a == "x86_64" || a == "x86-64") return "amd64";
  if (a == "aarch64") return "arm64";
  return a;
}

Result<Platform> ParsePlatform(std::string_view text) {
  Platform p;
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t slash = text.find('/', start);
    parts.emplace_back(text.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (parts.size() < 2 || parts.size() > 3 || parts[0].empty() || parts[1].empty() ||
      (parts.size() == 3 && parts[2].empty())) {
    return Invalid("invalid platform \"" + std::string(text) + "\": want os/arch[/variant]");
  }
  p.os = parts[0];
  p.arch = NormaliseArch(parts[1]);
  if (parts.size() == 3) p.variant = parts[2];
  return p;
}

}  // namespace

std::string Sha256Digest(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

std::string BareMediaType(std::string_view content_type) {
  std::string_view s = content_type.substr(0, content_type.find(';'));
  std::string out;
  for (char c : s) {
    if (c != ' ' && c != '\t')
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

bool IsIndexMediaType(std::string_view mt) { return mt == kOciIndex || mt == kDockerList; }
bool IsManifestMediaType(std::string_view mt) {
  return mt == kOciManifest || mt == kDockerManifest;
}
std::string HostPlatform() {
#if defined(__x86_64__)
  return "linux/amd64";
#elif defined(__aarch64__)
  return "linux/arm64";
#elif defined(__s390x__)
  return "linux/s390x";
#elif defined(__powerpc64__)
  return "linux/ppc64le";
#else
  return "linux/unknown";
#endif
}

Result<Manifest> ParseManifest(std::string_view body, std::string_view media_type,
                               std::string_view digest) {
  if (body.size() > kMaxManifestBytes) {
    return MakeError(Code::kTooLarge, "manifest of " + std::to_string(body.size()) +
                                          " bytes exceeds the limit of 4 MiB");
  }
  Manifest m;
  m.digest = Sha256Digest(body);
  if (!digest.empty() && digest != m.digest) {
    return Invalid("manifest digest mismatch: expected " + std::string(digest) + ", got " +
                   m.digest);
  }
  std::string header_type = BareMediaType(media_type);
  if (IsSchema1(header_type)) return Invalid("schema 1 manifests are not supported");
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Invalid("manifest is not a JSON object");
  auto sv = j.find("schemaVersion");
  if (sv != j.end() && sv->is_number_integer() && sv->get<int64_t>() == 1) {
    return Invalid("schema 1 manifests are not supported");
  }
  if (sv == j.end() || !sv->is_number_integer() || sv->get<int64_t>() != 2) {
    return Invalid("manifest schemaVersion is not 2");
  }
  std::string body_type = StringField(j, "mediaType");
  if (IsSchema1(body_type)) return Invalid("schema 1 manifests are not supported");
  if (!body_type.empty() && !header_type.empty() && body_type != header_type &&
      header_type != "application/json") {
    return Invalid("manifest mediaType " + body_type + " disagrees with Content-Type " +
                   header_type);
  }
  m.media_type = !body_type.empty() ? body_type
                 : IsManifestMediaType(header_type) || IsIndexMediaType(header_type)
                     ? header_type
                     : std::string(kOciManifest);
  if (IsIndexMediaType(m.media_type) || j.contains("manifests")) {
    return Invalid("expected an image manifest, got an index (" + m.media_type + ")");
  }
  if (!IsManifestMediaType(m.media_type)) {
    return Invalid("unsupported manifest media type " + m.media_type);
  }
  auto config = j.find("config");
  if (config == j.end()) return Invalid("manifest has no config");
  ASSIGN_OR_RETURN(m.config, ParseDescriptor(*config, "config"));
  auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array()) return Invalid("manifest has no layers array");
  for (size_t i = 0; i < layers->size(); ++i) {
    std::string what = "layer " + std::to_string(i);
    ASSIGN_OR_RETURN(Descriptor d, ParseDescriptor((*layers)[i], what));
    if (!d.urls.empty() || d.media_type.find("nondistributable") != std::string::npos ||
        d.media_type.find("foreign") != std::string::npos) {
      return Invalid(what + ": foreign/non-distributable layers (" + d.media_type +
                     ", urls) are not supported");
    }
    if (!IsLayerMediaType(d.media_type)) {
      return Invalid(what + ": unsupported layer media type \"" + d.media_type + "\"");
    }
    m.layers.push_back(std::move(d));
  }
  m.body = std::string(body);
  return m;
}

Result<std::vector<Descriptor>> ParseIndex(std::string_view body) {
  if (body.size() > kMaxManifestBytes) {
    return MakeError(Code::kTooLarge, "index of " + std::to_string(body.size()) +
                                          " bytes exceeds the limit of 4 MiB");
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Invalid("index is not a JSON object");
  auto sv = j.find("schemaVersion");
  if (sv == j.end() || !sv->is_number_integer() || sv->get<int64_t>() != 2) {
    return Invalid("index schemaVersion is not 2");
  }
  auto list = j.find("manifests");
  if (list == j.end() || !list->is_array()) return Invalid("index has no manifests array");
  std::vector<Descriptor> out;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    std::string mt = e.is_object() ? StringField(e, "mediaType") : "";
    if (!IsManifestMediaType(mt) && !IsIndexMediaType(mt)) continue;
    ASSIGN_OR_RETURN(Descriptor d, ParseDescriptor(e, "index entry " + std::to_string(i)));
    out.push_back(std::move(d));
  }
  return out;
}

Result<Descriptor> SelectPlatform(const std::vector<Descriptor>& entries,
                                  std::string_view platform) {
  std::string wanted_text = platform.empty() ? HostPlatform() : std::string(platform);
  ASSIGN_OR_RETURN(Platform want, ParsePlatform(wanted_text));
  const Descriptor* fallback = nullptr;
  // The platforms for the kNotFound message, bounded: the index comes from the registry and the
  // message ends up in object status.
  constexpr size_t kMaxSeen = 16, kMaxPlatformChars = 64;
  std::string seen;
  size_t seen_count = 0;
  for (const Descriptor& d : entries) {
    if (!IsManifestMediaType(d.media_type)) continue;
    std::string arch = NormaliseArch(d.architecture);
    if (++seen_count <= kMaxSeen) {
      if (!seen.empty()) seen += ", ";
      seen += (d.os + "/" + arch + (d.variant.empty() ? "" : "/" + d.variant))
                  .substr(0, kMaxPlatformChars);
    } else if (seen_count == kMaxSeen + 1) {
      seen += ", ...";
    }
    if (d.os != want.os || arch != want.arch) continue;
    bool default_variant = d.variant.empty() || (arch == "arm64" && d.variant == "v8");
    if (!want.variant.empty()) {
      bool match = d.variant == want.variant ||
                   (arch == "arm64" && want.variant == "v8" && d.variant.empty());
      if (match) return d;
      continue;
    }
    if (default_variant) return d;
    if (fallback == nullptr) fallback = &d;
  }
  if (fallback != nullptr) return *fallback;
  return MakeError(Code::kNotFound,
                   "no image for platform " + wanted_text +
                       " in the index (has: " + (seen.empty() ? std::string("none") : seen) + ")");
}

}  // namespace edgevirt::image
