// libFuzzer target: arbitrary bytes as containerDisk layers, fed to ExtractContainerDisk as an
// uncompressed tar, as a gzip stream of those bytes (so the tar parser sees them through the
// decoder), as garbage labelled gzip, and split into two layers (whiteouts across layers).
// Checks that nothing crashes and that the extractor never leaves anything in its directory but
// the output file. Built and run by run_fuzz_extract.sh (CTest test `image_extract_fuzz`).
#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "image/disk.h"

namespace {

namespace fs = std::filesystem;
using edgevirt::image::ExtractContainerDisk;
using edgevirt::image::Layer;

const fs::path& WorkDir() {
  static const fs::path dir = [] {
    std::string tmpl = (fs::temp_directory_path() / "ev-fuzz-extract-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    fs::create_directories(fs::path(tmpl) / "in");
    fs::create_directories(fs::path(tmpl) / "out");
    return fs::path(tmpl);
  }();
  return dir;
}

void WriteFile(const fs::path& p, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(p.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

void WriteGzip(const fs::path& p, const uint8_t* data, size_t size) {
  gzFile f = gzopen(p.c_str(), "wb1");
  if (f == nullptr) std::abort();
  if (size > 0 && gzwrite(f, data, static_cast<unsigned>(size)) != static_cast<int>(size)) {
    std::abort();
  }
  gzclose(f);
}

// Runs one extraction and checks the output directory holds at most the output file.
void Extract(const std::vector<Layer>& layers, std::string_view path_in_image) {
  const fs::path out_dir = WorkDir() / "out";
  auto r = ExtractContainerDisk(layers, path_in_image, out_dir / "disk");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    if (e.path().filename() != "disk" || !r.has_value()) {
      std::fprintf(stderr, "extractor left %s (result: %s)\n", e.path().c_str(),
                   r ? "ok" : r.error().message.c_str());
      std::abort();
    }
  }
  fs::remove(out_dir / "disk", ec);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path in = WorkDir() / "in";
  const std::string tar(edgevirt::image::kMediaTypeOciLayer);
  const std::string gzip(edgevirt::image::kMediaTypeOciLayerGzip);

  WriteFile(in / "layer.tar", data, size);
  Extract({Layer{in / "layer.tar", tar, "fuzz-tar"}}, "");
  Extract({Layer{in / "layer.tar", tar, "fuzz-tar"}}, "/custom/disk.img");
  Extract({Layer{in / "layer.tar", gzip, "fuzz-garbage-gzip"}}, "");

  WriteGzip(in / "layer.tar.gz", data, size);
  Extract({Layer{in / "layer.tar.gz", gzip, "fuzz-gzip"}}, "");

  // Two layers, split at a 512-byte block boundary chosen by the first byte.
  if (size > 1) {
    size_t split = std::min<size_t>(size - 1, (data[0] % 16) * 512 + 1);
    WriteFile(in / "lower.tar", data + 1, split - 1);
    WriteFile(in / "upper.tar", data + split, size - split);
    Extract(
        {Layer{in / "lower.tar", tar, "fuzz-lower"}, Layer{in / "upper.tar", tar, "fuzz-upper"}},
        "");
  }
  return 0;
}
