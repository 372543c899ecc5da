// image/layout: OCI image layouts (a directory with oci-layout, index.json and blobs/) and OCI
// archives (a tar of one, optionally gzip- or zstd-compressed), the input of
// `edgevirtd image import` on air-gapped hosts. Private to image/.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace edgevirt::image {

// One descriptor of index.json's "manifests".
struct LayoutEntry {
  std::string ref_name;  // org.opencontainers.image.ref.name annotation, may be empty
  std::string media_type;
  std::string digest;
  uint64_t size = 0;
};

class Layout {
 public:
  // A directory is used in place. A regular file is an OCI archive: unpacked with libarchive into
  // `scratch_dir` (created if missing; it should be empty and private to the caller), refusing
  // entries that would escape it (absolute names, "..", symlinks, hardlinks to anything but an
  // earlier file of the archive, device nodes) and then used. Checks oci-layout
  // {"imageLayoutVersion":"1.0.0"} and parses index.json (each entry's digest must be valid).
  // kInvalid names the problem; kNotFound when `path` does not exist.
  static Result<Layout> Open(const std::filesystem::path& path,
                             const std::filesystem::path& scratch_dir);

  const std::filesystem::path& root() const { return root_; }
  // index.json "manifests", in order.
  const std::vector<LayoutEntry>& entries() const { return entries_; }
  // blobs/sha256/<hex>; an empty path when `digest` is not a valid sha256 digest.
  std::filesystem::path BlobPath(std::string_view digest) const;
  // The blob's bytes, after checking they hash to `digest`. kInvalid for a bad digest or a digest
  // mismatch, kNotFound for a missing blob, kTooLarge above `max_bytes`.
  Result<std::string> ReadBlob(std::string_view digest, uint64_t max_bytes) const;
  // Checks that the blob hashes to `digest` without reading it into memory (for layer blobs);
  // returns its size.
  Result<uint64_t> VerifyBlob(std::string_view digest) const;

 private:
  std::filesystem::path root_;
  std::vector<LayoutEntry> entries_;
};

}  // namespace edgevirt::image
