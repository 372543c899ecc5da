// image/disk: turns the layers of a KubeVirt containerDisk into one validated disk file.
//
// Layer blobs are hostile input. Extraction never materialises the image: a first pass reads
// every layer's tar headers into an in-memory model of the final tree (whiteouts applied, links
// checked), a second pass streams the data of the one disk entry into the output file. Nothing
// else is written anywhere. Private to image/ (the lead's cache.cc and the fuzz target use it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "image/manifest.h"  // the layer media types (kMediaTypeOciLayer, ...)

namespace edgevirt::image {

struct Layer {
  std::filesystem::path blob;  // the layer blob file (already digest-verified by the caller)
  std::string media_type;      // one of the kMediaType* above
  std::string digest;          // for messages
};

struct DiskInfo {
  std::string format;  // "qcow2" | "raw"
  uint64_t virtual_size = 0;
  uint64_t allocated_bytes = 0;
};

// Applies `layers` in order (whiteouts `.wh.NAME` and opaque `.wh..wh..opq` honoured) and writes
// the one regular file that ends up under disk/ — or at `path_in_image` when non-empty (relative
// to the image root; a leading '/' is allowed, ".." is not) — to `out_file`: through
// out_file + ".tmp" (replaced if present), sparse (all-zero 4 KiB blocks are holes), fsynced,
// mode 0444, renamed into place, its directory fsynced. Returns the file's size in bytes.
//
// kInvalid, naming the layer and the entry, for: an unknown media type or a blob that is not a
// tar in it; absolute entry names or ".." components; a relative symlink climbing out of the
// root; an entry below a symlink (a `disk -> /etc` then `disk/passwd` escape); a hardlink whose
// target is absolute, climbs out or is not an earlier file of the image; a disk that is (or whose
// path crosses) a symlink, or is a hardlink, a device node, a fifo or a directory; no file under
// disk/ ("no file found under /disk") or several ("more than one file found under /disk: only one
// disk is allowed"). Absolute symlinks elsewhere in the image are kept in the model (base images
// such as alpine carry them; a container resolves them inside its root) but never followed. A tar
// without its end-of-archive footer (umoci 0.4.7 `insert`) is accepted when it ends after a
// complete entry. On any error nothing is left at out_file or out_file + ".tmp".
Result<uint64_t> ExtractContainerDisk(const std::vector<Layer>& layers,
                                      std::string_view path_in_image,
                                      const std::filesystem::path& out_file);

// Runs `qemu-img info --output json FILE` (no -f: the format is detected here, once) under
// RLIMIT_CPU 10 s and RLIMIT_AS 1 GiB, as KubeVirt's pkg/os/disk/validation.go does. Accepts only
// qcow2 and raw; refuses a backing file, a qcow2 external data file, a virtual size above
// `max_virtual_size`, and anything qemu-img cannot read: kInvalid with the reason.
Result<DiskInfo> ValidateDisk(const std::filesystem::path& file, uint64_t max_virtual_size);

// Creates `overlay` (mode 0600) as a qcow2 over the read-only `base` of format `base_format`
// ("qcow2" | "raw"), always passing -F so QEMU never probes the base. An existing overlay is
// kAlreadyExists. image.h's CreateOverlay(Image, overlay) calls this.
Status CreateOverlayFile(const std::filesystem::path& base, std::string_view base_format,
                         const std::filesystem::path& overlay);

}  // namespace edgevirt::image
