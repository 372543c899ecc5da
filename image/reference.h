// Image references: "[registry/]repository[:tag][@sha256:HEX]", Docker's grammar, with Docker
// Hub's defaults ("busybox" is registry-1.docker.io/library/busybox:latest). Private to image/.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace edgevirt::image {

struct Reference {
  std::string registry;        // "registry-1.docker.io", "127.0.0.1:5000"
  std::string repository;      // "library/busybox", "kv/disk"
  std::string tag;             // "latest" when neither tag nor digest was given
  std::string digest;          // "sha256:HEX" or empty
  bool tag_defaulted = false;  // no tag and no digest in the input
  // Canonical "registry/repository[:tag][@digest]".
  std::string String() const;
};

// kInvalid with the reason ("invalid reference \"X\": ...") for anything outside the grammar:
// upper case repository, empty components, a tag over 128 characters, a digest that is not
// sha256:<64 lower-case hex>.
Result<Reference> ParseReference(std::string_view text);

// docker.io, index.docker.io and registry-1.docker.io -> registry-1.docker.io; other hosts are
// lower-cased and returned as given.
std::string NormaliseRegistry(std::string_view host);

// True for "sha256:" followed by exactly 64 characters of [a-f0-9]: the only digests that may
// appear in a path.
bool IsValidDigest(std::string_view digest);

}  // namespace edgevirt::image
