// PpmToPng and PngSize: QEMU's screendump PPM encoded as PNG, checked by decoding the IDAT with
// zlib; every malformed PPM is refused with kInvalid.
#include <zlib.h>

#include <string>

#include "tests/support/catch.h"
#include "vmm/vmm.h"

namespace edgevirt::vmm {
namespace {

uint32_t U32(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 |
         uint32_t(uint8_t(s[at + 2])) << 8 | uint32_t(uint8_t(s[at + 3]));
}

// The decompressed IDAT of a PNG with chunk CRCs checked.
std::string Raster(const std::string& png) {
  std::string idat;
  size_t p = 8;
  while (p + 12 <= png.size()) {
    uint32_t n = U32(png, p);
    std::string type = png.substr(p + 4, 4);
    uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(png.data() + p + 4), uInt(4 + n));
    REQUIRE(crc == U32(png, p + 8 + n));
    if (type == "IDAT") idat += png.substr(p + 8, n);
    p += 12 + n;
  }
  REQUIRE(p == png.size());
  std::string raw(1 << 16, '\0');
  uLongf len = raw.size();
  REQUIRE(uncompress(reinterpret_cast<Bytef*>(raw.data()), &len,
                     reinterpret_cast<const Bytef*>(idat.data()), uLong(idat.size())) == Z_OK);
  raw.resize(len);
  return raw;
}

TEST_CASE("PpmToPng encodes a P6 with comments; PngSize reads it back") {
  const std::string ppm = std::string("P6\n# made by QEMU\n2 2\n255\n") +
                          "\x01\x02\x03\x04\x05\x06" + std::string("\xff\x00\x80\x10\x20\x30", 6);
  auto png = PpmToPng(ppm);
  REQUIRE(png);
  CHECK(png->substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
  auto size = PngSize(*png);
  REQUIRE(size);
  CHECK(size->width == 2);
  CHECK(size->height == 2);
  CHECK(Raster(*png) == std::string("\0\x01\x02\x03\x04\x05\x06", 7) +
                            std::string("\0\xff\x00\x80\x10\x20\x30", 7));
}

TEST_CASE("PpmToPng scales samples of a small maxval to 0..255") {
  auto png = PpmToPng(std::string("P6 1 1 15\n") + std::string("\x00\x0f\x05", 3));
  REQUIRE(png);
  CHECK(Raster(*png) == std::string("\0\x00\xff\x55", 4));
}

TEST_CASE("PpmToPng refuses what is not a complete binary PPM") {
  for (const std::string& bad :
       {std::string("P3 1 1 255\n0 0 0\n"), std::string("P6 1 1 255\n\x01\x02"),
        std::string("P6 0 1 255\n"), std::string("P6 1 1 256\n\0\0\0\0\0\0", 17),
        std::string("P6 1 1"), std::string("P6 20000 1 255\n"), std::string("")}) {
    INFO(bad);
    auto r = PpmToPng(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kInvalid);
  }
  CHECK_FALSE(PngSize("GIF89a......................"));
}

}  // namespace
}  // namespace edgevirt::vmm
