// Image manifests and indexes (OCI image-spec v1 and Docker schema 2): parsing, validation and
// platform selection. Pure functions, no I/O. Private to image/.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace edgevirt::image {

inline constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view kDockerList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view kDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
// Every manifest type we accept, for the Accept header of a manifest GET.
inline constexpr std::string_view kManifestAccept =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";
// Manifests (and indexes) bigger than this are refused before parsing.
inline constexpr uint64_t kMaxManifestBytes = uint64_t{4} << 20;

// Layer media types: OCI tar, tar+gzip, tar+zstd, and Docker's gzip (interchangeable with OCI's).
inline constexpr std::string_view kMediaTypeOciLayer = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view kMediaTypeOciLayerGzip =
    "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view kMediaTypeOciLayerZstd =
    "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view kMediaTypeDockerLayerGzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";

struct Descriptor {
  std::string media_type, digest;
  uint64_t size = 0;
  std::vector<std::string> urls;
  std::string os, architecture, variant;  // platform, index entries only
};

// An image manifest (OCI or Docker schema 2), already digest-verified.
struct Manifest {
  std::string digest, media_type, body;
  Descriptor config;
  std::vector<Descriptor> layers;
};

// Parses an image manifest body. `media_type` is the Content-Type it came with (parameters
// ignored; empty = take the body's mediaType, OCI when absent); a body mediaType that disagrees
// is kInvalid. `digest`, when not empty, must equal sha256(body). Refuses (kInvalid) schema 1,
// indexes, layers with `urls` (foreign / non-distributable: fetching arbitrary URLs is an SSRF
// risk), unknown layer media types, digests other than sha256:<64 hex>, bodies over
// kMaxManifestBytes (kTooLarge).
Result<Manifest> ParseManifest(std::string_view body, std::string_view media_type,
                               std::string_view digest);
// The entries of an index / manifest list. Entries of unknown media types are skipped (as the
// image-spec requires); entries with a bad digest make the index kInvalid.
Result<std::vector<Descriptor>> ParseIndex(std::string_view body);
// The first image-manifest entry for `platform` ("os/arch[/variant]"; empty = this host's,
// linux/amd64 or linux/arm64). Without a variant, an entry with no variant (or v8 on arm64) is
// preferred over other variants. kNotFound lists the platforms the index has.
Result<Descriptor> SelectPlatform(const std::vector<Descriptor>& entries,
                                  std::string_view platform);
bool IsIndexMediaType(std::string_view media_type);
bool IsManifestMediaType(std::string_view media_type);
// Layer media types a containerDisk may use (tar, tar+gzip, tar+zstd, Docker gzip).
inline bool IsLayerMediaType(std::string_view mt) {
  return mt == kMediaTypeOciLayer || mt == kMediaTypeOciLayerGzip || mt == kMediaTypeOciLayerZstd ||
         mt == kMediaTypeDockerLayerGzip;
}
// "sha256:HEX" of `bytes`.
std::string Sha256Digest(std::string_view bytes);
// "type/subtype" of a Content-Type, parameters and blanks dropped, lower-cased.
std::string BareMediaType(std::string_view content_type);
// This host's platform: "linux/amd64", "linux/arm64", ...
std::string HostPlatform();

}  // namespace edgevirt::image
