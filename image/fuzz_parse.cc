// libFuzzer target: arbitrary bytes fed to every parser of untrusted registry input:
// ParseReference, ParseManifest (with each accepted Content-Type, none, and one with
// parameters; with and without the matching digest), ParseIndex + SelectPlatform,
// ParseDockerConfig, and the WWW-Authenticate / Content-Range / Retry-After parsers of auth.h.
// Besides crashes, leaks and UB it checks a few invariants of what the parsers accept. Built and
// run by run_fuzz_parse.sh (CTest test `image_parse_fuzz`), seeded from testdata/parse_fuzz/.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "image/auth.h"
#include "image/manifest.h"
#include "image/reference.h"

namespace {

using namespace edgevirt::image;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

void FuzzReference(std::string_view text) {
  auto r = ParseReference(text);
  if (!r) return;
  Check(!r->registry.empty() && !r->repository.empty(), "reference parts empty");
  Check(r->digest.empty() || IsValidDigest(r->digest), "reference digest invalid");
  // The canonical form parses back to itself.
  auto again = ParseReference(r->String());
  Check(static_cast<bool>(again), "canonical reference does not parse");
  Check(again->String() == r->String(), "canonical reference does not round-trip");
}

void FuzzManifest(std::string_view body) {
  static constexpr std::string_view kTypes[] = {
      "",
      kOciManifest,
      kDockerManifest,
      kOciIndex,
      kDockerList,
      "application/json",
      "application/vnd.oci.image.manifest.v1+json; charset=utf-8"};
  const std::string digest = Sha256Digest(body);
  for (std::string_view type : kTypes) {
    for (std::string_view want : {std::string_view(), std::string_view(digest)}) {
      auto m = ParseManifest(body, type, want);
      if (!m) continue;
      Check(m->digest == digest, "manifest digest");
      Check(IsManifestMediaType(m->media_type), "manifest media type");
      Check(IsValidDigest(m->config.digest), "config digest");
      for (const auto& l : m->layers) {
        Check(IsValidDigest(l.digest), "layer digest");
        Check(IsLayerMediaType(l.media_type), "layer media type");
        Check(l.urls.empty(), "foreign layer accepted");
      }
    }
  }
}

void FuzzIndex(std::string_view body) {
  auto entries = ParseIndex(body);
  if (!entries) return;
  for (const auto& e : *entries) Check(IsValidDigest(e.digest), "index entry digest");
  for (std::string_view p : {"", "linux/amd64", "linux/arm64", "linux/arm64/v8", "linux/arm/v7",
                             "windows/amd64", "bad", "linux//", "/"}) {
    auto d = SelectPlatform(*entries, p);
    if (d) Check(IsManifestMediaType(d->media_type), "selected entry is not a manifest");
  }
}

void FuzzAuth(std::string_view text) {
  (void)ParseDockerConfig(text);
  for (const auto& ch : ParseWwwAuthenticate(text)) {
    Check(!ch.scheme.empty(), "challenge without a scheme");
  }
  ContentRange cr;
  if (ParseContentRange(text, &cr)) {
    Check(cr.end >= cr.start, "content range end < start");
    Check(cr.total == -1 || (cr.total > 0 && static_cast<uint64_t>(cr.total) > cr.end),
          "content range total");
  }
  int64_t s = ParseRetryAfter(text, 1'700'000'000);
  Check(s >= -1, "retry-after below -1");
  (void)Base64Decode(text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  FuzzReference(text);
  FuzzManifest(text);
  FuzzIndex(text);
  FuzzAuth(text);
  return 0;
}
